"""What the frame asks of the database: the ``Store`` protocol, owned by the movements that use
it. Its two implementations live in ``billing.storage`` and are chosen there
(``billing.storage.factory.connect``); nothing here imports them.

The frame (``billing.movements.frame``) holds the logic of every keyed movement; a store only
reads and writes. ``PgStore`` (``billing.storage.psycopg_store``) is PostgreSQL's fast shape: two
round trips per movement, statements prepared once per connection. ``SqlStore``
(``billing.storage.sqlalchemy_store``) is SQLAlchemy Core on any dialect: the store of the
embedded SQLite default, and on PostgreSQL the one the sweeps and reads use (hold expiry, the
outbox, status). Both take the account's row lock before they read anything the frame decides
on, and both write a movement and its outcome in one transaction.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Protocol

from billing.core.records import AccountRow, ChargeRow, Locked, OutboxRow, Writes
from models import UserRole


class KeyRaced(Exception):
    """Another transaction committed this key while ours ran; ours rolled back and the caller
    runs the movement again, which then replays the winner's outcome (or answers 409)."""


class Store(Protocol):
    # The accounts this store committed events for: the relay publishes theirs next.
    event_accounts: set[int]

    def lock(
        self,
        user_id: int,
        key: str | None,
        hold_key: str | None = None,
        grant_keys: Collection[str] = (),
    ) -> Locked:
        """Begin; lock the account's row and read it, its open holds (and the hold
        ``hold_key``, open or not), its active grants (and, closed or not, the grants its
        holds draw from and ``grant_keys``) and the clock; look the key up."""

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

    def find_grant(self, key: str) -> int | None:
        """The account of the grant ``key``, which never changes, so no lock."""

    def open_account(self, user_id: int, role: UserRole) -> bool:
        """Create the account with every counter at its default, unless it exists (then
        nothing changes, its role included), and COMMIT; whether it was created."""

    def lock_unpublished(self, user_ids: Collection[int] | None, limit: int) -> list[OutboxRow]:
        """Begin; lock up to ``limit`` unpublished events (of ``user_ids`` only, if given) in
        account then id order, waiting for any another relay holds (``billing.jobs.outbox``)."""

    def mark_published(self, ids: list[int]) -> None:
        """Mark the locked events published (the clock as it is now) and COMMIT."""
