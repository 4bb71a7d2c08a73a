"""Account lifecycle tasks: top-ups, subscriptions, refunds, resets, tier sync and audit."""

from __future__ import annotations

from typing import Any

from billing import audit, frame, grants, jobs, refunds, resets, results, subscriptions, tiers
from billing.settings import get_settings
from billing.validation import AuditArgs, GrantArgs, RefundArgs, SubscriptionArgs, _Args
from tasks import names
from tasks.base import BillingTask
from worker.app import app
from worker.db import get_engine

SWEEP_TIME_LIMIT = get_settings().sweep_time_limit_seconds


class NoArgs(_Args):
    """Periodic jobs take no arguments."""


@app.task(bind=True, base=BillingTask, name=names.GRANT_CREDITS)
def grant_credits(
    self: BillingTask,
    *args: Any,
    user_id: Any = None,
    amount: Any = None,
    idempotency_key: Any = None,
    meta: Any = None,
    **unknown: Any,
) -> results.Result:
    kwargs = {"user_id": user_id, "amount": amount, "idempotency_key": idempotency_key}
    return self.execute(
        GrantArgs,
        args,
        {**kwargs, "meta": meta, **unknown},
        lambda store, parsed, settings: frame.run(store, grants.Grant(parsed), settings),
    )


@app.task(bind=True, base=BillingTask, name=names.ACTIVATE_SUBSCRIPTION)
def activate_subscription(
    self: BillingTask,
    *args: Any,
    user_id: Any = None,
    tier: Any = None,
    idempotency_key: Any = None,
    days: Any = None,
    **unknown: Any,
) -> results.Result:
    kwargs = {"user_id": user_id, "tier": tier, "idempotency_key": idempotency_key, "days": days}
    return self.execute(
        SubscriptionArgs,
        args,
        {**kwargs, **unknown},
        lambda store, parsed, settings: frame.run(
            store, subscriptions.Subscription(parsed), settings
        ),
    )


@app.task(bind=True, base=BillingTask, name=names.REFUND)
def refund(
    self: BillingTask,
    *args: Any,
    idempotency_key: Any = None,
    reason: Any = None,
    **unknown: Any,
) -> results.Result:
    kwargs = {"idempotency_key": idempotency_key, "reason": reason, **unknown}
    return self.execute(RefundArgs, args, kwargs, refunds.refund)


@app.task(bind=True, base=BillingTask, name=names.AUDIT, time_limit=SWEEP_TIME_LIMIT)
def audit_accounts(
    self: BillingTask, *args: Any, user_id: Any = None, **unknown: Any
) -> results.Result:
    def full_audit(session: Any, parsed: AuditArgs, _settings: Any) -> results.Result:
        outcome = audit.audit(session, parsed)
        if parsed.user_id is None:  # the mismatches the metric and the alert watch
            jobs.record(get_engine(), jobs.AUDIT, outcome)
        return outcome

    return self.execute_read(AuditArgs, args, {"user_id": user_id, **unknown}, full_audit)


@app.task(bind=True, base=BillingTask, name=names.RESET_DUE_LIMITS, time_limit=SWEEP_TIME_LIMIT)
def reset_due_limits(self: BillingTask, *args: Any, **unknown: Any) -> results.Result:
    return self.execute_batched(
        NoArgs,
        args,
        unknown,
        lambda factory, _parsed, settings: resets.reset_due_limits(factory, settings),
        job=jobs.RESET_DUE_LIMITS,
    )


@app.task(bind=True, base=BillingTask, name=names.SYNC_TIER_LIMITS, time_limit=SWEEP_TIME_LIMIT)
def sync_tier_limits(self: BillingTask, *args: Any, **unknown: Any) -> results.Result:
    return self.execute_batched(
        NoArgs,
        args,
        unknown,
        lambda factory, _parsed, settings: tiers.sync_tier_limits(factory, settings),
        job=jobs.SYNC_TIER_LIMITS,
    )
