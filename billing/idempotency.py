"""The first outcome of an idempotency key is final; this module keeps and replays it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from billing import accounts, results
from billing.dml import KeyRaced, insert_unless_exists
from billing.settings import Settings
from models import BillingRequest, User


class Refused(Exception):
    """A keyed request refused before anything was written; the transaction rolls back and
    the key stays free, as for any 422."""

    def __init__(self, result: results.Result) -> None:
        super().__init__(result.get("message"))
        self.result = result


def conflict(key: str, user_id: int, operation: str, cost: int | None) -> results.Result:
    return results.failure(
        results.CONFLICT,
        results.IDEMPOTENCY_CONFLICT,
        "this idempotency key was already used for a different request "
        f"(user {user_id}, {operation}, cost {cost})",
        idempotency_key=key,
        replayed=False,
    )


def replay(
    stored: BillingRequest, user_id: int, operation: str, cost: int | None
) -> results.Result:
    if (stored.user_id, stored.operation, stored.cost) != (user_id, operation, cost):
        return conflict(stored.idempotency_key, stored.user_id, stored.operation, stored.cost)
    return {**stored.response, "replayed": True}


def remember(
    session: Session,
    *,
    key: str,
    user_id: int,
    operation: str,
    cost: int | None,
    response: dict[str, Any],
    ledger_id: int | None = None,
) -> None:
    """Store a key's outcome; if the key was taken meanwhile, raise KeyRaced."""
    stmt = insert_unless_exists(session, BillingRequest.__table__).values(
        idempotency_key=key,
        user_id=user_id,
        operation=operation,
        cost=cost,
        response=response,
        ledger_id=ledger_id,
    )
    if session.execute(stmt.returning(BillingRequest.idempotency_key)).first() is None:
        raise KeyRaced(key)


def run_keyed(
    session: Session,
    *,
    key: str,
    user_id: int,
    operation: str,
    cost: int | None,
    settings: Settings,
    body: Callable[[User, datetime], tuple[results.Result, int | None]],
) -> results.Result:
    """The frame of every keyed movement (charge, grant, subscription): lock the account,
    answer a repeated key from its first outcome, else run ``body`` and remember its outcome.

    The row lock serialises one user's requests, so a repeat by the same user finds the first
    outcome here; a repeat racing under another user id, or for an unknown user, meets the
    unique key in remember() and raises KeyRaced.
    """
    loaded = accounts.load_for_update(session, user_id, settings)
    stored = session.get(BillingRequest, key)
    if stored is not None:
        return replay(stored, user_id, operation, cost)
    fingerprint = {"key": key, "user_id": user_id, "operation": operation, "cost": cost}
    if loaded is None:
        outcome = {**results.user_not_found(user_id), "idempotency_key": key, "replayed": False}
        remember(session, **fingerprint, response=outcome)
        return outcome
    outcome, ledger_id = body(*loaded)
    remember(session, **fingerprint, response=outcome, ledger_id=ledger_id)
    return outcome
