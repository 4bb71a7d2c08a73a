"""The charge on PostgreSQL: one transaction, two round trips.

A charge sits in front of every generation, so its cost is paid on every job. This path talks
to psycopg directly, on a connection in autocommit mode, and writes its own transaction as two
multi-statement queries:

1. ``BEGIN``; lock the account row (``FOR UPDATE``) and read the database's clock; look up the
   key's first outcome. The lookup runs after the lock, so a repeat by the same user sees what
   the first one committed.
2. Whatever the rules decided: the account's new counters, any lazy-reset records, the
   charge's ledger row and its remembered outcome, then ``COMMIT`` (or just ``COMMIT`` for a
   replay).

The rules are the same Python functions the ORM path uses (``billing.rules``); only the
reading and writing differ. The database still enforces the bounds: CHECK constraints on the
counters, the unique idempotency key on the ledger and on the outcome. A unique violation
means a concurrent transaction committed this key first: the transaction is rolled back and
KeyRaced raised, and the caller replays.
"""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import datetime
from typing import Any

import psycopg
from psycopg import ClientCursor
from psycopg.pq import TransactionStatus

from billing import results, rules
from billing.charges import effective_cost, paid_outcome, unpaid_outcome
from billing.dml import KeyRaced
from billing.idempotency import conflict
from billing.resets import Restored, refresh
from billing.rules import AccountRow
from billing.settings import Settings
from billing.validation import ChargeArgs
from models import Operation

COLUMNS = [f.name for f in fields(AccountRow)]
WRITABLE = [c for c in COLUMNS if c not in ("id", "role", "subscription_end")]

READ = (
    "BEGIN; "
    f"SELECT {', '.join(COLUMNS)}, now() FROM users WHERE id = %(user_id)s FOR UPDATE; "
    "SELECT user_id, operation, cost, response, ledger_id FROM billing_requests"
    " WHERE idempotency_key = %(key)s"
)
UPDATE = (
    f"UPDATE users SET {', '.join(f'{c} = %({c})s' for c in WRITABLE)} WHERE id = %(user_id)s; "
)
LEDGER_COLUMNS = (
    "user_id, entry_type, source, operation, amount, idempotency_key, balance_credits_after,"
    " subscription_ops_used_after, freemium_actions_used_after, meta, created_at"
)
RESET_ROW = (
    "INSERT INTO allowance_resets (user_id, source, period_start, restored, recorded_at)"
    " VALUES (%(user_id)s, %({p}source)s::ledger_source_enum, %({p}start)s, %({p}restored)s,"
    " %(at)s) ON CONFLICT DO NOTHING; "
)
CHARGE_ROW = (
    f"WITH entry AS (INSERT INTO credits_ledger ({LEDGER_COLUMNS}) VALUES (%(user_id)s,"
    " 'charge', %(source)s::ledger_source_enum, %(operation)s::ledger_operation_enum,"
    " %(amount)s, %(key)s, %(balance)s, %(ops_used)s, %(actions_used)s, %(meta)s, %(at)s)"
    " RETURNING id) "
    "INSERT INTO billing_requests (idempotency_key, user_id, operation, cost, response, ledger_id)"
    " SELECT %(key)s, %(user_id)s, %(operation)s, %(cost)s,"
    " %(response)s::jsonb || jsonb_build_object('ledger_id', entry.id), entry.id FROM entry"
    " RETURNING ledger_id; "
)
REMEMBER = (
    "INSERT INTO billing_requests (idempotency_key, user_id, operation, cost, response)"
    " VALUES (%(key)s, %(user_id)s, %(operation)s, %(cost)s, %(response)s); "
)


def charge(
    conn: psycopg.Connection, operation: Operation, args: ChargeArgs, settings: Settings
) -> results.Result:
    """One charge on an autocommit connection; see the module's docstring."""
    if not settings.v4_enabled:
        return results.billing_disabled()
    cost = effective_cost(operation, args, settings)
    key = args.idempotency_key
    params: dict[str, Any] = {
        "user_id": args.user_id,
        "key": key,
        "operation": str(operation),
        "cost": cost,
    }
    cur = ClientCursor(conn)
    try:
        cur.execute(READ, params)
        cur.nextset()
        row = cur.fetchone()
        cur.nextset()
        stored = cur.fetchone()
        if row is None:
            if stored is not None:
                cur.execute("COMMIT")
                return _replay(stored, key, args.user_id, str(operation), cost)
            outcome = {**results.user_not_found(args.user_id), "idempotency_key": key}
            outcome["replayed"] = False
            _write(cur, REMEMBER, {**params, "response": json.dumps(outcome)})
            return outcome

        account = AccountRow(*row[:-1])
        before = {c: getattr(account, c) for c in WRITABLE}
        now = rules.effective_now(account, row[-1])
        sql, params = _resets_sql(refresh(account, now, settings), now, params)
        # A replay draws nothing but still stores a due lazy reset, as every read does.
        draw = None
        if stored is None:
            draw = rules.choose_draw(account, operation, cost, now, settings)
            if draw is not None:
                rules.take(account, draw)
        if any(getattr(account, c) != before[c] for c in WRITABLE):
            sql = UPDATE + sql
            params.update({c: getattr(account, c) for c in WRITABLE})
        if stored is not None:
            _write(cur, sql, params)  # just COMMIT when nothing changed
            return _replay(stored, key, args.user_id, str(operation), cost)
        state = rules.account_state(account, now, settings)

        if draw is None:
            outcome = unpaid_outcome(operation, cost, key, state)
            _write(cur, sql + REMEMBER, {**params, "response": json.dumps(outcome)})
            return outcome

        outcome = paid_outcome(draw, key, state)
        params.update(
            source=str(draw.source),
            amount=draw.amount,
            balance=account.balance_credits,
            ops_used=account.subscription_ops_used,
            actions_used=account.freemium_actions_used,
            meta=json.dumps(args.meta) if args.meta is not None else None,
            at=now,
            response=json.dumps(outcome),
        )
        ledger_id = _write(cur, sql + CHARGE_ROW, params)
        return {**outcome, "ledger_id": ledger_id}
    finally:
        if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            conn.rollback()


def _write(cur: ClientCursor, sql: str, params: dict[str, Any]) -> Any:
    """Run the writes and COMMIT in one round trip; the last result set's first value."""
    try:
        cur.execute(sql + "COMMIT", params)
    except psycopg.errors.UniqueViolation:
        raise KeyRaced(params["key"]) from None
    value = None
    while True:
        if cur.description is not None:
            first = cur.fetchone()
            value = first[0] if first else None
        if not cur.nextset():
            return value


def _resets_sql(
    restored: list[Restored], now: datetime, params: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """Records of the lazy resets that gave something back, as the ORM path writes them."""
    sql = ""
    params = {**params, "at": now}
    for reset in restored:
        prefix = f"reset_{reset.source}_"
        sql += RESET_ROW.format(p=prefix)
        params[f"{prefix}source"] = str(reset.source)
        params[f"{prefix}start"] = reset.period_start
        params[f"{prefix}restored"] = reset.amount
    return sql, params


def _replay(stored: tuple, key: str, user_id: int, operation: str, cost: int) -> results.Result:
    stored_user, stored_operation, stored_cost, response, _ledger_id = stored
    if (stored_user, stored_operation, stored_cost) != (user_id, operation, cost):
        return conflict(key, stored_user, stored_operation, stored_cost)
    return {**response, "replayed": True}
