"""Charge tasks: a generation or an assistant call, one by one or in batches."""

from __future__ import annotations

from typing import Any

from billing.core import results
from billing.core.validation import ChargeArgs, ChargeBatchArgs
from billing.movements import batch, charges
from tasks import names
from tasks.base import BillingTask
from worker.app import app


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
    return self.execute(ChargeArgs, args, {**kwargs, **unknown}, charges.generation)


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
    return self.execute(ChargeArgs, args, {**kwargs, **unknown}, charges.assistant)


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
    return self.execute_batch(ChargeBatchArgs, args, kwargs, batch.charge_batch)
