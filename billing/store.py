"""What the frame asks of the database, and the two stores that answer it.

The frame (``billing.frame``) holds the logic of every keyed movement; a store only reads and
writes. ``PgStore`` (``billing.store_pg``) is PostgreSQL's fast shape: two round trips per
movement, statements prepared once per connection. ``SqlStore`` (``billing.store_sql``) is
SQLAlchemy Core, for the embedded SQLite default. Both take the account's row lock before they
read anything the frame decides on, and both write a movement and its outcome in one
transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Engine

from billing.rules import AccountRow, Restored
from models import EntryType, LedgerSource, Operation


class KeyRaced(Exception):
    """Another transaction committed this key while ours ran; ours rolled back and the caller
    runs the movement again, which then replays the winner's outcome (or answers 409)."""


@dataclass(frozen=True)
class StoredOutcome:
    """A key's first outcome, with what a repeat must match."""

    user_id: int
    operation: str
    cost: int | None
    response: dict[str, Any]


@dataclass(frozen=True)
class Locked:
    """What the first step read: the account under its row lock (None: no such account), the
    database's clock, and the key's stored outcome, looked up after the lock."""

    account: AccountRow | None
    now: datetime
    stored: StoredOutcome | None


@dataclass(frozen=True)
class Entry:
    """A ledger row to write; the account's counters after the movement are added by the
    store from the account it writes."""

    entry_type: EntryType
    source: LedgerSource
    amount: int
    operation: Operation | None = None
    meta: dict[str, Any] | None = None
    refund_of_id: int | None = None


@dataclass(frozen=True)
class Writes:
    """Everything one movement writes, in one transaction, then COMMIT.

    ``account`` is the locked account as the frame left it (its row is updated when
    ``changed``; a ledger entry takes its counters from it); ``outcome`` is remembered under
    ``key``, with ``ledger_id`` added when there is an entry.
    """

    user_id: int
    key: str | None
    at: datetime
    account: AccountRow | None = None
    changed: bool = False
    resets: list[Restored] = field(default_factory=list)
    entry: Entry | None = None
    outcome: StoredOutcome | None = None


@dataclass(frozen=True)
class ChargeRow:
    """The immutable facts of a charge's ledger row that a refund needs."""

    id: int
    user_id: int
    source: LedgerSource
    amount: int
    operation: Operation | None
    created_at: datetime


class Store(Protocol):
    def lock(self, user_id: int, key: str | None) -> Locked:
        """Begin; lock the account's row and read it with the clock; look the key up."""

    def write(self, writes: Writes) -> int | None:
        """Write and COMMIT; the ledger id of the entry, if any. Raises KeyRaced when the key
        was committed by a concurrent transaction (this one is then rolled back)."""

    def rollback(self) -> None:
        """End an open transaction without writing; nothing when none is open."""

    def peek(self, user_id: int) -> tuple[AccountRow | None, datetime]:
        """The account without a lock, for reads that write nothing."""

    def find_charge(self, key: str) -> ChargeRow | None:
        """The charge recorded under ``key``; ledger rows never change, so no lock."""


@contextmanager
def connect(engine: Engine) -> Iterator[Store]:
    """A store on one pooled connection: PgStore on PostgreSQL, else SqlStore."""
    if engine.dialect.name == "postgresql":
        import psycopg

        from billing.store_pg import PgStore

        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            raw: psycopg.Connection = conn.connection.driver_connection
            try:
                yield PgStore(raw)
            except BaseException:
                if raw.broken or raw.closed:
                    conn.invalidate()  # SQLAlchemy did not see the error: drop the connection
                raise
    else:
        from billing.store_sql import SqlStore

        with engine.connect() as conn:
            store = SqlStore(conn)
            try:
                yield store
            finally:
                store.rollback()
