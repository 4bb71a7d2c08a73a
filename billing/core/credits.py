"""Credit grants as pure functions over a locked account: the draw order, what a movement
takes from each grant, what comes back, and what expires.

An account's ``balance_credits`` is everything spendable, net of holds. Each active grant's
``remaining`` is its share of that balance; the rest, which no grant accounts for (every
balance from before grants existed, or one an operator set), is the account's *general*
balance. It is drawn as a paid, never-expiring, priority-50 grant older than every grant, so
an account with no grants draws exactly as it always did.

Draw order: priority ascending, then the soonest ``expires_at`` (never-expiring last), then
promotional before paid, then the older grant first.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from billing.core.clock import as_utc
from billing.core.records import AccountRow, GrantRow, Part
from billing.core.validation import DEFAULT_PRIORITY, RESERVED_KEY_PREFIX
from models import GrantCategory, GrantStatus

# The general balance's place in the draw order: a paid, never-expiring, priority-50 grant
# older than every grant.
_NEVER = datetime.max.replace(tzinfo=UTC)
_GENERAL_ORDER: tuple[Any, ...] = (DEFAULT_PRIORITY, True, _NEVER, True, 0, datetime.min, -1)


def draw_order(grant: GrantRow) -> tuple[Any, ...]:
    # Made once per grant (``GrantRow.order``): none of the fields it reads ever change, but
    # for ``id``, which only a new grant lacks, and no movement draws from the grant it makes.
    if grant.order is None:
        grant.order = (
            grant.priority,
            grant.expires_at is None,
            grant.expires_at if grant.expires_at is not None else _NEVER,
            grant.category == GrantCategory.PAID,
            1,  # after the general balance among equals: it is older than every grant
            grant.created_at.replace(tzinfo=None),
            grant.id if grant.id is not None else 2**63,
        )
    return grant.order


def active(account: AccountRow) -> list[GrantRow]:
    return [g for g in account.grants if g.status == GrantStatus.ACTIVE]


def _with_remaining(account: AccountRow) -> list[GrantRow]:
    return [g for g in account.grants if g.status == GrantStatus.ACTIVE and g.remaining > 0]


def live(account: AccountRow) -> list[GrantRow]:
    """The active grants with something left, in draw order."""
    return sorted(_with_remaining(account), key=draw_order)


def general(account: AccountRow) -> int:
    """The part of the balance no active grant accounts for."""
    return account.balance_credits - sum(g.remaining for g in active(account))


def find(account: AccountRow, key: str | None) -> GrantRow | None:
    return next((g for g in account.grants if g.key == key), None) if key is not None else None


def plan(account: AccountRow, amount: int) -> list[Part]:
    """What taking ``amount`` credits takes from each grant, in draw order; the caller has
    checked that the balance covers it."""
    slots: list[tuple[tuple[Any, ...], str | None, int]] = [
        (draw_order(g), g.key, g.remaining) for g in live(account)
    ]
    general_part = general(account)
    if general_part > 0:
        slots.append((_GENERAL_ORDER, None, general_part))
    parts: list[Part] = []
    left = amount
    for _, key, available in sorted(slots, key=lambda slot: slot[0]):
        if left == 0:
            break
        taken = min(available, left)
        parts.append(Part(key, taken))
        left -= taken
    assert left == 0, "the balance covers the amount, so its grants do"
    return parts


def take(account: AccountRow, parts: list[Part]) -> None:
    """Take ``parts`` from their grants and from the balance."""
    for part in parts:
        grant = find(account, part.grant)
        if grant is not None:
            grant.remaining -= part.amount
        account.balance_credits -= part.amount


def split(parts: tuple[Part, ...] | list[Part], amount: int) -> tuple[list[Part], list[Part]]:
    """The first ``amount`` of ``parts`` (in their order: a capture consumes what was drawn
    first), and the rest."""
    kept: list[Part] = []
    rest: list[Part] = []
    left = amount
    for part in parts:
        taken = min(part.amount, left)
        left -= taken
        if taken:
            kept.append(Part(part.grant, taken))
        if part.amount - taken:
            rest.append(Part(part.grant, part.amount - taken))
    return kept, rest


def give_back(account: AccountRow, parts: tuple[Part, ...] | list[Part]) -> list[Part]:
    """Give ``parts`` back to their grants and the balance. What belongs to a grant that has
    expired or been voided meanwhile is not spendable again: those parts are returned, for
    the caller to write off at once (``lapsed``), so the balance never gains them."""
    lapsed: list[Part] = []
    for part in parts:
        grant = find(account, part.grant)
        account.balance_credits += part.amount
        if part.grant is None:
            continue
        if grant is not None and grant.status == GrantStatus.ACTIVE:
            grant.remaining += part.amount
        else:
            lapsed.append(part)
    return lapsed


def lapse(account: AccountRow, part: Part) -> GrantStatus:
    """Write off a part given back to a closed grant: the balance drops by it again. The
    grant's status says whether it expired or was voided (a grant not loaded is taken as
    expired: only the frame's own reads load grants)."""
    account.balance_credits -= part.amount
    grant = find(account, part.grant)
    return grant.status if grant is not None else GrantStatus.EXPIRED


def due(account: AccountRow, now: datetime) -> list[GrantRow]:
    """The active grants whose ``expires_at`` has come."""
    at = as_utc(now)
    return [g for g in active(account) if g.expires_at is not None and g.expires_at <= at]


def expiry_key(grant_key: str) -> str:
    """The key of a grant's own ``expiry`` ledger row: one per grant."""
    return f"{RESERVED_KEY_PREFIX}expiry:{grant_key}"


def to_notify(account: AccountRow, now: datetime, notice: timedelta) -> list[GrantRow]:
    """Live grants whose ``expires_at`` is within ``notice`` and that were not announced yet."""
    at = as_utc(now)
    until = at + notice
    found = [
        g
        for g in _with_remaining(account)  # sorted after: few pass, and a charge asks each time
        if g.expires_at is not None
        and g.expiring_notified_at is None
        and at < g.expires_at <= until
    ]
    return sorted(found, key=draw_order)


def close(
    account: AccountRow, grant: GrantRow, status: GrantStatus, now: datetime
) -> tuple[int, int]:
    """Close a grant (expired or voided): what is left of it leaves the balance. What open
    holds keep from it is written off when it comes back (``give_back``). Answers what the
    grant had left and what left the balance: the same, unless an operator set the balance
    below what its grants hold. Then the balance goes to 0, never below, and the audit
    reports the account's shortfall; one such account never stops a movement or a sweep."""
    left = grant.remaining
    taken = min(left, max(account.balance_credits, 0))
    account.balance_credits -= taken
    grant.remaining = 0
    grant.status = status
    grant.closed_at = now
    return left, taken


def listed(grant: GrantRow) -> dict[str, Any]:
    """A live grant as ``state.credits.grants`` lists it."""
    return {
        "key": grant.key,
        "remaining": grant.remaining,
        "expires_at": grant.expires_at.isoformat() if grant.expires_at else None,
        "priority": grant.priority,
        "category": str(grant.category),
    }


def view(grant: GrantRow) -> dict[str, Any]:
    """A grant whole, as a grant's or void's answer gives it."""
    shown = listed(grant)
    return {"key": shown.pop("key"), "amount": grant.amount, **shown, "status": str(grant.status)}


def state(account: AccountRow) -> dict[str, Any]:
    """``state.credits``: the balance, the live grants in draw order, and what expires
    soonest."""
    grants = live(account)
    expiring = [g for g in grants if g.expires_at is not None]
    expiring_view = None
    if expiring:
        at = min(g.expires_at for g in expiring)  # type: ignore[type-var]
        amount = sum(g.remaining for g in expiring if g.expires_at == at)
        expiring_view = {"amount": amount, "at": at.isoformat()}  # type: ignore[union-attr]
    return {
        "balance": account.balance_credits,
        "grants": [listed(g) for g in grants],
        "expiring": expiring_view,
    }
