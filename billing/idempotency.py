"""The first outcome of an idempotency key is final; this module keeps and replays it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert

from billing import results
from models import BillingRequest


class KeyRaced(Exception):
    """Another transaction committed this key while ours ran; ours must roll back and replay."""


def insert_unless_exists(session: Session, table: Table) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING in the session's dialect."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def replay(
    stored: BillingRequest, user_id: int, operation: str, cost: int | None
) -> results.Result:
    if (stored.user_id, stored.operation, stored.cost) != (user_id, operation, cost):
        return results.failure(
            results.CONFLICT,
            results.IDEMPOTENCY_CONFLICT,
            "this idempotency key was already used for a different request "
            f"(user {stored.user_id}, {stored.operation}, cost {stored.cost})",
            idempotency_key=stored.idempotency_key,
            replayed=False,
        )
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
