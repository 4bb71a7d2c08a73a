"""Starting, renewing and changing subscriptions."""

from __future__ import annotations

from datetime import datetime, timedelta

from billing.core import results, rules
from billing.core.records import AccountRow, Entry
from billing.core.settings import Settings
from billing.core.validation import SubscriptionArgs
from billing.movements import frame
from billing.movements.frame import Decision, Movement, Refused
from billing.movements.store import Store
from models import EntryType, LedgerSource

PREFIX = "subscription:"


class Subscription(Movement):
    """Start, renew or change a subscription.

    - none or expired: a new subscription; a fresh period starts now with nothing used;
    - active, same tier: a renewal; the end moves out by ``days``, the period is untouched;
    - active, other tier: a tier change; the new limit applies at once, what was used this
      period stays used, and the subscription runs at least ``days`` from now.

    The key's fingerprint is the tier as the producer named it, so a repeat answers its first
    outcome even after the tier was renamed or removed from BILLING_TIERS.
    """

    remembers_not_found = False  # paid for: it goes through once the account is opened

    def __init__(self, args: SubscriptionArgs) -> None:
        self.args = args
        self.key = args.idempotency_key
        self.user_id = args.user_id
        self.operation = PREFIX + args.tier
        self.requested_cost = args.days

    def decide(self, account: AccountRow, now: datetime, settings: Settings) -> Decision:
        tier = settings.canonical_tier(self.args.tier)
        if tier not in settings.tiers:
            known = ", ".join(sorted(settings.tiers))
            unknown = f"unknown tier {self.args.tier!r} (known: {known})"
            raise Refused(results.invalid("tier", unknown))
        period = timedelta(days=self.args.days)
        if not rules.subscription_active(account, now):
            change = "new"
            account.subscription_end = now + period
            account.subscription_ops_used = 0
            account.subscription_ops_reset_at = now
        elif account.subscription_type == tier:
            change = "renewal"
            account.subscription_end = rules.as_utc(account.subscription_end) + period
        else:
            change = "tier_change"
            account.subscription_end = max(rules.as_utc(account.subscription_end), now + period)
        account.subscription_type = tier
        account.subscription_ops_limit = settings.tiers[tier]
        outcome = results.success(
            change=change,
            tier=tier,
            idempotency_key=self.key,
            replayed=False,
            state=rules.account_state(account, now, settings),
        )
        entry = Entry(
            EntryType.SUBSCRIPTION,
            LedgerSource.SUBSCRIPTION,
            account.subscription_ops_limit,
            meta={"tier": tier, "days": self.args.days, "change": change},
        )
        return Decision(outcome, entry, self.args.days)


def activate(store: Store, args: SubscriptionArgs, settings: Settings) -> results.Result:
    """Start, renew or change a subscription through the frame."""
    return frame.run(store, Subscription(args), settings)
