from __future__ import annotations

import time
from typing import Any

from billing import batch, charges, frame, results
from billing.validation import ChargeArgs, ChargeBatchArgs, _Args
from models import Operation
from tasks import names
from tasks.base import BillingTask
from worker.app import app


def _charge(
    task: BillingTask, operation: Operation, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> results.Result:
    return task.execute(
        ChargeArgs,
        args,
        kwargs,
        lambda store, parsed, settings: results.shaped(
            frame.run(store, charges.Charge(operation, parsed), settings), parsed.include_state
        ),
    )


@app.task(bind=True, base=BillingTask, name=names.CHARGE_GENERATION)
def charge_generation(
    self: BillingTask,
    *args: Any,
    user_id: Any = None,
    idempotency_key: Any = None,
    cost: Any = None,
    meta: Any = None,
    include_state: Any = None,
    **unknown: Any,
) -> results.Result:
    kwargs = {"user_id": user_id, "idempotency_key": idempotency_key, "cost": cost, "meta": meta}
    kwargs["include_state"] = include_state
    return _charge(self, Operation.GENERATION, args, {**kwargs, **unknown})


@app.task(bind=True, base=BillingTask, name=names.CHARGE_ASSISTANT)
def charge_assistant(
    self: BillingTask,
    *args: Any,
    user_id: Any = None,
    idempotency_key: Any = None,
    cost: Any = None,
    meta: Any = None,
    include_state: Any = None,
    **unknown: Any,
) -> results.Result:
    kwargs = {"user_id": user_id, "idempotency_key": idempotency_key, "cost": cost, "meta": meta}
    kwargs["include_state"] = include_state
    return _charge(self, Operation.ASSISTANT, args, {**kwargs, **unknown})


def run_batch(
    task: BillingTask,
    kind: tuple[Any, Any],
    parser: type[_Args],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> results.Result:
    """Check the batch as a whole (a list of 1 to 100 items), then answer every item, all
    before this run's time limit ends (``billing.batch``)."""
    field = task.batch_items
    assert field is not None
    deadline = batch.deadline(time.monotonic(), time_limit(task))
    return task.execute(
        parser,
        args,
        kwargs,
        lambda store, parsed, settings: results.success(
            results=batch.run(
                store, getattr(parsed, field), kind, settings, parsed.include_state, deadline
            )
        ),
    )


def time_limit(task: BillingTask) -> float | None:
    """The shortest time limit of this run, in seconds: the task's own (``task_time_limit``),
    or a shorter hard or soft limit its message asks for. A message may shorten the run, never
    lengthen it, and a limit that is not a positive number is not one."""
    from_message = getattr(task.request, "timelimit", None)
    limits = [task.time_limit, task.soft_time_limit]
    if isinstance(from_message, list | tuple):
        limits += from_message
    positive = [
        float(limit)
        for limit in limits
        if isinstance(limit, int | float) and not isinstance(limit, bool) and limit > 0
    ]
    return min(positive, default=None)


@app.task(bind=True, base=BillingTask, name=names.CHARGE_BATCH, batch_items="charges")
def charge_batch(
    self: BillingTask,
    *args: Any,
    charges: Any = None,
    include_state: Any = None,
    **unknown: Any,
) -> results.Result:
    """``charges``: up to 100 ``{user_id, idempotency_key, operation, cost?, meta?}``."""
    kwargs = {"charges": charges, "include_state": include_state, **unknown}
    return run_batch(self, batch.CHARGES, ChargeBatchArgs, args, kwargs)
