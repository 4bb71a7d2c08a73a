from __future__ import annotations

from typing import Any

from billing.core import results
from billing.core.validation import LedgerArgs, UserArgs
from billing.movements import accounts
from billing.reads import ledger
from tasks import names
from tasks.base import BillingTask
from worker.app import app


@app.task(bind=True, base=BillingTask, name=names.GET_STATE)
def get_state(self: BillingTask, *args: Any, user_id: Any = None, **unknown: Any) -> results.Result:
    return self.execute(UserArgs, args, {"user_id": user_id, **unknown}, accounts.get_state)


@app.task(bind=True, base=BillingTask, name=names.GET_LEDGER)
def get_ledger(
    self: BillingTask,
    *args: Any,
    user_id: Any = None,
    limit: Any = None,
    cursor: Any = None,
    **unknown: Any,
) -> results.Result:
    return self.execute_read(
        LedgerArgs,
        args,
        {"user_id": user_id, "limit": limit, "cursor": cursor, **unknown},
        ledger.page,
    )
