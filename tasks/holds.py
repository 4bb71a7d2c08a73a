"""Hold tasks: reserve before a job, capture or release after it, and the expiry sweep."""

from __future__ import annotations

from typing import Any

from billing.core import results
from billing.core.settings import Settings
from billing.core.validation import CaptureArgs, ReleaseArgs, ReserveArgs, ReserveBatchArgs
from billing.jobs import expiry, runs
from billing.movements import batch, holds
from tasks import names
from tasks.base import SWEEP_TIME_LIMIT, BillingTask
from worker import events
from worker.app import app
from worker.db import get_engine


@app.task(bind=True, base=BillingTask, name=names.RESERVE_GENERATION)
def reserve_generation(
    self: BillingTask,
    *args: Any,
    user_id: Any = None,
    idempotency_key: Any = None,
    cost: Any = None,
    ttl_seconds: Any = None,
    meta: Any = None,
    include_state: Any = None,
    **unknown: Any,
) -> results.Result:
    kwargs = {"user_id": user_id, "idempotency_key": idempotency_key, "cost": cost}
    kwargs.update(ttl_seconds=ttl_seconds, meta=meta, include_state=include_state, **unknown)
    return self.execute(ReserveArgs, args, kwargs, holds.reserve_generation)


@app.task(bind=True, base=BillingTask, name=names.RESERVE_ASSISTANT)
def reserve_assistant(
    self: BillingTask,
    *args: Any,
    user_id: Any = None,
    idempotency_key: Any = None,
    cost: Any = None,
    ttl_seconds: Any = None,
    meta: Any = None,
    include_state: Any = None,
    **unknown: Any,
) -> results.Result:
    kwargs = {"user_id": user_id, "idempotency_key": idempotency_key, "cost": cost}
    kwargs.update(ttl_seconds=ttl_seconds, meta=meta, include_state=include_state, **unknown)
    return self.execute(ReserveArgs, args, kwargs, holds.reserve_assistant)


@app.task(bind=True, base=BillingTask, name=names.RESERVE_BATCH, batch_items="reserves")
def reserve_batch(
    self: BillingTask,
    *args: Any,
    reserves: Any = None,
    include_state: Any = None,
    **unknown: Any,
) -> results.Result:
    """``reserves``: up to 100 ``{user_id, idempotency_key, operation, cost?, ttl_seconds?,
    meta?}``."""
    kwargs = {"reserves": reserves, "include_state": include_state, **unknown}
    return self.execute_batch(ReserveBatchArgs, args, kwargs, batch.reserve_batch)


@app.task(bind=True, base=BillingTask, name=names.CAPTURE)
def capture(
    self: BillingTask,
    *args: Any,
    idempotency_key: Any = None,
    amount: Any = None,
    **unknown: Any,
) -> results.Result:
    kwargs = {"idempotency_key": idempotency_key, "amount": amount, **unknown}
    return self.execute(CaptureArgs, args, kwargs, holds.capture)


@app.task(bind=True, base=BillingTask, name=names.RELEASE)
def release(
    self: BillingTask,
    *args: Any,
    idempotency_key: Any = None,
    reason: Any = None,
    **unknown: Any,
) -> results.Result:
    kwargs = {"idempotency_key": idempotency_key, "reason": reason, **unknown}
    return self.execute(ReleaseArgs, args, kwargs, holds.release)


def expire_due_holds(settings: Settings) -> dict[str, Any]:
    """Expire every hold whose time is up, then publish the events that recorded."""
    totals: dict[str, Any] = expiry.expire_holds(get_engine(), settings)
    if totals["events"]:
        totals["published"] = events.publish_all()["published"]
    return totals


@app.task(bind=True, base=BillingTask, name=names.EXPIRE_HOLDS, time_limit=SWEEP_TIME_LIMIT)
def expire_holds(self: BillingTask, *args: Any, **unknown: Any) -> results.Result:
    return self.execute_sweep(args, unknown, expire_due_holds, runs.EXPIRE_HOLDS)


def expire_due_grants(settings: Settings) -> dict[str, Any]:
    """Expire every grant whose time has come and announce the ones about to, then publish
    the events that recorded."""
    totals: dict[str, Any] = expiry.expire_grants(get_engine(), settings)
    if totals["events"]:
        totals["published"] = events.publish_all()["published"]
    return totals


@app.task(bind=True, base=BillingTask, name=names.EXPIRE_GRANTS, time_limit=SWEEP_TIME_LIMIT)
def expire_grants(self: BillingTask, *args: Any, **unknown: Any) -> results.Result:
    return self.execute_sweep(args, unknown, expire_due_grants, runs.EXPIRE_GRANTS)
