"""Starting, renewing and changing subscriptions."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from billing import idempotency, ledger, results, rules
from billing.settings import Settings
from billing.validation import SubscriptionArgs
from models import EntryType, LedgerSource, User


def activate_subscription(
    session: Session, args: SubscriptionArgs, settings: Settings
) -> results.Result:
    """Start, renew or change a subscription.

    - none or expired: a new subscription; a fresh period starts now with nothing used;
    - active, same tier: a renewal; the end moves out by ``days``, the period is untouched;
    - active, other tier: a tier change; the new limit applies at once, what was used this
      period stays used, and the subscription runs at least ``days`` from now.
    """
    tier = settings.canonical_tier(args.tier)
    if tier not in settings.tiers:
        known = ", ".join(sorted(settings.tiers))
        return results.invalid("tier", f"unknown tier {args.tier!r} (known: {known})")
    key = args.idempotency_key
    period = timedelta(days=args.days)

    def activate(user: User, now: datetime) -> tuple[results.Result, int | None]:
        if not rules.subscription_active(user, now):
            change = "new"
            user.subscription_end = now + period
            user.subscription_ops_used = 0
            user.subscription_ops_reset_at = now
        elif user.subscription_type == tier:
            change = "renewal"
            user.subscription_end = rules.as_utc(user.subscription_end) + period
        else:
            change = "tier_change"
            user.subscription_end = max(rules.as_utc(user.subscription_end), now + period)
        user.subscription_type = tier
        user.subscription_ops_limit = settings.tiers[tier]
        session.flush()
        ledger_id = ledger.record(
            session,
            user,
            at=now,
            key=key,
            entry_type=EntryType.SUBSCRIPTION,
            source=LedgerSource.SUBSCRIPTION,
            amount=user.subscription_ops_limit,
            meta={"tier": tier, "days": args.days, "change": change},
        )
        return results.success(
            change=change,
            tier=tier,
            ledger_id=ledger_id,
            idempotency_key=key,
            replayed=False,
            state=rules.account_state(user, now, settings),
        ), ledger_id

    return idempotency.run_keyed(
        session,
        key=key,
        user_id=args.user_id,
        operation=f"subscription:{tier}",
        cost=args.days,
        settings=settings,
        body=activate,
    )
