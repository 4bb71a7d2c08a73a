"""The frame's store on SQLAlchemy Core, for any dialect: the store of the embedded SQLite
default, and on PostgreSQL the one the sweeps and reads use (hold expiry, the outbox relay,
status), where the charge's fast path is ``PgStore``.

SQLite has no row locks: the engine begins every transaction with ``BEGIN IMMEDIATE``
(``billing.storage.engine``), which takes the database's write lock before the first read, so
the lock comes before the read here too. On PostgreSQL the lock is ``SELECT ... FOR UPDATE``.
The clock is ``db_now``: the database's on PostgreSQL, the process's on SQLite.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Table,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import TextClause

from billing.core import records
from billing.core.records import (
    ACCOUNT_COLUMNS,
    AccountRow,
    ChargeRow,
    Entry,
    GrantRow,
    HoldRow,
    Locked,
    OutboxRow,
    StoredOutcome,
    Writes,
    counters,
)
from billing.core.rules import as_utc
from billing.core.settlement import SETTLE_PREFIX
from billing.movements.store import KeyRaced
from models import (
    AllowanceReset,
    BillingRequest,
    CreditGrant,
    EntryType,
    Event,
    GrantStatus,
    Hold,
    HoldStatus,
    LedgerEntry,
    User,
    UserRole,
)

USERS = User.__table__
LEDGER = LedgerEntry.__table__
OUTCOMES = BillingRequest.__table__
RESETS = AllowanceReset.__table__
HOLDS = Hold.__table__
EVENTS = Event.__table__
COLUMNS = [USERS.c[name] for name in ACCOUNT_COLUMNS]
HOLD_COLUMNS = [HOLDS.c[name] for name in records.HOLD_COLUMNS]
GRANTS = CreditGrant.__table__
GRANT_COLUMNS = [GRANTS.c[name] for name in records.GRANT_COLUMNS]


def hold_row(row: Any) -> HoldRow:
    *columns, parts = row
    return HoldRow(*columns, parts=records.parts_from_json(parts))


def grant_row(row: Any) -> GrantRow:
    return GrantRow(*row)


def insert_unless_exists(conn: Connection, table: Table) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING in the connection's dialect."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def _insert_many(
    conn: Connection, table: Table, rows: list[dict[str, Any]], *, unless_exists: bool = False
) -> None:
    """Many rows of one kind (a sweep's expiries and their events: thousands). A plain
    executemany runs one statement a row, and on PostgreSQL most of a sweep's price was
    that. There they go in one INSERT from one array a column; elsewhere as an executemany."""
    if conn.dialect.name != "postgresql":
        insert = insert_unless_exists(conn, table) if unless_exists else table.insert()
        conn.execute(insert, rows)
        return
    names = list(rows[0])
    conn.execute(_insert_from_arrays(table, tuple(names), unless_exists), _arrays(table, rows))


@functools.cache
def _insert_from_arrays(table: Table, names: tuple[str, ...], unless_exists: bool) -> TextClause:
    dialect = postgresql.dialect()
    arrays = ", ".join(
        f"CAST(:{name} AS {table.c[name].type.compile(dialect=dialect)}[])" for name in names
    )
    conflict = " ON CONFLICT DO NOTHING" if unless_exists else ""
    return text(
        f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({arrays}){conflict}"
    )


def _arrays(table: Table, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """One list a column, each value as its column's type would bind it (JSON as text)."""
    arrays: dict[str, list[Any]] = {}
    for name in rows[0]:
        json_column = isinstance(table.c[name].type, JSON)
        arrays[name] = [_json_text(row[name]) if json_column else _plain(row[name]) for row in rows]
    return arrays


def _json_text(value: Any) -> str | None:
    return json.dumps(value) if value is not None else None


def _plain(value: Any) -> Any:
    # Enums (StrEnum) go as their text; the array's CAST makes them the column's type.
    return str(value) if isinstance(value, enum.Enum) else value


# An account's changed grants in one statement, whatever their number: one array a column.
UPDATE_GRANTS_PG = text(
    "UPDATE credit_grants AS g SET remaining = c.remaining,"
    " status = CAST(c.status AS grant_status_enum), closed_at = c.closed_at,"
    " expiring_notified_at = c.notified_at"
    " FROM unnest(CAST(:keys AS text[]), CAST(:remaining AS integer[]),"
    " CAST(:status AS text[]), CAST(:closed_at AS timestamptz[]),"
    " CAST(:notified_at AS timestamptz[])) AS c(key, remaining, status, closed_at, notified_at)"
    " WHERE g.user_id = :user_id AND g.idempotency_key = c.key"
)


def _update_grants(conn: Connection, user_id: int, grants: list[GrantRow]) -> None:
    """What a movement changed of the account's grants: on PostgreSQL one UPDATE from
    arrays; elsewhere an executemany."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            UPDATE_GRANTS_PG,
            {
                "user_id": user_id,
                "keys": [g.key for g in grants],
                "remaining": [g.remaining for g in grants],
                "status": [str(g.status) for g in grants],
                "closed_at": [g.closed_at for g in grants],
                "notified_at": [g.expiring_notified_at for g in grants],
            },
        )
        return
    conn.execute(
        update(GRANTS)
        .where(GRANTS.c.idempotency_key == bindparam("grant_key"))
        .values(
            remaining=bindparam("remaining"),
            status=bindparam("status"),
            closed_at=bindparam("closed_at"),
            expiring_notified_at=bindparam("notified_at"),
        ),
        [
            {
                "grant_key": g.key,
                "remaining": g.remaining,
                "status": g.status,
                "closed_at": g.closed_at,
                "notified_at": g.expiring_notified_at,
            }
            for g in grants
        ],
    )


def db_now(conn: Connection) -> datetime:
    """The transaction's clock: PostgreSQL's ``now()``, one clock with the frame for every
    worker; the process's on the embedded default, which runs on one machine. In UTC, so that
    arithmetic on it is in exact seconds whatever the session's TimeZone."""
    if conn.dialect.name == "postgresql":
        return as_utc(conn.execute(select(func.now())).scalar_one())
    return datetime.now(UTC)


class SqlStore:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.event_accounts: set[int] = set()

    def _now(self) -> datetime:
        return db_now(self.conn)

    def lock_due(
        self, after: int, limit: int, grants: timedelta | None = None
    ) -> tuple[list[AccountRow], datetime]:
        """Begin; lock up to ``limit`` accounts past id ``after`` that have a hold due (with
        ``grants``, a notice period: a grant due, or due for its expiring notice), skipping any
        another transaction holds (it expires them itself), and read their holds and grants
        after the lock."""
        self.conn.begin()
        now = self._now()
        if grants is not None:
            notice = and_(
                GRANTS.c.expiring_notified_at.is_(None),
                GRANTS.c.remaining > 0,
                GRANTS.c.expires_at <= now + grants,
            )
            due = select(GRANTS.c.user_id).where(
                GRANTS.c.status == GrantStatus.ACTIVE,
                or_(GRANTS.c.expires_at <= now, notice),
            )
        else:
            due = select(HOLDS.c.user_id).where(
                HOLDS.c.status == HoldStatus.HELD, HOLDS.c.expires_at <= now
            )
        rows = self.conn.execute(
            select(*COLUMNS)
            .where(USERS.c.id > after, USERS.c.id.in_(due))
            .order_by(USERS.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        accounts = {row.id: AccountRow(*row) for row in rows}
        if accounts:
            holds = self.conn.execute(
                select(HOLDS.c.user_id, *HOLD_COLUMNS).where(
                    HOLDS.c.user_id.in_(list(accounts)), HOLDS.c.status == HoldStatus.HELD
                )
            ).all()
            for user_id, *hold in holds:
                accounts[user_id].holds.append(hold_row(hold))
            for account in accounts.values():
                account.grants = self._grants(account)
        return list(accounts.values()), now

    def _grants(self, account: AccountRow, named: Collection[str] = ()) -> list[GrantRow]:
        """The account's active grants, then the closed ones its holds draw from and
        ``named``: read after the account's lock, as its holds are."""
        rows = self.conn.execute(
            select(*GRANT_COLUMNS).where(
                GRANTS.c.user_id == account.id, GRANTS.c.status == GrantStatus.ACTIVE
            )
        ).all()
        grants = [grant_row(row) for row in rows]
        active = {g.key for g in grants}
        wanted = set(named) | {p.grant for h in account.holds for p in h.parts if p.grant}
        wanted -= active
        if wanted:
            closed = self.conn.execute(
                select(*GRANT_COLUMNS).where(
                    GRANTS.c.user_id == account.id, GRANTS.c.idempotency_key.in_(sorted(wanted))
                )
            ).all()
            grants += [grant_row(row) for row in closed]
        return grants

    def _lock_account(
        self, user_id: int, hold_key: str | None, grant_keys: Collection[str] = ()
    ) -> AccountRow | None:
        """The account under its row lock, then its open holds (and the hold ``hold_key``)
        and its grants: read after the lock, so they are as its last movement left them."""
        query = select(*COLUMNS).where(USERS.c.id == user_id).with_for_update()
        row = self.conn.execute(query).first()
        if row is None:
            return None
        named = HOLDS.c.status == HoldStatus.HELD
        if hold_key is not None:
            named = or_(named, HOLDS.c.idempotency_key == hold_key)
        holds = self.conn.execute(
            select(*HOLD_COLUMNS).where(HOLDS.c.user_id == user_id, named)
        ).all()
        account = AccountRow(*row, holds=[hold_row(hold) for hold in holds])
        account.grants = self._grants(account, grant_keys)
        return account

    def lock(
        self,
        user_id: int,
        key: str | None,
        hold_key: str | None = None,
        grant_keys: Collection[str] = (),
    ) -> Locked:
        self.conn.begin()
        account = self._lock_account(user_id, hold_key, grant_keys)
        stored = None
        if key is not None:
            row = self.conn.execute(
                select(
                    OUTCOMES.c.user_id, OUTCOMES.c.operation, OUTCOMES.c.cost, OUTCOMES.c.response
                ).where(OUTCOMES.c.idempotency_key == key)
            ).first()
            stored = StoredOutcome(*row) if row is not None else None
        return Locked(account, self._now(), stored)

    def write(self, writes: Writes) -> int | None:
        ledger_id = self.write_rows(writes)
        self.conn.commit()
        if writes.events:
            self.event_accounts.add(writes.user_id)
        return ledger_id

    def write_rows(self, writes: Writes) -> int | None:
        """``write`` without the COMMIT, for a batch of accounts in one transaction."""
        conn, account, entry, outcome = self.conn, writes.account, writes.entry, writes.outcome
        if account is not None and writes.changed:
            columns = {c: getattr(account, c) for c in ACCOUNT_COLUMNS if c not in ("id", "role")}
            conn.execute(update(USERS).where(USERS.c.id == account.id).values(**columns))
        for reset in writes.resets:
            conn.execute(
                insert_unless_exists(conn, RESETS).values(
                    user_id=writes.user_id,
                    source=reset.source,
                    period_start=reset.period_start,
                    restored=reset.amount,
                    recorded_at=writes.at,
                )
            )
        for change in writes.holds:
            hold = change.hold
            if change.new:
                conn.execute(
                    HOLDS.insert().values(
                        idempotency_key=hold.key,
                        user_id=writes.user_id,
                        operation=hold.operation,
                        source=hold.source,
                        amount=hold.amount,
                        created_at=writes.at,
                        expires_at=hold.expires_at,
                        credit_parts=records.parts_json(hold.parts),
                    )
                )
            else:
                conn.execute(
                    update(HOLDS)
                    .where(HOLDS.c.idempotency_key == hold.key, HOLDS.c.status == HoldStatus.HELD)
                    .values(status=hold.status, settled_at=writes.at, captured=hold.captured)
                )
        # Before the ledger rows that name them. A sweep writes many of each for one account:
        # a few multi-row statements per kind, not a statement (and a server round) a row.
        new = [g for g in writes.grants if g.new]
        if new:
            _insert_many(
                conn,
                GRANTS,
                [
                    {
                        "user_id": writes.user_id,
                        "idempotency_key": g.key,
                        "amount": g.amount,
                        "remaining": g.remaining,
                        "expires_at": g.expires_at,
                        "priority": g.priority,
                        "category": g.category,
                        "created_at": writes.at,
                    }
                    for g in new
                ],
            )
        changed = [g for g in writes.grants if not g.new]
        if changed:
            _update_grants(conn, writes.user_id, changed)
        if len(writes.entries) > 1:
            # Rows with keys of their own that only this movement writes (expiries, a
            # capture's rest): under the account's lock nobody else can, so no race to detect.
            _insert_many(conn, LEDGER, [self._entry_values(writes, e) for e in writes.entries])
        else:
            for extra in writes.entries:
                self._insert_entry(writes, extra)
        if writes.events:
            _insert_many(
                conn,
                EVENTS,
                [
                    {
                        "event_id": event.event_id,
                        "type": event.type,
                        "user_id": writes.user_id,
                        "occurred_at": writes.at,
                        "subject_at": event.subject_at,
                        "data": event.data,
                        "kept_until": event.kept_until,
                    }
                    for event in writes.events
                ],
                unless_exists=True,
            )
        ledger_id = None
        if entry is not None:
            ledger_id = self._insert_entry(writes, entry)
        if outcome is not None:
            response = outcome.response
            if ledger_id is not None:
                response = {**response, "ledger_id": ledger_id}
            self._insert_keyed(
                OUTCOMES.c.idempotency_key,
                idempotency_key=writes.key,
                user_id=outcome.user_id,
                operation=outcome.operation,
                cost=outcome.cost,
                response=response,
                ledger_id=ledger_id,
            )
        for extra in writes.trailing:
            self._insert_entry(writes, extra)
        return ledger_id

    def _entry_values(self, writes: Writes, entry: Entry) -> dict[str, Any]:
        account = writes.account
        assert account is not None, "a ledger row belongs to an account"
        balance, ops_used, actions_used = entry.after or counters(account)
        return {
            "user_id": account.id,
            "entry_type": entry.entry_type,
            "source": entry.source,
            "operation": entry.operation,
            "amount": entry.amount,
            "idempotency_key": entry.key or writes.key,
            "balance_credits_after": balance,
            "subscription_ops_used_after": ops_used,
            "freemium_actions_used_after": actions_used,
            "meta": entry.meta,
            "refund_of_id": entry.refund_of_id,
            "hold_key": entry.hold_key,
            "grant_key": entry.grant_key,
            "credit_parts": records.parts_json(entry.parts),
            "created_at": writes.at,
        }

    def _insert_entry(self, writes: Writes, entry: Entry) -> int:
        return self._insert_keyed(LEDGER.c.id, **self._entry_values(writes, entry))

    def _insert_keyed(self, returning: Column[Any], **values: Any) -> Any:
        """Insert a row under its unique idempotency key; a key taken meanwhile rolls back
        and raises KeyRaced."""
        table = returning.table
        stmt = insert_unless_exists(self.conn, table).values(**values).returning(returning)
        inserted = self.conn.execute(stmt).scalar()
        if inserted is None:
            self.rollback()
            raise KeyRaced(values["idempotency_key"])
        return inserted

    def rollback(self) -> None:
        if self.conn.in_transaction():
            self.conn.rollback()

    def peek(self, user_id: int) -> tuple[AccountRow | None, datetime]:
        # The account and its open holds in one statement (a row per hold), so in one
        # snapshot on any dialect: two statements under PostgreSQL's READ COMMITTED could
        # straddle a reserve's or a release's commit and count its credits twice or not at all.
        open_holds = and_(HOLDS.c.user_id == USERS.c.id, HOLDS.c.status == HoldStatus.HELD)
        query = (
            select(*COLUMNS, *HOLD_COLUMNS)
            .select_from(USERS.outerjoin(HOLDS, open_holds))
            .where(USERS.c.id == user_id)
        )
        width = len(COLUMNS)
        with self.conn.begin():
            rows = self.conn.execute(query).all()
            now = self._now()
            if not rows:
                return None, now
            holds = [hold_row(row[width:]) for row in rows if row[width] is not None]
            account = AccountRow(*rows[0][:width], holds=holds)
            # An unlocked read's grants are shown, never written back: a grant that moved
            # between the two statements changes what the state lists, not any figure.
            account.grants = [
                grant_row(row)
                for row in self.conn.execute(
                    select(*GRANT_COLUMNS).where(
                        GRANTS.c.user_id == user_id, GRANTS.c.status == GrantStatus.ACTIVE
                    )
                ).all()
            ]
        return account, now

    def find_charge(self, key: str) -> ChargeRow | None:
        charges = select(
            LEDGER.c.id,
            LEDGER.c.user_id,
            LEDGER.c.source,
            LEDGER.c.amount,
            LEDGER.c.operation,
            LEDGER.c.created_at,
            LEDGER.c.credit_parts,
        ).where(LEDGER.c.idempotency_key == key, LEDGER.c.entry_type == EntryType.CHARGE)
        captures = (
            select(
                LEDGER.c.id,
                LEDGER.c.user_id,
                LEDGER.c.source,
                LEDGER.c.amount,
                LEDGER.c.operation,
                HOLDS.c.created_at,
                LEDGER.c.credit_parts,
            )
            .join(HOLDS, HOLDS.c.idempotency_key == LEDGER.c.hold_key)
            .where(
                LEDGER.c.idempotency_key == SETTLE_PREFIX + key,
                LEDGER.c.entry_type == EntryType.CAPTURE,
            )
        )
        with self.conn.begin():
            row = self.conn.execute(union_all(charges, captures)).first()
        if row is None:
            return None
        *columns, parts = row
        return ChargeRow(*columns, parts=records.parts_from_json(parts))

    def find_hold(self, key: str) -> int | None:
        with self.conn.begin():
            return self.conn.execute(
                select(HOLDS.c.user_id).where(HOLDS.c.idempotency_key == key)
            ).scalar()

    def find_grant(self, key: str) -> int | None:
        with self.conn.begin():
            return self.conn.execute(
                select(GRANTS.c.user_id).where(GRANTS.c.idempotency_key == key)
            ).scalar()

    def open_account(self, user_id: int, role: UserRole) -> bool:
        with self.conn.begin():
            inserted = self.conn.execute(
                insert_unless_exists(self.conn, USERS).values(id=user_id, role=role)
            )
            return inserted.rowcount == 1

    def lock_unpublished(self, user_ids: Collection[int] | None, limit: int) -> list[OutboxRow]:
        self.conn.begin()
        query = select(
            EVENTS.c.id,
            EVENTS.c.event_id,
            EVENTS.c.type,
            EVENTS.c.user_id,
            EVENTS.c.occurred_at,
            EVENTS.c.data,
        ).where(EVENTS.c.published_at.is_(None))
        if user_ids is not None:
            query = query.where(EVENTS.c.user_id.in_(list(user_ids)))
        rows = self.conn.execute(
            query.order_by(EVENTS.c.user_id, EVENTS.c.id).limit(limit).with_for_update()
        ).all()
        return [OutboxRow(*row) for row in rows]

    def mark_published(self, ids: list[int]) -> None:
        self.conn.execute(
            update(EVENTS).where(EVENTS.c.id.in_(ids)).values(published_at=self._now())
        )
        self.conn.commit()
