"""The records the layers pass each other: an account and its holds as plain rows, and what
one movement writes (ledger entries, hold changes, outbox events, the key's outcome).

Plain data, no I/O: the rules (``billing.core.rules``) change them, the frame
(``billing.movements.frame``) builds them, the stores (``billing.storage``) read and write them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from billing.core.clock import as_utc
from models import (
    EntryType,
    EventType,
    GrantCategory,
    GrantStatus,
    HoldStatus,
    LedgerSource,
    Operation,
)


@dataclass(frozen=True)
class Part:
    """What one credits movement took from (or gave back to) one grant; ``grant`` None is the
    account's general balance, the part no grant accounts for."""

    grant: str | None
    amount: int

    def as_json(self) -> dict[str, Any]:
        return {"grant": self.grant, "amount": self.amount}


def parts_from_json(value: Any) -> tuple[Part, ...]:
    """Parts as a store reads them (``credit_parts``: a JSON array, or NULL)."""
    return tuple(Part(item["grant"], int(item["amount"])) for item in value or ())


def parts_json(parts: tuple[Part, ...] | list[Part]) -> list[dict[str, Any]] | None:
    return [part.as_json() for part in parts] if parts else None


@dataclass
class GrantRow:
    """A credit grant as the rules see it (``credit_grants``). ``remaining`` is net of what
    open holds keep from it, as the account's balance is; ``new`` marks a grant this
    movement made, which the store inserts."""

    key: str
    amount: int
    remaining: int
    expires_at: datetime | None
    priority: int
    category: GrantCategory
    created_at: datetime
    status: GrantStatus = GrantStatus.ACTIVE
    closed_at: datetime | None = None
    expiring_notified_at: datetime | None = None
    id: int | None = None
    new: bool = False
    # Its place in the draw order (``billing.core.credits.draw_order``), made once: the fields
    # it is made of never change, and a charge orders an account's grants more than once.
    order: tuple[Any, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Aware UTC once, here, so the rules compare and print them as they are.
        if self.expires_at is not None:
            self.expires_at = as_utc(self.expires_at)
        self.created_at = as_utc(self.created_at)

    def mutable(self) -> tuple[Any, ...]:
        """What a movement may change of it: the frame compares this before and after to
        write only the grants it changed."""
        return (self.remaining, self.status, self.closed_at, self.expiring_notified_at)


# The credit_grants columns a GrantRow is read from, in its fields' order.
GRANT_COLUMNS = (
    "idempotency_key",
    "amount",
    "remaining",
    "expires_at",
    "priority",
    "category",
    "created_at",
    "status",
    "closed_at",
    "expiring_notified_at",
    "id",
)


@dataclass(frozen=True)
class HoldRow:
    """A hold as the rules see it (``billing_holds``)."""

    key: str
    operation: Operation
    source: LedgerSource
    amount: int
    created_at: datetime
    expires_at: datetime
    status: HoldStatus = HoldStatus.HELD
    captured: int | None = None
    # A credits hold's parts: which grants its amount came from.
    parts: tuple[Part, ...] = ()


@dataclass
class AccountRow:
    """An account as a plain row of its ``users`` columns, with its open holds: what the
    stores read under the row lock, the rules change, and the stores write back."""

    id: int
    role: str
    subscription_type: str | None
    subscription_end: datetime | None
    subscription_ops_limit: int
    subscription_ops_used: int
    subscription_ops_reset_at: datetime
    freemium_actions_used: int
    freemium_reset_at: datetime
    balance_credits: int
    # The open holds, and the closed hold a capture or release names; not a users column.
    holds: list[HoldRow] = field(default_factory=list, compare=False, repr=False)
    # The active grants, and the closed ones a hold or a refund names; not a users column.
    grants: list[GrantRow] = field(default_factory=list, compare=False, repr=False)


# The users columns of an AccountRow, in order.
ACCOUNT_COLUMNS = tuple(f.name for f in fields(AccountRow) if f.name not in ("holds", "grants"))


@dataclass(frozen=True)
class Restored:
    """One allowance given back by a lazy reset: which, the period it opened, how much."""

    source: LedgerSource
    period_start: datetime
    amount: int


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
    "credit_parts",
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
    # The grant a grant, expiry or void row is about; a credits movement's parts.
    grant_key: str | None = None
    parts: tuple[Part, ...] = ()


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
    # Grants inserted (``new``) or changed, written before the ledger rows that name them.
    grants: list[GrantRow] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    entry: Entry | None = None
    # Written just after ``entry`` (a release's write-offs of parts whose grant has closed).
    trailing: list[Entry] = field(default_factory=list)
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
    # What it drew from each grant (a credits charge, or a captured credits hold).
    parts: tuple[Part, ...] = ()
