"""Account lifecycle tasks: top-ups, subscriptions, refunds, resets, tier sync and audit."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from billing.core import results
from billing.core.settings import Settings
from billing.core.validation import (
    AuditArgs,
    GrantArgs,
    OpenAccountArgs,
    RefundArgs,
    SubscriptionArgs,
    VoidGrantArgs,
)
from billing.jobs import resets, runs, tiers
from billing.movements import accounts, grants, refunds, subscriptions
from billing.reads import audit
from tasks import names
from tasks.base import SWEEP_TIME_LIMIT, BillingTask
from worker.app import app
from worker.db import get_engine, get_session_factory


class OpenAccountTask(BillingTask):
    def privileged(self, kwargs: dict[str, Any]) -> bool:
        # An admin passes free: opening one is the back office's. Anything but "user" (or
        # none) counts as asking for more, so a bad role on the public queue is a 403 too.
        return kwargs.get("role") not in (None, "user")


@app.task(bind=True, base=OpenAccountTask, name=names.OPEN_ACCOUNT)
def open_account(
    self: BillingTask, *args: Any, user_id: Any = None, role: Any = None, **unknown: Any
) -> results.Result:
    kwargs = {"user_id": user_id, "role": role, **unknown}
    return self.execute(OpenAccountArgs, args, kwargs, accounts.open_account)


@app.task(bind=True, base=BillingTask, name=names.GRANT_CREDITS)
def grant_credits(
    self: BillingTask,
    *args: Any,
    user_id: Any = None,
    amount: Any = None,
    idempotency_key: Any = None,
    meta: Any = None,
    expires_at: Any = None,
    priority: Any = None,
    category: Any = None,
    **unknown: Any,
) -> results.Result:
    kwargs = {"user_id": user_id, "amount": amount, "idempotency_key": idempotency_key}
    kwargs.update(meta=meta, expires_at=expires_at, priority=priority, category=category)
    return self.execute(GrantArgs, args, {**kwargs, **unknown}, grants.grant)


@app.task(bind=True, base=BillingTask, name=names.VOID_GRANT)
def void_grant(
    self: BillingTask,
    *args: Any,
    idempotency_key: Any = None,
    reason: Any = None,
    **unknown: Any,
) -> results.Result:
    kwargs = {"idempotency_key": idempotency_key, "reason": reason, **unknown}
    return self.execute(VoidGrantArgs, args, kwargs, grants.void)


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
        subscriptions.activate,
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


def audit_and_record(session: Session, args: AuditArgs, _settings: Settings) -> results.Result:
    """The audit; a full one records its mismatches, which the metric and the alert watch."""
    outcome = audit.audit(session, args)
    if args.user_id is None:
        runs.record(get_engine(), runs.AUDIT, outcome)
    return outcome


def reset_due_allowances(settings: Settings) -> dict[str, Any]:
    return resets.reset_due_limits(get_session_factory(), settings)


def sync_tiers(settings: Settings) -> dict[str, Any]:
    return tiers.sync_tier_limits(get_session_factory(), settings)


@app.task(bind=True, base=BillingTask, name=names.AUDIT, time_limit=SWEEP_TIME_LIMIT)
def audit_accounts(
    self: BillingTask, *args: Any, user_id: Any = None, **unknown: Any
) -> results.Result:
    return self.execute_read(AuditArgs, args, {"user_id": user_id, **unknown}, audit_and_record)


@app.task(bind=True, base=BillingTask, name=names.RESET_DUE_LIMITS, time_limit=SWEEP_TIME_LIMIT)
def reset_due_limits(self: BillingTask, *args: Any, **unknown: Any) -> results.Result:
    return self.execute_sweep(args, unknown, reset_due_allowances, runs.RESET_DUE_LIMITS)


@app.task(bind=True, base=BillingTask, name=names.SYNC_TIER_LIMITS, time_limit=SWEEP_TIME_LIMIT)
def sync_tier_limits(self: BillingTask, *args: Any, **unknown: Any) -> results.Result:
    return self.execute_sweep(args, unknown, sync_tiers, runs.SYNC_TIER_LIMITS)
