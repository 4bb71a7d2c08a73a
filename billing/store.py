"""What the frame asks of the database, and the two stores that answer it.

The frame (``billing.frame``) holds the logic of every keyed movement; a store only reads and
writes. ``PgStore`` (``billing.store_pg``) is PostgreSQL's fast shape: two round trips per
movement, statements prepared once per connection. ``SqlStore`` (``billing.store_sql``) is
SQLAlchemy Core, for the embedded SQLite default. Both take the account's row lock before they
read anything the frame decides on, and both write a movement and its outcome in one
transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Engine

from billing.rules import AccountRow, HoldRow, Restored
from models import EntryType, EventType, LedgerSource, Operation


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


# The billing_holds columns a HoldRow is read from, in its fields' order.
HOLD_COLUMNS = (
    "idempotency_key",
    "operation",
    "source",
    "amount",
    "created_at",
    "expires_at",
    "status",
    "captured",
)

# balance_credits, subscription_ops_used, freemium_actions_used: an account's counters.
Counters = tuple[int, int, int]


def counters(account: AccountRow) -> Counters:
    return (account.balance_credits, account.subscription_ops_used, account.freemium_actions_used)


@dataclass(frozen=True)
class Entry:
    """A ledger row to write. ``key`` is its own idempotency key (None: the movement's);
    ``after``, the account's counters right after it (None: the account the store writes)."""

    entry_type: EntryType
    source: LedgerSource
    amount: int
    operation: Operation | None = None
    meta: dict[str, Any] | None = None
    refund_of_id: int | None = None
    key: str | None = None
    hold_key: str | None = None
    after: Counters | None = None


@dataclass(frozen=True)
class HoldChange:
    """A hold row to write: a new hold, inserted, or an open one settled (``hold.status``)."""

    hold: HoldRow
    new: bool = False


@dataclass(frozen=True)
class Event:
    """An outbox row (``billing.events``); its account and time are those of the writes."""

    event_id: uuid.UUID
    type: EventType
    data: dict[str, Any]
    subject_at: datetime | None = None
    # Retention keeps the row at least until then (``models.Event.kept_until``).
    kept_until: datetime | None = None


@dataclass(frozen=True)
class OutboxRow:
    """A recorded event as the relay publishes it."""

    id: int
    event_id: uuid.UUID
    type: str
    user_id: int
    occurred_at: datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class Writes:
    """Everything one movement writes, in one transaction, then COMMIT.

    ``account`` is the locked account as the frame left it (its row is updated when
    ``changed``; a ledger entry takes its counters from it); ``holds`` are inserted or
    settled, and ``entries`` written, before the movement's own ``entry``; ``events`` go to
    the outbox (an event whose id is there already is skipped); ``outcome`` is remembered
    under ``key``, with ``ledger_id`` (the id of ``entry``) added when there is one.
    """

    user_id: int
    key: str | None
    at: datetime
    account: AccountRow | None = None
    changed: bool = False
    resets: list[Restored] = field(default_factory=list)
    holds: list[HoldChange] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    entry: Entry | None = None
    outcome: StoredOutcome | None = None
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class ChargeRow:
    """The immutable facts of a charge's ledger row that a refund needs. For a captured hold,
    the capture's row, with the time the hold took its amount."""

    id: int
    user_id: int
    source: LedgerSource
    amount: int
    operation: Operation | None
    created_at: datetime


class Store(Protocol):
    # The accounts this store committed events for: the relay publishes theirs next.
    event_accounts: set[int]

    def lock(self, user_id: int, key: str | None, hold_key: str | None = None) -> Locked:
        """Begin; lock the account's row and read it, its open holds (and the hold
        ``hold_key``, open or not) and the clock; look the key up."""

    def write(self, writes: Writes) -> int | None:
        """Write and COMMIT; the ledger id of the entry, if any. Raises KeyRaced when the key
        was committed by a concurrent transaction (this one is then rolled back). An account
        with events committed joins ``event_accounts``."""

    def rollback(self) -> None:
        """End an open transaction without writing; nothing when none is open."""

    def peek(self, user_id: int) -> tuple[AccountRow | None, datetime]:
        """The account, its open holds and the clock, without a lock, for reads that write
        nothing: one statement, so one snapshot (a balance and holds of one moment)."""

    def find_charge(self, key: str) -> ChargeRow | None:
        """The charge recorded under ``key``, or the capture of the hold ``key``; ledger rows
        never change, so no lock."""

    def find_hold(self, key: str) -> int | None:
        """The account of the hold ``key``, which never changes, so no lock."""

    def lock_unpublished(self, user_ids: Collection[int] | None, limit: int) -> list[OutboxRow]:
        """Begin; lock up to ``limit`` unpublished events (of ``user_ids`` only, if given) in
        account then id order, waiting for any another relay holds (``billing.outbox``)."""

    def mark_published(self, ids: list[int]) -> None:
        """Mark the locked events published (the clock as it is now) and COMMIT."""


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
