"""The Billing v4 rules as pure functions over an account row: no I/O, no clock of their own.

The caller passes ``now`` from the database (one clock for every worker) and applies what
these functions decide inside its own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from billing.core import credits
from billing.core.clock import as_utc
from billing.core.records import AccountRow, HoldRow, Restored
from billing.core.settings import Settings
from models import HoldStatus, LedgerSource, Operation, UserRole

# users.balance_credits is a PostgreSQL integer: no movement may take a balance past it.
MAX_BALANCE = 2**31 - 1


def next_period_start(reset_at: datetime, now: datetime, period: timedelta) -> datetime | None:
    """Where a period anchored at ``reset_at`` starts now, or None if it has not elapsed.

    It moves by whole periods so the cycle keeps its anchor however late the reset runs.
    """
    elapsed = as_utc(now) - as_utc(reset_at)
    if elapsed < period:
        return None
    return as_utc(reset_at) + (elapsed // period) * period


# How far a period start written by a transaction we waited for may lie ahead of our clock.
MAX_LOCK_WAIT = timedelta(minutes=5)


def effective_now(user: AccountRow, now: datetime) -> datetime:
    """The transaction's clock, moved up to any period start committed while it waited.

    ``now()`` is taken when the transaction starts, before the row lock: a beat reset or a new
    subscription committed during the wait may have started a period after it. A movement
    dated before the start of the period it counts in would fall outside that period for the
    audit and for refunds, so it is dated no earlier than the current period's start.
    """
    now = as_utc(now)
    starts = (as_utc(user.freemium_reset_at), as_utc(user.subscription_ops_reset_at))
    return max(now, *(s for s in starts if s <= now + MAX_LOCK_WAIT))


def subscription_active(user: AccountRow, now: datetime) -> bool:
    return (
        user.subscription_type is not None
        and user.subscription_end is not None
        and as_utc(user.subscription_end) > as_utc(now)
    )


def refresh_changes(user: AccountRow, now: datetime, settings: Settings) -> dict[str, Any]:
    """Column updates that bring an account up to date: lazy resets and tier normalisation."""
    changes: dict[str, Any] = {}
    period = timedelta(days=settings.reset_period_days)

    freemium_start = next_period_start(user.freemium_reset_at, now, period)
    if freemium_start is not None:
        changes["freemium_reset_at"] = freemium_start
        if user.freemium_actions_used:
            changes["freemium_actions_used"] = 0

    ops_start = next_period_start(user.subscription_ops_reset_at, now, period)
    if ops_start is not None:
        changes["subscription_ops_reset_at"] = ops_start
        if user.subscription_ops_used:
            changes["subscription_ops_used"] = 0

    tier = settings.canonical_tier(user.subscription_type)
    if tier != user.subscription_type:
        changes["subscription_type"] = tier
    if tier is not None and tier in settings.tiers:
        limit = settings.tiers[tier]
        if user.subscription_ops_limit != limit:
            changes["subscription_ops_limit"] = limit
    return changes


def apply(user: AccountRow, changes: dict[str, Any]) -> None:
    for column, value in changes.items():
        setattr(user, column, value)


# (allowance, its *_used column, its *_reset_at column)
ALLOWANCES = (
    (LedgerSource.FREEMIUM, "freemium_actions_used", "freemium_reset_at"),
    (LedgerSource.SUBSCRIPTION, "subscription_ops_used", "subscription_ops_reset_at"),
)
ALLOWANCE_COLUMNS = {source: (used, reset_at) for source, used, reset_at in ALLOWANCES}


def refresh(account: AccountRow, now: datetime, settings: Settings) -> list[Restored]:
    """Bring a locked account up to date in memory; the resets that restored something."""
    used_before = {source: getattr(account, used) for source, used, _ in ALLOWANCES}
    changes = refresh_changes(account, now, settings)
    apply(account, changes)
    return [
        Restored(source, changes[reset_at], used_before[source])
        for source, _used, reset_at in ALLOWANCES
        if reset_at in changes and used_before[source] > 0
    ]


@dataclass(frozen=True)
class Draw:
    """What a charge takes: from which source, how much in that source's unit."""

    source: LedgerSource
    amount: int


def choose_draw(
    user: AccountRow, operation: Operation, cost: int, now: datetime, settings: Settings
) -> Draw | None:
    """The source a charge draws from, in the product's strict order; None means 402."""
    if user.role == UserRole.ADMIN:
        return Draw(LedgerSource.ADMIN, 0)
    if operation == Operation.GENERATION:
        if (
            subscription_active(user, now)
            and user.subscription_ops_used < user.subscription_ops_limit
        ):
            return Draw(LedgerSource.SUBSCRIPTION, 1)
        if user.freemium_actions_used < settings.freemium_limit:
            return Draw(LedgerSource.FREEMIUM, 1)
    if user.balance_credits >= cost:
        return Draw(LedgerSource.CREDITS, cost)
    return None


def take(user: AccountRow, draw: Draw) -> None:
    if draw.source == LedgerSource.SUBSCRIPTION:
        user.subscription_ops_used += draw.amount
    elif draw.source == LedgerSource.FREEMIUM:
        user.freemium_actions_used += draw.amount
    elif draw.source == LedgerSource.CREDITS:
        user.balance_credits -= draw.amount


def returnable(user: AccountRow, source: LedgerSource, amount: int, taken_at: datetime) -> int:
    """What giving back ``amount`` taken from ``source`` at ``taken_at`` returns now. Credits
    always go back; an allowance only while the period it was taken in is current (a reset
    has given it back already); an admin's take is nothing."""
    if source == LedgerSource.CREDITS:
        return amount
    if source == LedgerSource.ADMIN:
        return 0
    used_column, reset_column = ALLOWANCE_COLUMNS[source]
    if as_utc(taken_at) < as_utc(getattr(user, reset_column)):
        return 0
    return min(amount, getattr(user, used_column))


def give_back(user: AccountRow, source: LedgerSource, amount: int) -> None:
    """The reverse of ``take``, for an amount ``returnable`` allowed."""
    if source == LedgerSource.CREDITS:
        user.balance_credits += amount
    elif source in ALLOWANCE_COLUMNS:
        used_column, _ = ALLOWANCE_COLUMNS[source]
        setattr(user, used_column, getattr(user, used_column) - amount)


def open_holds(user: AccountRow) -> list[HoldRow]:
    return [hold for hold in user.holds if hold.status == HoldStatus.HELD]


def due_holds(user: AccountRow, now: datetime) -> list[HoldRow]:
    """The open holds whose time is up at ``now``."""
    return [hold for hold in open_holds(user) if as_utc(hold.expires_at) <= as_utc(now)]


def held(user: AccountRow) -> dict[str, int]:
    """What the open holds keep from each source: what releasing them now would return."""
    kept = dict.fromkeys(LedgerSource, 0)
    for hold in open_holds(user):
        kept[hold.source] += returnable(user, hold.source, hold.amount, hold.created_at)
    return {
        "subscription_ops": kept[LedgerSource.SUBSCRIPTION],
        "freemium_actions": kept[LedgerSource.FREEMIUM],
        "credits": kept[LedgerSource.CREDITS],
    }


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value is not None else None


def account_state(user: AccountRow, now: datetime, settings: Settings) -> dict[str, Any]:
    period = timedelta(days=settings.reset_period_days)
    active = subscription_active(user, now)
    ops_remaining = (
        max(user.subscription_ops_limit - user.subscription_ops_used, 0) if active else 0
    )
    freemium_limit = settings.freemium_limit
    return {
        "user_id": user.id,
        "role": str(user.role),
        "subscription": {
            "type": user.subscription_type,
            "active": active,
            "ends_at": _iso(user.subscription_end),
            "ops_limit": user.subscription_ops_limit,
            "ops_used": user.subscription_ops_used,
            "ops_remaining": ops_remaining,
            "resets_at": _iso(as_utc(user.subscription_ops_reset_at) + period),
        },
        "freemium": {
            "limit": freemium_limit,
            "used": user.freemium_actions_used,
            "remaining": max(freemium_limit - user.freemium_actions_used, 0),
            "resets_at": _iso(as_utc(user.freemium_reset_at) + period),
        },
        "credits": credits.state(user),
        # Taken by open holds: already out of the remaining figures above.
        "held": held(user),
    }
