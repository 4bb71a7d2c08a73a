"""The frame's store on PostgreSQL: one transaction, two round trips per movement.

A charge sits in front of every generation, so its cost is paid on every job. This store
talks to psycopg directly, on a connection in autocommit mode, and writes its transaction as
two multi-statement queries:

1. ``lock``: ``BEGIN``; lock the account row (``FOR UPDATE``) and read the database's clock;
   look up the key's first outcome and read the account's open holds. Both reads run after
   the lock, so a repeat by the same user sees what the first one committed, and every hold
   is seen as its last settlement left it (holds change only under their account's lock).
2. ``write``: whatever the frame decided: the account's new counters, any lazy-reset records,
   new and settled holds, the ledger rows and the remembered outcome, then ``COMMIT``.

Each statement is prepared once per connection (``prepare``) and run by ``EXECUTE``, so
PostgreSQL does not parse and plan the same statements again for every movement. The database
still enforces the bounds: CHECK constraints on the counters, the unique idempotency key on
the ledger and on the outcome. A unique violation means a concurrent transaction committed
this key first: the transaction is rolled back and KeyRaced raised.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import ClientCursor
from psycopg.pq import TransactionStatus

from billing.core import records
from billing.core.records import (
    ACCOUNT_COLUMNS,
    AccountRow,
    ChargeRow,
    Counters,
    Entry,
    GrantRow,
    HoldRow,
    Locked,
    OutboxRow,
    StoredOutcome,
    Writes,
    counters,
)
from billing.core.settlement import SETTLE_PREFIX
from billing.movements.store import KeyRaced
from models import GrantCategory, GrantStatus, HoldStatus, LedgerSource, Operation, UserRole

COLUMNS = list(ACCOUNT_COLUMNS)
WRITABLE = [c for c in COLUMNS if c not in ("id", "role")]
HOLD_COLUMNS = ", ".join(records.HOLD_COLUMNS)
GRANT_COLUMNS = ", ".join(records.GRANT_COLUMNS)
# The account's active grants, and the closed ones it still needs: those its holds (open, or
# the one a capture or release names) draw from, and ``grant_keys`` (a void's grant, a
# refund's parts' grants). Active ones through the partial index on the account; closed ones
# by key. The two parts are disjoint by status: UNION ALL, no de-duplication to pay for.
GRANTS_OF_ACCOUNT = (
    f"(SELECT json_agg(json_build_array({GRANT_COLUMNS})) FROM ("
    f"SELECT {GRANT_COLUMNS} FROM credit_grants"
    " WHERE user_id = %(user_id)s AND status = 'active'"
    f" UNION ALL SELECT {GRANT_COLUMNS} FROM credit_grants"
    " WHERE user_id = %(user_id)s AND status <> 'active' AND idempotency_key IN ("
    "SELECT unnest(%(grant_keys)s::text[])"
    " UNION ALL SELECT p.part->>'grant' FROM billing_holds AS h"
    " CROSS JOIN LATERAL jsonb_array_elements(h.credit_parts) AS p(part)"
    " WHERE h.user_id = %(user_id)s AND h.status = 'held' AND h.credit_parts IS NOT NULL"
    " UNION ALL SELECT p.part->>'grant' FROM billing_holds AS h"
    " CROSS JOIN LATERAL jsonb_array_elements(h.credit_parts) AS p(part)"
    " WHERE h.idempotency_key = %(hold_key)s AND h.user_id = %(user_id)s)) AS g)"
)


class Prepared:
    """A statement PostgreSQL parses and plans once per connection, then runs by ``EXECUTE``
    inside the multi-statement queries. Written with named placeholders as any query is;
    ``call()`` gives the ``EXECUTE`` with the same placeholders."""

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
# After the lock, in one statement: the key's first outcome, and the account's open holds
# (with the hold a capture or release names when it is closed) as one JSON array, NULL when
# there are none. One statement rather than two: every charge pays for it.
READ_AFTER_LOCK = Prepared(
    "billing_read_after_lock",
    "SELECT o.user_id, o.operation, o.cost, o.response, (SELECT json_agg(json_build_array("
    f"{HOLD_COLUMNS})) FROM (SELECT {HOLD_COLUMNS} FROM billing_holds"
    " WHERE user_id = %(user_id)s AND status = 'held'"
    f" UNION ALL SELECT {HOLD_COLUMNS} FROM billing_holds WHERE idempotency_key = %(hold_key)s"
    " AND user_id = %(user_id)s AND status <> 'held') AS h), "
    + GRANTS_OF_ACCOUNT
    + " FROM (SELECT) AS one LEFT JOIN billing_requests AS o"
    " ON o.idempotency_key = %(key)s::text",
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
LEDGER_ROW = (
    "INSERT INTO credits_ledger (user_id, entry_type, source, operation, amount,"
    " idempotency_key, balance_credits_after, subscription_ops_used_after,"
    " freemium_actions_used_after, meta, refund_of_id, hold_key, grant_key, credit_parts,"
    " created_at) VALUES (%(user_id)s,"
    " %(entry_type)s::ledger_entry_type_enum, %(source)s::ledger_source_enum,"
    " %(entry_operation)s::ledger_operation_enum, %(amount)s, %(entry_key)s, %(balance)s,"
    " %(ops_used)s, %(actions_used)s, %(meta)s::jsonb, %(refund_of_id)s::bigint,"
    " %(hold_key)s::text, %(grant_key)s::text, %(credit_parts)s::jsonb, %(at)s)"
)
ENTRY_PARAMS = (
    "entry_type",
    "source",
    "entry_operation",
    "amount",
    "entry_key",
    "balance",
    "ops_used",
    "actions_used",
    "meta",
    "refund_of_id",
    "hold_key",
    "grant_key",
    "credit_parts",
)
# A ledger row with no outcome of its own (an expiry, the rest of a capture).
RECORD_ENTRY = Prepared("billing_record_entry", LEDGER_ROW)
# The movement's ledger row and the key's outcome in one statement; the outcome gets its id.
RECORD_MOVEMENT = Prepared(
    "billing_record_movement",
    f"WITH entry AS ({LEDGER_ROW} RETURNING id) "
    "INSERT INTO billing_requests (idempotency_key, user_id, operation, cost, response, ledger_id)"
    " SELECT %(key)s, %(user_id)s, %(operation)s::text, %(cost)s::integer,"
    " %(response)s::jsonb || jsonb_build_object('ledger_id', entry.id), entry.id FROM entry"
    " RETURNING ledger_id",
)
REMEMBER = Prepared(
    "billing_remember",
    "INSERT INTO billing_requests (idempotency_key, user_id, operation, cost, response)"
    " VALUES (%(key)s, %(user_id)s, %(operation)s::text, %(cost)s::integer, %(response)s::jsonb)",
)
INSERT_HOLD = Prepared(
    "billing_insert_hold",
    "INSERT INTO billing_holds (idempotency_key, user_id, operation, source, amount,"
    " created_at, expires_at, credit_parts) VALUES (%(hold_key)s, %(user_id)s,"
    " %(hold_operation)s::ledger_operation_enum, %(hold_source)s::ledger_source_enum,"
    " %(hold_amount)s, %(at)s, %(expires_at)s, %(hold_parts)s::jsonb)",
)
INSERT_GRANT = Prepared(
    "billing_insert_grant",
    "INSERT INTO credit_grants (user_id, idempotency_key, amount, remaining, expires_at,"
    " priority, category, created_at) VALUES (%(user_id)s, %(grant)s, %(grant_amount)s,"
    " %(remaining)s, %(grant_expires_at)s::timestamptz, %(priority)s::smallint,"
    " %(category)s::credit_category_enum, %(at)s)",
)
UPDATE_GRANT = Prepared(
    "billing_update_grant",
    "UPDATE credit_grants SET remaining = %(remaining)s, status = %(status)s::grant_status_enum,"
    " closed_at = %(closed_at)s::timestamptz,"
    " expiring_notified_at = %(notified_at)s::timestamptz"
    " WHERE idempotency_key = %(grant)s AND user_id = %(user_id)s",
)
# Only an open hold settles; the settlement's ledger row, keyed per hold, makes it once.
SETTLE_HOLD = Prepared(
    "billing_settle_hold",
    "UPDATE billing_holds SET status = %(status)s::hold_status_enum, settled_at = %(at)s,"
    " captured = %(captured)s::integer WHERE idempotency_key = %(hold_key)s AND status = 'held'",
)
# An event whose id is recorded already is the same crossing: nothing more to record.
RECORD_EVENT = Prepared(
    "billing_record_event",
    "INSERT INTO billing_events (event_id, type, user_id, occurred_at, subject_at, data,"
    " kept_until) VALUES (%(event_id)s::uuid, %(event_type)s::billing_event_type_enum,"
    " %(user_id)s, %(at)s, %(subject_at)s::timestamptz, %(data)s::jsonb,"
    " %(kept_until)s::timestamptz) ON CONFLICT (event_id) DO NOTHING",
)
EVENT_PARAMS = ("event_id", "event_type", "subject_at", "data", "kept_until")
STATEMENTS = (
    LOCK_ACCOUNT,
    READ_AFTER_LOCK,
    UPDATE_ACCOUNT,
    RECORD_RESET,
    RECORD_ENTRY,
    RECORD_MOVEMENT,
    REMEMBER,
    INSERT_HOLD,
    SETTLE_HOLD,
    INSERT_GRANT,
    UPDATE_GRANT,
    RECORD_EVENT,
)
READ_LOCKED = ("BEGIN; " + LOCK_ACCOUNT.call() + READ_AFTER_LOCK.call()).removesuffix("; ")
# A read without the lock (``peek``): the clock, the account and its open holds (one JSON
# array, NULL when there are none) in one statement, so in one snapshot. As two statements
# under READ COMMITTED, a reserve or release committed between them showed its credits twice
# or not at all. The clock comes first, so an unknown account costs no second round trip.
PEEK = (
    f"SELECT now(), {', '.join(f'u.{c}' for c in COLUMNS)}, (SELECT json_agg(json_build_array("
    f"{HOLD_COLUMNS})) FROM billing_holds AS h WHERE h.user_id = u.id AND h.status = 'held'),"
    f" (SELECT json_agg(json_build_array({GRANT_COLUMNS})) FROM credit_grants AS g"
    " WHERE g.user_id = u.id AND g.status = 'active')"
    " FROM (SELECT) AS one LEFT JOIN users AS u ON u.id = %(user_id)s"
)

# Connections (of this process) on which the statements exist. Parsing and planning them on
# every charge was over a third of PostgreSQL's CPU per charge (0.50 ms, 0.31 ms prepared).
_prepared: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()


def prepare(conn: psycopg.Connection) -> None:
    """Prepare the statements on this connection, once. PREPARE is not transactional and a
    name cannot be prepared twice, so what an earlier, failed attempt left is asked for
    first. Two round trips, once in a connection's life."""
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


class PgStore:
    """The frame's store on an autocommit psycopg connection."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._cur = ClientCursor(conn)
        self.event_accounts: set[int] = set()

    def lock(
        self,
        user_id: int,
        key: str | None,
        hold_key: str | None = None,
        grant_keys: Collection[str] = (),
    ) -> Locked:
        prepare(self.conn)
        try:
            return self._lock(user_id, key, hold_key, list(grant_keys))
        except psycopg.errors.InvalidSqlStatementName:
            # Our statements are gone (a DISCARD ALL or DEALLOCATE ALL on this session); the
            # failed read wrote nothing. Prepare them again and read again.
            self.rollback()
            _prepared.discard(self.conn)
            prepare(self.conn)
            return self._lock(user_id, key, hold_key, list(grant_keys))

    def _lock(
        self, user_id: int, key: str | None, hold_key: str | None, grant_keys: list[str]
    ) -> Locked:
        cur = self._cur
        params = {"user_id": user_id, "key": key, "hold_key": hold_key, "grant_keys": grant_keys}
        cur.execute(READ_LOCKED, params)
        cur.nextset()
        row = cur.fetchone()
        cur.nextset()
        *found, holds, grants = cur.fetchone()  # type: ignore[misc]
        stored = StoredOutcome(*found) if found[0] is not None else None
        if row is None:
            now = self.conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            return Locked(None, now, stored)
        account = AccountRow(
            *row[:-1],
            holds=[_hold(h) for h in holds or ()],
            grants=[_grant(g) for g in grants or ()],
        )
        return Locked(account, row[-1], stored)

    def write(self, writes: Writes) -> int | None:
        account, outcome, entry = writes.account, writes.outcome, writes.entry
        sql = ""
        params: dict[str, Any] = {"user_id": writes.user_id, "key": writes.key, "at": writes.at}
        if account is not None and writes.changed:
            sql += UPDATE_ACCOUNT.call()
            params.update((c, getattr(account, c)) for c in COLUMNS)
        for reset in writes.resets:
            # Up to two resets in one query: each one's own parameters carry its prefix.
            prefix = f"reset_{reset.source}_"
            own = {"source": str(reset.source), "start": reset.period_start}
            own["restored"] = reset.amount
            sql += RECORD_RESET.call(prefix, tuple(own))
            params.update({prefix + name: value for name, value in own.items()})
        for number, change in enumerate(writes.holds):
            prefix, hold = f"h{number}_", change.hold
            if change.new:
                statement = INSERT_HOLD
                own = {
                    "hold_key": hold.key,
                    "hold_operation": str(hold.operation),
                    "hold_source": str(hold.source),
                    "hold_amount": hold.amount,
                    "expires_at": hold.expires_at,
                }
            else:
                statement = SETTLE_HOLD
                own = {"hold_key": hold.key, "status": str(hold.status), "captured": hold.captured}
            if change.new:
                own["hold_parts"] = _json(records.parts_json(hold.parts))
            sql += statement.call(prefix, tuple(own))
            params.update({prefix + name: value for name, value in own.items()})
        # Before the ledger rows that name them.
        for number, grant in enumerate(writes.grants):
            prefix = f"g{number}_"
            if grant.new:
                statement = INSERT_GRANT
                own = {
                    "grant": grant.key,
                    "grant_amount": grant.amount,
                    "remaining": grant.remaining,
                    "grant_expires_at": grant.expires_at,
                    "priority": grant.priority,
                    "category": str(grant.category),
                }
            else:
                statement = UPDATE_GRANT
                own = {
                    "grant": grant.key,
                    "remaining": grant.remaining,
                    "status": str(grant.status),
                    "closed_at": grant.closed_at,
                    "notified_at": grant.expiring_notified_at,
                }
            sql += statement.call(prefix, tuple(own))
            params.update({prefix + name: value for name, value in own.items()})
        defaults = counters(account) if account is not None else None
        for number, extra in enumerate(writes.entries):
            prefix = f"e{number}_"
            sql += RECORD_ENTRY.call(prefix, ENTRY_PARAMS)
            own = _entry_params(extra, writes.key, defaults)
            params.update({prefix + name: value for name, value in own.items()})
        # Before the outcome: a failure there undoes the events with the movement.
        for number, event in enumerate(writes.events):
            prefix = f"v{number}_"
            sql += RECORD_EVENT.call(prefix, EVENT_PARAMS)
            own = {
                "event_id": str(event.event_id),
                "event_type": str(event.type),
                "subject_at": event.subject_at,
                "data": json.dumps(event.data),
                "kept_until": event.kept_until,
            }
            params.update({prefix + name: value for name, value in own.items()})
        if outcome is not None:
            params.update(
                operation=outcome.operation,
                cost=outcome.cost,
                response=json.dumps(outcome.response),
            )
            if entry is None:
                sql += REMEMBER.call()
            else:
                assert account is not None, "a ledger row belongs to an account"
                sql += RECORD_MOVEMENT.call()
                params.update(_entry_params(entry, writes.key, defaults))
        for number, extra in enumerate(writes.trailing):
            prefix = f"t{number}_"
            sql += RECORD_ENTRY.call(prefix, ENTRY_PARAMS)
            own = _entry_params(extra, writes.key, defaults)
            params.update({prefix + name: value for name, value in own.items()})
        ledger_id = self._commit(sql, params)
        if writes.events:
            self.event_accounts.add(writes.user_id)
        return ledger_id

    def _commit(self, sql: str, params: dict[str, Any]) -> Any:
        """Run the writes and COMMIT in one round trip; the last result set's first value."""
        cur = self._cur
        try:
            cur.execute(sql + "COMMIT", params)
        except psycopg.errors.UniqueViolation:
            self.rollback()
            raise KeyRaced(params["key"]) from None
        value = None
        while True:
            if cur.description is not None:
                first = cur.fetchone()
                value = first[0] if first else None
            if not cur.nextset():
                return value

    def rollback(self) -> None:
        if self.conn.broken:
            return  # the server ended the session, and its transaction with it
        if self.conn.info.transaction_status in (
            TransactionStatus.INTRANS,
            TransactionStatus.INERROR,
        ):
            self.conn.rollback()

    def peek(self, user_id: int) -> tuple[AccountRow | None, datetime]:
        found = self._cur.execute(PEEK, {"user_id": user_id}).fetchone()
        assert found is not None, "the statement answers one row, with or without the account"
        now, *row, holds, grants = found
        if row[0] is None:
            return None, now
        account = AccountRow(
            *row,
            holds=[_hold(h) for h in holds or ()],
            grants=[_grant(g) for g in grants or ()],
        )
        return account, now

    def find_charge(self, key: str) -> ChargeRow | None:
        row = self.conn.execute(
            "SELECT id, user_id, source, amount, operation, created_at, credit_parts"
            " FROM credits_ledger WHERE idempotency_key = %(key)s AND entry_type = 'charge'"
            " UNION ALL SELECT c.id, c.user_id, c.source, c.amount, c.operation, h.created_at,"
            " c.credit_parts FROM credits_ledger AS c"
            " JOIN billing_holds AS h ON h.idempotency_key = c.hold_key"
            " WHERE c.idempotency_key = %(settle_key)s AND c.entry_type = 'capture'",
            {"key": key, "settle_key": SETTLE_PREFIX + key},
        ).fetchone()
        if row is None:
            return None
        charge_id, user_id, source, amount, operation, created_at, parts = row
        return ChargeRow(
            charge_id,
            user_id,
            LedgerSource(source),
            amount,
            Operation(operation) if operation is not None else None,
            created_at,
            records.parts_from_json(parts),
        )

    def find_hold(self, key: str) -> int | None:
        row = self.conn.execute(
            "SELECT user_id FROM billing_holds WHERE idempotency_key = %s", (key,)
        ).fetchone()
        return row[0] if row is not None else None

    def find_grant(self, key: str) -> int | None:
        row = self.conn.execute(
            "SELECT user_id FROM credit_grants WHERE idempotency_key = %s", (key,)
        ).fetchone()
        return row[0] if row is not None else None

    def open_account(self, user_id: int, role: UserRole) -> bool:
        # One statement on the autocommit connection: atomic, and two opens of one account
        # meet at its primary key.
        row = self.conn.execute(
            "INSERT INTO users (id, role) VALUES (%s, %s::user_role_enum)"
            " ON CONFLICT (id) DO NOTHING RETURNING id",
            (user_id, str(role)),
        ).fetchone()
        return row is not None

    def lock_unpublished(self, user_ids: Collection[int] | None, limit: int) -> list[OutboxRow]:
        # BEGIN and the locking read in one round trip, as a movement's first one.
        which = "" if user_ids is None else " AND user_id = ANY(%(users)s)"
        cur = self._cur
        cur.execute(
            "BEGIN; SELECT id, event_id, type, user_id, occurred_at, data FROM billing_events"
            f" WHERE published_at IS NULL{which} ORDER BY user_id, id LIMIT %(limit)s"
            " FOR UPDATE",
            {"users": list(user_ids or ()), "limit": limit},
        )
        cur.nextset()
        return [OutboxRow(*row) for row in cur.fetchall()]

    def mark_published(self, ids: list[int]) -> None:
        self._commit(
            "UPDATE billing_events SET published_at = clock_timestamp() WHERE id = ANY(%(ids)s); ",
            {"ids": ids, "key": None},
        )


def _hold(row: Sequence[Any]) -> HoldRow:
    """A hold as ``HOLD_COLUMNS`` reads it, as a row or as a JSON array (times as text)."""
    key, operation, source, amount, created_at, expires_at, status, captured, parts = row
    return HoldRow(
        key,
        Operation(operation),
        LedgerSource(source),
        amount,
        _time(created_at),
        _time(expires_at),
        HoldStatus(status),
        captured,
        records.parts_from_json(parts),
    )


# By value, without the enum call's lookup machinery: an account may have hundreds of grants.
_CATEGORIES = {member.value: member for member in GrantCategory}
_STATUSES = {member.value: member for member in GrantStatus}


def _grant(row: Sequence[Any]) -> GrantRow:
    """A grant as ``GRANT_COLUMNS`` reads it, as a JSON array (times as text)."""
    key, amount, remaining, expires_at, priority, category, created_at, status, *rest = row
    closed_at, notified_at, grant_id = rest
    return GrantRow(
        key,
        amount,
        remaining,
        _time(expires_at) if expires_at is not None else None,
        priority,
        _CATEGORIES[category],
        _time(created_at),
        _STATUSES[status],
        _time(closed_at) if closed_at is not None else None,
        _time(notified_at) if notified_at is not None else None,
        grant_id,
    )


def _time(value: datetime | str) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _json(value: Any) -> str | None:
    return json.dumps(value) if value is not None else None


def _entry_params(entry: Entry, key: str | None, defaults: Counters | None) -> dict[str, Any]:
    after = entry.after or defaults
    assert after is not None, "a ledger row belongs to an account"
    balance, ops_used, actions_used = after
    return {
        "entry_type": str(entry.entry_type),
        "source": str(entry.source),
        "entry_operation": str(entry.operation) if entry.operation else None,
        "amount": entry.amount,
        "entry_key": entry.key or key,
        "balance": balance,
        "ops_used": ops_used,
        "actions_used": actions_used,
        "meta": json.dumps(entry.meta) if entry.meta is not None else None,
        "refund_of_id": entry.refund_of_id,
        "hold_key": entry.hold_key,
        "grant_key": entry.grant_key,
        "credit_parts": _json(records.parts_json(entry.parts)),
    }
