"""The frame's store on SQLAlchemy Core: the embedded SQLite default.

SQLite has no row locks: the engine begins every transaction with ``BEGIN IMMEDIATE``
(``billing.db``), which takes the database's write lock before the first read, so the lock
comes before the read here too. The statements are plain Core and run on any dialect; the
clock is the process's, as the embedded default runs on one machine.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Connection, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from billing.rules import AccountRow
from billing.store import ChargeRow, KeyRaced, Locked, StoredOutcome, Writes
from models import AllowanceReset, BillingRequest, EntryType, LedgerEntry, User

USERS = User.__table__
LEDGER = LedgerEntry.__table__
OUTCOMES = BillingRequest.__table__
RESETS = AllowanceReset.__table__
ACCOUNT_COLUMNS = [USERS.c[name] for name in AccountRow.__dataclass_fields__]


def insert_unless_exists(conn: Connection, table: Table) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING in the connection's dialect."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


class SqlStore:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _now(self) -> datetime:
        return datetime.now(UTC)

    def _account(self, user_id: int, *, for_update: bool) -> AccountRow | None:
        query = select(*ACCOUNT_COLUMNS).where(USERS.c.id == user_id)
        row = self.conn.execute(query.with_for_update() if for_update else query).first()
        return AccountRow(*row) if row is not None else None

    def lock(self, user_id: int, key: str | None) -> Locked:
        self.conn.begin()
        account = self._account(user_id, for_update=True)
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
        conn, account, entry, outcome = self.conn, writes.account, writes.entry, writes.outcome
        if account is not None and writes.changed:
            values = {k: v for k, v in asdict(account).items() if k not in ("id", "role")}
            conn.execute(update(USERS).where(USERS.c.id == account.id).values(**values))
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
        ledger_id = None
        if entry is not None:
            assert account is not None, "a ledger row belongs to an account"
            ledger_id = self._insert_keyed(
                LEDGER.c.id,
                user_id=account.id,
                entry_type=entry.entry_type,
                source=entry.source,
                operation=entry.operation,
                amount=entry.amount,
                idempotency_key=writes.key,
                balance_credits_after=account.balance_credits,
                subscription_ops_used_after=account.subscription_ops_used,
                freemium_actions_used_after=account.freemium_actions_used,
                meta=entry.meta,
                refund_of_id=entry.refund_of_id,
                created_at=writes.at,
            )
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
        conn.commit()
        return ledger_id

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
        with self.conn.begin():
            return self._account(user_id, for_update=False), self._now()

    def find_charge(self, key: str) -> ChargeRow | None:
        with self.conn.begin():
            row = self.conn.execute(
                select(
                    LEDGER.c.id,
                    LEDGER.c.user_id,
                    LEDGER.c.source,
                    LEDGER.c.amount,
                    LEDGER.c.operation,
                    LEDGER.c.created_at,
                ).where(LEDGER.c.idempotency_key == key, LEDGER.c.entry_type == EntryType.CHARGE)
            ).first()
        return ChargeRow(*row) if row is not None else None
