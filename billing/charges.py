"""Charges: a generation or assistant call, paid from the first source that can pay it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from billing import idempotency, ledger, results, rules
from billing.settings import Settings
from billing.validation import ChargeArgs
from models import EntryType, Operation, User


def default_cost(operation: Operation, settings: Settings) -> int:
    if operation == Operation.GENERATION:
        return settings.generation_cost
    return settings.assistant_cost


def paid_outcome(draw: rules.Draw, key: str, state: dict[str, Any]) -> results.Result:
    return results.success(
        source=str(draw.source),
        amount=draw.amount,
        idempotency_key=key,
        replayed=False,
        state=state,
    )


def unpaid_outcome(
    operation: Operation, cost: int, key: str, state: dict[str, Any]
) -> results.Result:
    return results.failure(
        results.PAYMENT_REQUIRED,
        results.NOT_ENOUGH_CREDITS,
        f"nothing left to pay for this {operation} (cost {cost} credits)",
        idempotency_key=key,
        replayed=False,
        state=state,
    )


def effective_cost(operation: Operation, args: ChargeArgs, settings: Settings) -> int:
    return args.cost if args.cost is not None else default_cost(operation, settings)


def charge(
    session: Session, operation: Operation, args: ChargeArgs, settings: Settings
) -> results.Result:
    """One charge in the caller's ORM transaction (the embedded SQLite default; PostgreSQL
    takes ``charges_pg``). Raises KeyRaced if a concurrent transaction committed the same
    key first; the caller then replays in a new one."""
    if not settings.v4_enabled:
        return results.billing_disabled()
    cost = effective_cost(operation, args, settings)
    key = args.idempotency_key

    def pay(user: User, now: datetime) -> tuple[results.Result, int | None]:
        draw = rules.choose_draw(user, operation, cost, now, settings)
        if draw is None:
            return unpaid_outcome(
                operation, cost, key, rules.account_state(user, now, settings)
            ), None
        rules.take(user, draw)
        session.flush()  # the UPDATE; CHECK constraints stop any overdraft the rules missed
        ledger_id = ledger.record(
            session,
            user,
            at=now,
            key=key,
            entry_type=EntryType.CHARGE,
            source=draw.source,
            amount=draw.amount,
            operation=operation,
            meta=args.meta,
        )
        outcome = paid_outcome(draw, key, rules.account_state(user, now, settings))
        return {**outcome, "ledger_id": ledger_id}, ledger_id

    return idempotency.run_keyed(
        session,
        key=key,
        user_id=args.user_id,
        operation=operation,
        cost=cost,
        settings=settings,
        body=pay,
    )
