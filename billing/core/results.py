"""The result contract: every task answers a JSON object with ``ok`` and ``code``.

Business rejections are ordinary results (the task succeeds), so a producer that does not
import our code reads them from the result backend like any other answer.
"""

from __future__ import annotations

from typing import Any

OK = 200
BAD_REQUEST = 400
PAYMENT_REQUIRED = 402
FORBIDDEN = 403
NOT_FOUND = 404
CONFLICT = 409
UNPROCESSABLE = 422
SERVICE_UNAVAILABLE = 503

BILLING_DISABLED = "billing_disabled"
LEDGER_DISABLED = "ledger_disabled"
NOT_ENOUGH_CREDITS = "not_enough_credits"
USER_NOT_FOUND = "user_not_found"
IDEMPOTENCY_CONFLICT = "idempotency_conflict"
INVALID_REQUEST = "invalid_request"
FORBIDDEN_QUEUE = "forbidden_queue"
# A batch item that was not done (billing.movements.batch): nothing written, nothing remembered.
NOT_ATTEMPTED = "not_attempted"
LOCK_TIMEOUT = "lock_timeout"

Result = dict[str, Any]


def success(**fields: Any) -> Result:
    return {"ok": True, "code": OK, **fields}


def failure(code: int, error: str, message: str, **fields: Any) -> Result:
    return {"ok": False, "code": code, "error": error, "message": message, **fields}


def invalid(field: str, message: str) -> Result:
    return failure(UNPROCESSABLE, INVALID_REQUEST, f"{field}: {message}", field=field)


def billing_disabled() -> Result:
    return failure(BAD_REQUEST, BILLING_DISABLED, "billing is disabled (BILLING_V4_ENABLED=false)")


def ledger_disabled() -> Result:
    return failure(
        BAD_REQUEST, LEDGER_DISABLED, "the ledger is disabled (BILLING_LEDGER_ENABLED=false)"
    )


def user_not_found(user_id: int) -> Result:
    return failure(NOT_FOUND, USER_NOT_FOUND, f"user {user_id} does not exist")


def forbidden_queue(task: str, queue: str | None, admin_queue: str) -> Result:
    return failure(
        FORBIDDEN,
        FORBIDDEN_QUEUE,
        f"{task} is accepted only from the admin queue {admin_queue!r}, not {queue!r};"
        " nothing was written",
    )


def not_done(error: str, message: str, key: Any) -> Result:
    """A batch item the batch could not do: 503 with ``retry: true``. Nothing was written or
    remembered for it, so the producer sends it again under the same key."""
    return failure(
        SERVICE_UNAVAILABLE,
        error,
        f"{message}; nothing was written: send it again with the same key",
        idempotency_key=key,
        retry=True,
    )


def shaped(result: Result, include_state: bool) -> Result:
    """The answer as the producer asked for it: without ``state`` when it said so."""
    if include_state or "state" not in result:
        return result
    return {k: v for k, v in result.items() if k != "state"}
