"""The ledger's running figures: each row's ``*_after`` columns, recomputed from the movements.

In id order (the order the account's row lock let the movements in), a row's
``balance_credits_after``, ``subscription_ops_used_after`` and ``freemium_actions_used_after``
are the account's figures right after it:

- credits: every movement before it and its own, from an empty account (the sum the audit
  compares the balance with);
- an allowance counter: the same, since the allowance's period began. A reset moves no money
  and writes no ledger row (it is recorded in ``allowance_resets``; reset rows written before
  that journal existed move nothing and are journalled too): every row dated at or after a
  reset's ``period_start`` counts from zero again, as every movement is dated inside the period
  it counted in (``rules.effective_now``). A new subscription's own row (``meta.change`` is
  ``new``) starts its operations counter at zero the same way.

Nothing else changes these figures without a row (expiries write ``expire`` rows; tier
changes only touch the limit), so a row whose figures differ from these was written wrong, and
the newest row of an account whose figures match its ledger's sums (the audit's other check)
agrees with the account. The audit reports such rows (``drift``); ``billing
repair-ledger-chain`` rewrites them (``billing.reads.repair``). Set-based: one pass of window
functions over the ledger, never a loop over its rows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, TextClause, bindparam, text
from sqlalchemy.orm import Session

# What a row moves, in its source's unit: the audit's sums and the chain are both made of it.
CREDITS_MOVED = """CASE WHEN l.source = 'credits' THEN
        CASE WHEN l.entry_type IN ('grant', 'refund', 'release', 'expire') THEN l.amount
             WHEN l.entry_type IN ('charge', 'hold', 'expiry', 'void') THEN -l.amount
             ELSE 0 END
    ELSE 0 END"""
ALLOWANCE_MOVED = """CASE WHEN l.source = '{source}' THEN
        CASE WHEN l.entry_type IN ('charge', 'hold') THEN l.amount
             WHEN l.entry_type IN ('refund', 'release', 'expire') THEN -l.amount ELSE 0 END
    ELSE 0 END"""
OPS_MOVED = ALLOWANCE_MOVED.format(source="subscription")
ACTIONS_MOVED = ALLOWANCE_MOVED.format(source="freemium")

# (the ledger column, what the chain says it should be)
COLUMNS = (
    ("balance_credits_after", "expected_balance"),
    ("subscription_ops_used_after", "expected_ops"),
    ("freemium_actions_used_after", "expected_actions"),
)
DIFFERS = " OR ".join(f"c.{stored} <> c.{expected}" for stored, expected in COLUMNS)

# Each row's periods are the number of resets of each allowance dated at or before it, counted
# over the account's rows and resets in time order (a reset before a row of the same instant);
# the sums then run in id order, from zero again in each period.
_CHAIN = """
WITH entries AS (
    SELECT l.user_id, l.id, l.created_at,
           l.balance_credits_after, l.subscription_ops_used_after, l.freemium_actions_used_after,
           {credits} AS credits, {ops} AS ops, {actions} AS actions,
           CASE WHEN l.entry_type = 'subscription' AND {change} = 'new' THEN 1 ELSE 0 END
               AS opens
    FROM credits_ledger AS l
    {ledger_filter}
), timeline AS (
    SELECT e.*, 0 AS ops_reset, 0 AS actions_reset FROM entries AS e
    UNION ALL
    SELECT r.user_id, NULL, r.period_start, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           CASE WHEN r.source = 'subscription' THEN 1 ELSE 0 END,
           CASE WHEN r.source = 'freemium' THEN 1 ELSE 0 END
    FROM allowance_resets AS r
    {reset_filter}
), periods AS (
    SELECT t.*,
           sum(t.ops_reset) OVER w AS ops_period,
           sum(t.actions_reset) OVER w AS actions_period
    FROM timeline AS t
    WINDOW w AS (PARTITION BY t.user_id ORDER BY t.created_at, t.id IS NOT NULL)
), running AS (
    SELECT p.*,
           sum(p.credits) OVER (PARTITION BY p.user_id ORDER BY p.id) AS expected_balance,
           sum(p.opens) OVER (PARTITION BY p.user_id ORDER BY p.id) AS subscriptions
    FROM periods AS p
    WHERE p.id IS NOT NULL
), chain AS (
    SELECT r.*,
           sum(r.ops) OVER (PARTITION BY r.user_id, r.ops_period, r.subscriptions ORDER BY r.id)
               AS expected_ops,
           sum(r.actions) OVER (PARTITION BY r.user_id, r.actions_period ORDER BY r.id)
               AS expected_actions
    FROM running AS r
)
"""

_DRIFT = f"""
SELECT c.user_id, c.id,
       {", ".join(f"c.{stored}, c.{expected}" for stored, expected in COLUMNS)},
       sum({" + ".join(f"CASE WHEN c.{s} <> c.{e} THEN 1 ELSE 0 END" for s, e in COLUMNS)})
           OVER () AS total
FROM chain AS c
WHERE {DIFFERS}
ORDER BY c.user_id, c.id
LIMIT :limit
"""

_ACCOUNTS = f"SELECT DISTINCT c.user_id FROM chain AS c WHERE {DIFFERS} ORDER BY c.user_id"

_REWRITE = f"""
UPDATE credits_ledger
SET {", ".join(f"{stored} = c.{expected}" for stored, expected in COLUMNS)}
FROM chain AS c
WHERE credits_ledger.id = c.id AND ({DIFFERS})
"""


def _statement(db: Connection | Session, tail: str, user_ids: list[int] | None) -> TextClause:
    """The chain, over the accounts ``user_ids`` (None: all of them), then ``tail``."""
    dialect = db.dialect if isinstance(db, Connection) else db.get_bind().dialect
    postgres = dialect.name == "postgresql"
    chain = _CHAIN.format(
        credits=CREDITS_MOVED,
        ops=OPS_MOVED,
        actions=ACTIONS_MOVED,
        change="l.meta ->> 'change'" if postgres else "json_extract(l.meta, '$.change')",
        ledger_filter="" if user_ids is None else "WHERE l.user_id IN :ids",
        reset_filter="" if user_ids is None else "WHERE r.user_id IN :ids",
    )
    statement = text(chain + tail)
    if user_ids is not None:
        statement = statement.bindparams(bindparam("ids", value=user_ids, expanding=True))
    return statement


def drift(
    db: Connection | Session, user_ids: list[int] | None, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """How many figures of ledger rows differ from the chain, and the first ``limit`` of them
    (account then row order) as the audit reports a mismatch, with the row's ``ledger_id``."""
    found: list[dict[str, Any]] = []
    total = 0
    for row in db.execute(_statement(db, _DRIFT, user_ids), {"limit": max(limit, 1)}):
        total = int(row.total)
        for stored, expected in COLUMNS:
            if getattr(row, stored) != getattr(row, expected) and len(found) < limit:
                found.append(
                    {
                        "user_id": row.user_id,
                        "field": stored,
                        "ledger_id": row.id,
                        "stored": getattr(row, stored),
                        "ledger": int(getattr(row, expected)),
                    }
                )
    return total, found


def drifted_accounts(db: Connection | Session, user_ids: list[int] | None) -> list[int]:
    """The accounts with at least one ledger row off the chain, in id order."""
    return list(db.execute(_statement(db, _ACCOUNTS, user_ids)).scalars())


def rewrite(db: Connection | Session, user_ids: list[int]) -> int:
    """Set every figure of the accounts' ledger rows to the chain's; the rows rewritten. The
    caller holds the accounts' row locks, so no movement adds a row meanwhile."""
    return db.execute(_statement(db, _REWRITE, user_ids)).rowcount
