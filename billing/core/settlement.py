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
from datetime import datetime
from typing import Any

from billing.core import rules
from billing.core.records import AccountRow, Entry, HoldChange, HoldRow, counters
from billing.core.validation import RESERVED_KEY_PREFIX
from models import EntryType, HoldStatus

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
    """What settling one hold writes, and what it gave back."""

    change: HoldChange
    entries: list[Entry]
    returned: int


def settle(
    account: AccountRow,
    hold: HoldRow,
    status: HoldStatus,
    *,
    captured: int | None = None,
    meta: dict[str, Any] | None = None,
) -> Settled:
    """Close the open ``hold`` as ``status`` on the locked account, giving back at once what
    it does not keep. ``captured``: what a capture keeps (at most the held amount)."""
    assert hold.status == HoldStatus.HELD, "only an open hold settles"

    def row(entry_type: EntryType, amount: int, key: str, note: Any) -> Entry:
        return Entry(
            entry_type,
            hold.source,
            amount,
            hold.operation,
            note,
            key=key + hold.key,
            hold_key=hold.key,
            after=counters(account),
        )

    if status == HoldStatus.CAPTURED:
        assert captured is not None and 0 <= captured <= hold.amount
        # Only credits can be captured in part; an allowance or admin hold keeps it all.
        returned = hold.amount - captured
        rules.give_back(account, hold.source, returned)
        # The capture is the movement's own row, written after the rest's (``Writes``): both
        # carry the account as it is once the rest is back, the capture itself moving nothing.
        entries = [row(EntryType.CAPTURE, captured, SETTLE_PREFIX, meta)]
        if returned:
            entries.append(row(EntryType.RELEASE, returned, REST_PREFIX, {"rest_of_capture": True}))
    else:
        captured = None
        returned = rules.returnable(account, hold.source, hold.amount, hold.created_at)
        rules.give_back(account, hold.source, returned)
        entries = [row(ENTRY_TYPES[status], returned, SETTLE_PREFIX, meta)]
    closed = dataclasses.replace(hold, status=status, captured=captured)
    account.holds = [closed if h.key == hold.key else h for h in account.holds]
    return Settled(HoldChange(closed), entries, returned)


def expire_due(account: AccountRow, now: datetime) -> list[Settled]:
    """Expire every open hold of the locked account whose time is up at ``now``."""
    return [settle(account, hold, HoldStatus.EXPIRED) for hold in rules.due_holds(account, now)]
