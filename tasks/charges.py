from __future__ import annotations

from typing import Any

from billing import charges, charges_pg, results
from billing.validation import ChargeArgs
from models import Operation
from tasks import names
from tasks.base import BillingTask
from worker.app import app


def _pg(operation: Operation):
    def handler(conn, parsed: ChargeArgs, settings) -> results.Result:
        if not settings.v4_enabled:
            return results.billing_disabled()
        cost = charges.effective_cost(operation, parsed, settings)
        return charges_pg.charge(conn, operation, parsed, cost, settings)

    return handler


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
    return self.execute(
        ChargeArgs,
        args,
        {**kwargs, **unknown},
        lambda session, parsed, settings: charges.charge(
            session, Operation.GENERATION, parsed, settings
        ),
        _pg(Operation.GENERATION),
    )


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
    return self.execute(
        ChargeArgs,
        args,
        {**kwargs, **unknown},
        lambda session, parsed, settings: charges.charge(
            session, Operation.ASSISTANT, parsed, settings
        ),
        _pg(Operation.ASSISTANT),
    )
