"""Settling a hold on its locked account: capture, release or expiry, each exactly once.

A hold's amount was taken when it was reserved. Settling gives back what is not kept: all of
it on a release or an expiry (as much as ``rules.returnable`` allows), the uncaptured rest on
a capture. Each settlement writes one ledger row keyed ``billing:settle:<hold key>``: the key
is unique, so the database itself lets a hold settle once. A partial capture's rest goes
back in a row of its own, keyed ``billing:settle-rest:<hold key>`` and written just before the
capture's. Every row's ``*_after`` figures are the account's right after it, in id order.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import datetime
from typing import Any

from billing.core import credits, rules
from billing.core.records import AccountRow, Entry, HoldChange, HoldRow, Part, counters
from billing.core.validation import RESERVED_KEY_PREFIX
from models import EntryType, GrantStatus, HoldStatus, LedgerSource

SETTLE_PREFIX = f"{RESERVED_KEY_PREFIX}settle:"
REST_PREFIX = f"{RESERVED_KEY_PREFIX}settle-rest:"

ENTRY_TYPES = {
    HoldStatus.CAPTURED: EntryType.CAPTURE,
    HoldStatus.RELEASED: EntryType.RELEASE,
    HoldStatus.EXPIRED: EntryType.EXPIRE,
}


def settle_key(hold_key: str) -> str:
    return SETTLE_PREFIX + hold_key


@dataclasses.dataclass(frozen=True)
class Settled:
    """What settling one hold writes, and what it gave back. ``entry`` is the settlement's own
    row; ``before`` and ``after`` are written just before and just after it (a capture's rest
    and write-offs; a release's or expiry's write-offs), so that every row's figures are the
    account's right after it, in id order."""

    change: HoldChange
    entry: Entry
    returned: int
    before: list[Entry] = dataclasses.field(default_factory=list)
    after: list[Entry] = dataclasses.field(default_factory=list)

    @property
    def entries(self) -> list[Entry]:
        """Every row, in the order they are written."""
        return [*self.before, self.entry, *self.after]

    @property
    def lapsed(self) -> int:
        """What came back to a closed grant and was written off at once."""
        return sum(e.amount for e in self.before + self.after if e.grant_key is not None)


def hold_parts(hold: HoldRow) -> tuple[Part, ...]:
    """A credits hold's parts; a hold from before grants took its amount from the general
    balance."""
    if hold.source != LedgerSource.CREDITS:
        return ()
    return hold.parts or (Part(None, hold.amount),)


def lapse_key(movement_key: str, grant_key: str) -> str:
    # Both keys may be 255 characters: the write-off's own key is a digest of the two.
    digest = hashlib.sha256(f"{movement_key}\0{grant_key}".encode()).hexdigest()[:40]
    return f"{RESERVED_KEY_PREFIX}lapse:{digest}"


def write_offs(account: AccountRow, lapsed: list[Part], movement_key: str) -> list[Entry]:
    """The rows of parts given back to grants that expired or were voided meanwhile: each
    leaves the balance again at once, as an ``expiry`` or a ``void`` of its grant."""
    rows = []
    for part in lapsed:
        assert part.grant is not None, "the general balance never lapses"
        status = credits.lapse(account, part)
        entry_type = EntryType.VOID if status == GrantStatus.VOIDED else EntryType.EXPIRY
        rows.append(
            Entry(
                entry_type,
                LedgerSource.CREDITS,
                part.amount,
                meta={"given_back_by": movement_key},
                key=lapse_key(movement_key, part.grant),
                after=counters(account),
                grant_key=part.grant,
                parts=(part,),
            )
        )
    return rows


def settle(
    account: AccountRow,
    hold: HoldRow,
    status: HoldStatus,
    *,
    captured: int | None = None,
    meta: dict[str, Any] | None = None,
) -> Settled:
    """Close the open ``hold`` as ``status`` on the locked account, giving back at once what
    it does not keep. ``captured``: what a capture keeps (at most the held amount). A credits
    hold gives each part back to its own grant; a part whose grant has closed meanwhile is
    written off at once."""
    assert hold.status == HoldStatus.HELD, "only an open hold settles"

    def row(entry_type: EntryType, amount: int, key: str, note: Any, parts: Any = ()) -> Entry:
        return Entry(
            entry_type,
            hold.source,
            amount,
            hold.operation,
            note,
            key=key + hold.key,
            hold_key=hold.key,
            after=counters(account),
            parts=tuple(parts),
        )

    def give_back(parts: list[Part], amount: int) -> list[Part]:
        if hold.source == LedgerSource.CREDITS:
            return credits.give_back(account, parts)
        rules.give_back(account, hold.source, amount)
        return []

    before: list[Entry] = []
    after: list[Entry] = []
    if status == HoldStatus.CAPTURED:
        assert captured is not None and 0 <= captured <= hold.amount
        # Only credits can be captured in part; an allowance or admin hold keeps it all. The
        # capture keeps what was drawn first; the rest goes back to its grants.
        kept, rest = credits.split(hold_parts(hold), captured)
        returned = hold.amount - captured
        lapsed = give_back(rest, returned)
        if returned:
            before.append(
                row(EntryType.RELEASE, returned, REST_PREFIX, {"rest_of_capture": True}, rest)
            )
        before += write_offs(account, lapsed, hold.key)
        # The capture is the movement's own row, written last: it carries the account as it
        # is once the rest is back, the capture itself moving nothing.
        entry = row(EntryType.CAPTURE, captured, SETTLE_PREFIX, meta, kept)
    else:
        captured = None
        returned = rules.returnable(account, hold.source, hold.amount, hold.created_at)
        parts = list(hold_parts(hold))
        lapsed = give_back(parts, returned)
        entry = row(ENTRY_TYPES[status], returned, SETTLE_PREFIX, meta, parts)
        after = write_offs(account, lapsed, hold.key)
    closed = dataclasses.replace(hold, status=status, captured=captured)
    account.holds = [closed if h.key == hold.key else h for h in account.holds]
    return Settled(HoldChange(closed), entry, returned, before, after)


def expire_due(account: AccountRow, now: datetime) -> list[Settled]:
    """Expire every open hold of the locked account whose time is up at ``now``."""
    return [settle(account, hold, HoldStatus.EXPIRED) for hold in rules.due_holds(account, now)]
