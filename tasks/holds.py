"""Hold tasks: reserve before a job, capture or release after it, and the expiry sweep."""

from __future__ import annotations

from typing import Any

from billing import batch, expiry, holds, jobs, results
from billing.validation import CaptureArgs, ReleaseArgs, ReserveArgs, ReserveBatchArgs
from models import Operation
from tasks import names
from tasks.base import BillingTask
from tasks.charges import run_batch
from tasks.lifecycle import SWEEP_TIME_LIMIT, NoArgs
from worker import events
from worker.app import app


def _reserve(
    task: BillingTask, operation: Operation, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> results.Result:
    return task.execute(
        ReserveArgs,
        args,
        kwargs,
        lambda store, parsed, settings: results.shaped(
            holds.reserve(store, operation, parsed, settings), parsed.include_state
        ),
    )


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
    return _reserve(self, Operation.GENERATION, args, kwargs)


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
    return _reserve(self, Operation.ASSISTANT, args, kwargs)


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
    return run_batch(self, batch.RESERVES, ReserveBatchArgs, args, kwargs)


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


@app.task(bind=True, base=BillingTask, name=names.EXPIRE_HOLDS, time_limit=SWEEP_TIME_LIMIT)
def expire_holds(self: BillingTask, *args: Any, **unknown: Any) -> results.Result:
    def expire(factory: Any, _parsed: Any, settings: Any) -> dict[str, Any]:
        totals: dict[str, Any] = expiry.expire_holds(factory.kw["bind"], settings)
        if totals["events"]:
            totals["published"] = events.publish_all()["published"]
        return totals

    return self.execute_batched(NoArgs, args, unknown, expire, job=jobs.EXPIRE_HOLDS)
