"""Balance events: what the product hears about an account, once per crossing.

The frame records an account's events in the transaction of the movement that caused them
(the outbox, ``billing_events``), so a movement that rolls back has none and one that commits
cannot lose them; a replayed key runs no rules and records nothing. The relay
(``billing.jobs.outbox``) publishes them after the commit.

A crossing compares the account just before the movement's rules ran (after resets and
expiries brought it up to date) with the account after them:

- ``credits.low``: the balance fell from at least the threshold to below it;
- ``credits.depleted``: the balance fell from above 0 to 0;
- ``freemium.exhausted`` / ``subscription.exhausted``: the period's last free action or
  subscription operation was taken (at most once per period);
- ``hold.expired``: a hold expired (from any movement on the account, or the sweep);
- ``credits.expired``: a grant expired with something left (its amount);
- ``credits.expiring``: a grant with something left comes within
  ``BILLING_CREDIT_EXPIRY_NOTICE_DAYS`` of its ``expires_at`` (once per grant).

``subscription.expiring`` and ``subscription.expired`` come from the clock, not a movement:
the subscription sweep (``billing.jobs.outbox.announce_subscriptions``) records them.

Every event's id is derived from what makes it happen once: the movement's or hold's key, or
the period or subscription end it belongs to. The id is unique in the table, so a second
recording of the same crossing (another release and reserve of a period's last free action,
a sweep run twice) inserts nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from billing.core import credits, rules
from billing.core.records import AccountRow, Entry, Event, GrantRow
from billing.core.settings import Settings
from models import EntryType, EventType

# Fixed for ever: event ids are derived from it.
NAMESPACE = uuid.UUID("4f1f1d52-7d0e-4d8e-9a55-2a6f1e0b7c31")


def stamp(value: datetime) -> str:
    return rules.as_utc(value).isoformat(timespec="microseconds")


def event_id(event_type: EventType, user_id: int, subject: str | datetime) -> uuid.UUID:
    """The id of the one event of ``event_type`` for ``subject`` (a key, or a period start or
    subscription end) on the account."""
    if isinstance(subject, datetime):
        subject = stamp(subject)
    return uuid.uuid5(NAMESPACE, f"{event_type}|{user_id}|{subject}")


class Levels(NamedTuple):
    """What a crossing compares: taken before the movement's rules run, and after."""

    balance: int
    freemium_used: int
    ops_exhausted: bool


def levels(account: AccountRow, now: datetime) -> Levels:
    ops_exhausted = (
        rules.subscription_active(account, now)
        and account.subscription_ops_limit > 0
        and account.subscription_ops_used >= account.subscription_ops_limit
    )
    return Levels(account.balance_credits, account.freemium_actions_used, ops_exhausted)


def detect(
    account: AccountRow,
    now: datetime,
    settings: Settings,
    *,
    key: str | None = None,
    before: Levels | None = None,
    entries: Iterable[Entry] = (),
    notices: Iterable[GrantRow] = (),
) -> list[Event]:
    """The events of one movement on the locked account, in the order they happened: the holds
    bringing it up to date expired (``entries``), then what its rules crossed since
    ``before``. Nothing when events are off."""
    if not settings.events_enabled:
        return []
    found: list[tuple[EventType, str | datetime, dict[str, Any]]] = []
    for entry in entries:
        if entry.entry_type == EntryType.EXPIRE and entry.hold_key is not None:
            hold = {
                "hold_key": entry.hold_key,
                "source": str(entry.source),
                "returned": entry.amount,
                "idempotency_key": entry.key,
            }
            found.append((EventType.HOLD_EXPIRED, entry.hold_key, hold))
        grant = entry.grant_key
        if (
            entry.entry_type == EntryType.EXPIRY
            and grant is not None
            and entry.key == credits.expiry_key(grant)
            and entry.amount > 0
        ):
            expired = {"grant": grant, "amount": entry.amount, "idempotency_key": entry.key}
            found.append((EventType.CREDITS_EXPIRED, f"grant:{grant}", expired))
    for notified in notices:
        assert notified.expires_at is not None
        expiring = {
            "grant": notified.key,
            "remaining": notified.remaining,
            "expires_at": stamp(notified.expires_at),
        }
        found.append((EventType.CREDITS_EXPIRING, f"grant:{notified.key}", expiring))
    if before is not None and key is not None:
        found.extend(_crossings(account, now, settings, key, before))
    if not found:
        return []
    period = timedelta(days=settings.reset_period_days)
    state = rules.account_state(account, now, settings)
    recorded = []
    for event_type, subject, own in found:
        subject_at = subject if isinstance(subject, datetime) else None
        recorded.append(
            Event(
                event_id(event_type, account.id, subject),
                event_type,
                {**own, "state": state},
                subject_at,
                subject_at + period if subject_at is not None else None,
            )
        )
    return recorded


def _crossings(
    account: AccountRow, now: datetime, settings: Settings, key: str, before: Levels
) -> list[tuple[EventType, str | datetime, dict[str, Any]]]:
    after = levels(account, now)
    movement = {"idempotency_key": key}
    found: list[tuple[EventType, str | datetime, dict[str, Any]]] = []
    threshold = settings.low_credits
    if before.balance >= threshold > after.balance:
        low = {**movement, "threshold": threshold, "balance": after.balance}
        found.append((EventType.CREDITS_LOW, key, low))
    if before.balance > 0 == after.balance:
        found.append((EventType.CREDITS_DEPLETED, key, {**movement, "balance": 0}))
    limit = settings.freemium_limit
    if limit > 0 and before.freemium_used < limit <= after.freemium_used:
        period_start = rules.as_utc(account.freemium_reset_at)
        exhausted = {**movement, "period_start": stamp(period_start)}
        found.append((EventType.FREEMIUM_EXHAUSTED, period_start, exhausted))
    if after.ops_exhausted and not before.ops_exhausted:
        period_start = rules.as_utc(account.subscription_ops_reset_at)
        exhausted = {**movement, "period_start": stamp(period_start)}
        found.append((EventType.SUBSCRIPTION_EXHAUSTED, period_start, exhausted))
    return found


def subscription_notice(
    account: AccountRow, now: datetime, settings: Settings, event_type: EventType
) -> Event:
    """``subscription.expiring`` or ``subscription.expired`` for the account's current end."""
    assert account.subscription_end is not None
    end = rules.as_utc(account.subscription_end)
    data = {
        "tier": account.subscription_type,
        "ends_at": stamp(end),
        "state": rules.account_state(account, now, settings),
    }
    return Event(event_id(event_type, account.id, end), event_type, data, end)
