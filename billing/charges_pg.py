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

Each statement is prepared once per connection (``prepare``) and run by ``EXECUTE``, so
PostgreSQL does not parse and plan the same statements again for every charge.

The rules are the same Python functions the ORM path uses (``billing.rules``); only the
reading and writing differ. The database still enforces the bounds: CHECK constraints on the
counters, the unique idempotency key on the ledger and on the outcome. A unique violation
means a concurrent transaction committed this key first: the transaction is rolled back and
KeyRaced raised, and the caller replays.
"""

from __future__ import annotations

import json
import re
import weakref
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
LEDGER_COLUMNS = (
    "user_id, entry_type, source, operation, amount, idempotency_key, balance_credits_after,"
    " subscription_ops_used_after, freemium_actions_used_after, meta, created_at"
)


class Prepared:
    """A statement PostgreSQL parses and plans once per connection, then runs by ``EXECUTE``
    inside the charge's multi-statement queries. Written with named placeholders as any
    query is; ``call()`` gives the ``EXECUTE`` with the same placeholders."""

    def __init__(self, name: str, sql: str) -> None:
        self.name = name
        self.params = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))
        body = re.sub(r"%\((\w+)\)s", lambda m: f"${self.params.index(m[1]) + 1}", sql)
        self.prepare = f"PREPARE {name} AS {body}"

    def call(self, prefix: str = "", prefixed: tuple[str, ...] = ()) -> str:
        """The ``EXECUTE``; parameters named in ``prefixed`` are read as ``prefix + name``."""
        names = (f"{prefix}{n}" if n in prefixed else n for n in self.params)
        return f"EXECUTE {self.name}({', '.join(f'%({n})s' for n in names)}); "


LOCK_ACCOUNT = Prepared(
    "billing_lock_account",
    f"SELECT {', '.join(COLUMNS)}, now() FROM users WHERE id = %(user_id)s FOR UPDATE",
)
FIND_OUTCOME = Prepared(
    "billing_find_outcome",
    "SELECT user_id, operation, cost, response, ledger_id FROM billing_requests"
    " WHERE idempotency_key = %(key)s",
)
UPDATE_ACCOUNT = Prepared(
    "billing_update_account",
    f"UPDATE users SET {', '.join(f'{c} = %({c})s' for c in WRITABLE)} WHERE id = %(user_id)s",
)
RECORD_RESET = Prepared(
    "billing_record_reset",
    "INSERT INTO allowance_resets (user_id, source, period_start, restored, recorded_at)"
    " VALUES (%(user_id)s, %(source)s::ledger_source_enum, %(start)s, %(restored)s, %(at)s)"
    " ON CONFLICT DO NOTHING",
)
RECORD_CHARGE = Prepared(
    "billing_record_charge",
    f"WITH entry AS (INSERT INTO credits_ledger ({LEDGER_COLUMNS}) VALUES (%(user_id)s,"
    " 'charge', %(source)s::ledger_source_enum, %(operation)s::ledger_operation_enum,"
    " %(amount)s, %(key)s, %(balance)s, %(ops_used)s, %(actions_used)s, %(meta)s::jsonb,"
    " %(at)s) RETURNING id) "
    "INSERT INTO billing_requests (idempotency_key, user_id, operation, cost, response, ledger_id)"
    " SELECT %(key)s, %(user_id)s, %(operation)s::text, %(cost)s::integer,"
    " %(response)s::jsonb || jsonb_build_object('ledger_id', entry.id), entry.id FROM entry"
    " RETURNING ledger_id",
)
REMEMBER = Prepared(
    "billing_remember",
    "INSERT INTO billing_requests (idempotency_key, user_id, operation, cost, response)"
    " VALUES (%(key)s, %(user_id)s, %(operation)s, %(cost)s, %(response)s)",
)
STATEMENTS = (LOCK_ACCOUNT, FIND_OUTCOME, UPDATE_ACCOUNT, RECORD_RESET, RECORD_CHARGE, REMEMBER)
READ = ("BEGIN; " + LOCK_ACCOUNT.call() + FIND_OUTCOME.call()).removesuffix("; ")

# Connections (of this process) on which the statements exist. Parsing and planning them on
# every charge was over a third of PostgreSQL's CPU per charge (0.50 ms, 0.31 ms prepared).
_prepared: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()


def prepare(conn: psycopg.Connection) -> None:
    """Prepare the charge's statements on this connection, once. PREPARE is not transactional
    and a name cannot be prepared twice, so what an earlier, failed attempt left is asked
    for first. Two round trips, once in a connection's life."""
    if conn in _prepared:
        return
    existing = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM pg_prepared_statements WHERE name = ANY(%s)",
            ([s.name for s in STATEMENTS],),
        )
    }
    missing = [s.prepare for s in STATEMENTS if s.name not in existing]
    if missing:
        conn.execute("; ".join(missing))
    _prepared.add(conn)


def charge(
    conn: psycopg.Connection, operation: Operation, args: ChargeArgs, settings: Settings
) -> results.Result:
    """One charge on an autocommit connection; see the module's docstring."""
    prepare(conn)
    try:
        return _charge(conn, operation, args, settings)
    except psycopg.errors.InvalidSqlStatementName:
        # Our statements are gone (a DISCARD ALL or DEALLOCATE ALL on this session); the
        # failed read wrote nothing and was rolled back. Prepare them again, charge again.
        _prepared.discard(conn)
        prepare(conn)
        return _charge(conn, operation, args, settings)


def _charge(
    conn: psycopg.Connection, operation: Operation, args: ChargeArgs, settings: Settings
) -> results.Result:
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
            _write(cur, REMEMBER.call(), {**params, "response": json.dumps(outcome)})
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
            sql = UPDATE_ACCOUNT.call() + sql
            params.update({c: getattr(account, c) for c in WRITABLE})
        if stored is not None:
            _write(cur, sql, params)  # just COMMIT when nothing changed
            return _replay(stored, key, args.user_id, str(operation), cost)
        state = rules.account_state(account, now, settings)

        if draw is None:
            outcome = unpaid_outcome(operation, cost, key, state)
            _write(cur, sql + REMEMBER.call(), {**params, "response": json.dumps(outcome)})
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
        ledger_id = _write(cur, sql + RECORD_CHARGE.call(), params)
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
        # Up to two resets in one query: each one's own parameters carry its source's prefix.
        prefix = f"reset_{reset.source}_"
        own = {"source": str(reset.source), "start": reset.period_start, "restored": reset.amount}
        sql += RECORD_RESET.call(prefix, tuple(own))
        params.update({prefix + name: value for name, value in own.items()})
    return sql, params


def _replay(stored: tuple, key: str, user_id: int, operation: str, cost: int) -> results.Result:
    stored_user, stored_operation, stored_cost, response, _ledger_id = stored
    if (stored_user, stored_operation, stored_cost) != (user_id, operation, cost):
        return conflict(key, stored_user, stored_operation, stored_cost)
    return {**response, "replayed": True}
