"""The ledger explains every account: balances and counters are the sum of their movements.

- credits: ``balance_credits`` = grants + refunds + releases + hold expiries - charges - holds
  - grant expiries - voids, over all time (a capture moves nothing: its hold took the amount,
  and a partial capture's rest comes back as a release);
- each allowance: ``*_used`` = its charges + holds - refunds - releases - expiries since the
  current period began (``*_reset_at``). A take belongs to the period it was made in; a reset
  moves the period start past every take of the period before, and a refund, release or
  expiry returns an allowance only while its take's period is current, so both sides of the
  sum move together.

It also checks every ledger row's running figures (``billing.reads.chain``): in id order, each row's
``*_after`` columns are the account's figures right after it, so a row written with figures
of another moment is named by its ``ledger_id`` (``billing repair-ledger-chain`` rewrites it).
With the sums above, this also makes the newest row agree with the account.

And it checks every hold against its ledger rows: an open hold has no settlement, a closed
one has exactly the settlement its status names; every grant's remaining against the parts
its ledger rows drew and gave back (``credit_parts``); and that no account's active grants
hold more than its balance (its general balance is never negative).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.orm import Session

from billing.core import results
from billing.core.settlement import SETTLE_PREFIX
from billing.core.validation import AuditArgs
from billing.reads import chain

MAX_REPORTED = 1000

_AUDIT_SQL = """
WITH movements AS (
    SELECT l.user_id,
           sum({credits}) AS credits,
           sum(CASE WHEN l.created_at >= u.subscription_ops_reset_at THEN {ops} ELSE 0 END)
               AS subscription_ops,
           sum(CASE WHEN l.created_at >= u.freemium_reset_at THEN {actions} ELSE 0 END)
               AS freemium_actions
    FROM credits_ledger AS l
    JOIN users AS u ON u.id = l.user_id
    {ledger_filter}
    GROUP BY l.user_id
)
SELECT u.id AS user_id,
       u.balance_credits, coalesce(m.credits, 0) AS expected_balance,
       u.subscription_ops_used, coalesce(m.subscription_ops, 0) AS expected_ops,
       u.freemium_actions_used, coalesce(m.freemium_actions, 0) AS expected_actions
FROM users AS u
LEFT JOIN movements AS m ON m.user_id = u.id
{user_filter}
ORDER BY u.id
"""

# Holds whose ledger rows disagree with them: the reserve missing or of another amount, an open
# hold with a settlement, a closed one without the settlement its status names (or a capture
# of another amount than the hold says it kept).
_HOLDS_SQL = """
SELECT h.user_id, h.idempotency_key, CAST(h.status AS TEXT) AS status,
       CAST(s.entry_type AS TEXT) AS settled_as
FROM billing_holds AS h
LEFT JOIN credits_ledger AS r
       ON r.idempotency_key = h.idempotency_key AND r.entry_type = 'hold'
LEFT JOIN credits_ledger AS s ON s.idempotency_key = :settle_prefix || h.idempotency_key
WHERE {hold_filter}
      (r.id IS NULL OR r.amount <> h.amount
       OR (CAST(h.status AS TEXT) = 'held' AND s.id IS NOT NULL)
       OR (CAST(h.status AS TEXT) <> 'held' AND (s.id IS NULL
           OR CAST(s.entry_type AS TEXT) <> CASE CAST(h.status AS TEXT)
                  WHEN 'captured' THEN 'capture' WHEN 'released' THEN 'release' ELSE 'expire' END
           OR (CAST(h.status AS TEXT) = 'captured' AND s.amount <> h.captured))))
ORDER BY h.user_id, h.idempotency_key
"""

# Each grant's remaining against its ledger: its grant row, less every part drawn from it
# (charges, holds), plus every part given back (refunds, releases, hold expiries), less what
# expired or was voided. A capture moves nothing: its hold drew the parts.
_PART_MOVED = """CASE WHEN l.entry_type IN ('grant', 'refund', 'release', 'expire') THEN {amount}
        WHEN l.entry_type IN ('charge', 'hold', 'expiry', 'void') THEN -{amount} ELSE 0 END"""
_PARTS = {
    "postgresql": (
        "CROSS JOIN LATERAL jsonb_array_elements(l.credit_parts) AS p(part)",
        "p.part->>'grant'",
        "CAST(p.part->>'amount' AS INTEGER)",
    ),
    "sqlite": (
        "CROSS JOIN json_each(l.credit_parts) AS p",
        "json_extract(p.value, '$.grant')",
        "CAST(json_extract(p.value, '$.amount') AS INTEGER)",
    ),
}
_GRANTS_SQL = """
WITH parts AS (
    SELECT {grant_of} AS grant_key, {moved} AS moved
    FROM credits_ledger AS l {each_part}
    WHERE l.credit_parts IS NOT NULL AND l.source = 'credits' {ledger_filter}
), drawn AS (
    SELECT grant_key, sum(moved) AS remaining FROM parts
    WHERE grant_key IS NOT NULL GROUP BY grant_key
)
SELECT g.user_id, g.idempotency_key, g.remaining, coalesce(d.remaining, 0) AS ledger
FROM credit_grants AS g LEFT JOIN drawn AS d ON d.grant_key = g.idempotency_key
WHERE g.remaining <> coalesce(d.remaining, 0) {grant_filter}
ORDER BY g.user_id, g.idempotency_key
"""
# An account's general balance (what no active grant accounts for) is never negative.
_GENERAL_SQL = """
SELECT u.id AS user_id, u.balance_credits, coalesce(sum(g.remaining), 0) AS in_grants
FROM users AS u JOIN credit_grants AS g ON g.user_id = u.id AND g.status = 'active'
{user_filter}
GROUP BY u.id, u.balance_credits
HAVING u.balance_credits < coalesce(sum(g.remaining), 0)
ORDER BY u.id
"""


def grant_mismatches(db: Connection | Session, user_id: int | None) -> list[dict[str, Any]]:
    """Every grant whose remaining its ledger does not explain, and every account whose
    grants hold more than its balance."""
    dialect = db.get_bind().dialect.name if isinstance(db, Session) else db.dialect.name
    each_part, grant_of, amount = _PARTS["postgresql" if dialect == "postgresql" else "sqlite"]
    params = {"uid": user_id}
    found = [
        {
            "user_id": row.user_id,
            "field": "grant",
            "grant_key": row.idempotency_key,
            "stored": row.remaining,
            "ledger": int(row.ledger),
        }
        for row in db.execute(
            text(
                _GRANTS_SQL.format(
                    grant_of=grant_of,
                    moved=_PART_MOVED.format(amount=amount),
                    each_part=each_part,
                    ledger_filter="" if user_id is None else "AND l.user_id = :uid",
                    grant_filter="" if user_id is None else "AND g.user_id = :uid",
                )
            ),
            params,
        )
    ]
    user_filter = "" if user_id is None else "WHERE u.id = :uid"
    found += [
        {
            "user_id": row.user_id,
            "field": "general_balance",
            "stored": row.balance_credits,
            "ledger": int(row.in_grants),
        }
        for row in db.execute(text(_GENERAL_SQL.format(user_filter=user_filter)), params)
    ]
    return found


CHECKS = (
    ("balance_credits", "expected_balance"),
    ("subscription_ops_used", "expected_ops"),
    ("freemium_actions_used", "expected_actions"),
)


def account_checks(
    db: Connection | Session, user_ids: list[int] | None
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Each account of ``user_ids`` (None: every account), in id order, with the mismatches
    between its figures and its ledger's sums (none: it is explained by its ledger)."""
    sql = _AUDIT_SQL.format(
        credits=chain.CREDITS_MOVED,
        ops=chain.OPS_MOVED,
        actions=chain.ACTIONS_MOVED,
        ledger_filter="" if user_ids is None else "WHERE l.user_id IN :ids",
        user_filter="" if user_ids is None else "WHERE u.id IN :ids",
    )
    statement = text(sql)
    if user_ids is not None:
        statement = statement.bindparams(bindparam("ids", value=user_ids, expanding=True))
    for row in db.execute(statement):
        yield (
            row.user_id,
            [
                {
                    "user_id": row.user_id,
                    "field": actual_col,
                    "stored": getattr(row, actual_col),
                    "ledger": int(getattr(row, expected_col)),
                }
                for actual_col, expected_col in CHECKS
                if getattr(row, actual_col) != getattr(row, expected_col)
            ],
        )


def audit(session: Session, args: AuditArgs) -> results.Result:
    """Check one account (``user_id``) or all of them; report every mismatch."""
    user_ids = None if args.user_id is None else [args.user_id]
    if session.get_bind().dialect.name == "postgresql":
        # A read of every account holds no lock: the worker's statement timeout, which bounds
        # lock holders, does not apply; the task's own time limit bounds it.
        session.execute(text("SET LOCAL statement_timeout = 0"))
    checked = 0
    mismatches: list[dict[str, Any]] = []
    total = 0
    for _user_id, found in account_checks(session, user_ids):
        checked += 1
        total += len(found)
        mismatches.extend(found[: MAX_REPORTED - len(mismatches)])
    if args.user_id is not None and checked == 0:
        return results.user_not_found(args.user_id)
    drifted, rows = chain.drift(session, user_ids, MAX_REPORTED - len(mismatches))
    total += drifted
    mismatches.extend(rows)
    grants = grant_mismatches(session, args.user_id)
    total += len(grants)
    mismatches.extend(grants[: max(MAX_REPORTED - len(mismatches), 0)])
    params: dict[str, Any] = {"uid": args.user_id, "settle_prefix": SETTLE_PREFIX}
    hold_filter = "h.user_id = :uid AND" if args.user_id is not None else ""
    for row in session.execute(text(_HOLDS_SQL.format(hold_filter=hold_filter)), params):
        total += 1
        if len(mismatches) < MAX_REPORTED:
            mismatches.append(
                {
                    "user_id": row.user_id,
                    "field": "hold",
                    "hold_key": row.idempotency_key,
                    "stored": row.status,
                    "ledger": row.settled_as,
                }
            )
    return results.success(
        clean=total == 0,
        accounts_checked=checked,
        mismatch_count=total,
        mismatches=mismatches,
    )
