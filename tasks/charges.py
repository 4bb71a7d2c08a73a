from __future__ import annotations

from typing import Any

from billing import charges, frame, results
from billing.validation import ChargeArgs
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
        lambda store, parsed, settings: frame.run(
            store, charges.Charge(operation, parsed), settings
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
    **unknown: Any,
) -> results.Result:
    kwargs = {"user_id": user_id, "idempotency_key": idempotency_key, "cost": cost, "meta": meta}
    return _charge(self, Operation.GENERATION, args, {**kwargs, **unknown})


@app.task(bind=True, base=BillingTask, name=names.CHARGE_ASSISTANT)
def charge_assistant(
    self: BillingTask,
    *args: Any,
    user_id: Any = None,
    idempotency_key: Any = None,
    cost: Any = None,
    meta: Any = None,
    **unknown: Any,
) -> results.Result:
    kwargs = {"user_id": user_id, "idempotency_key": idempotency_key, "cost": cost, "meta": meta}
    return _charge(self, Operation.ASSISTANT, args, {**kwargs, **unknown})
