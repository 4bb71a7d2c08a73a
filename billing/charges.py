"""Charges: a generation or assistant call, paid from the first source that can pay it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from billing import idempotency, ledger, results, rules
from billing.settings import Settings
from billing.validation import ChargeArgs
from models import EntryType, Operation, User


def default_cost(operation: Operation, settings: Settings) -> int:
    if operation == Operation.GENERATION:
        return settings.generation_cost
    return settings.assistant_cost


def charge(
    session: Session, operation: Operation, args: ChargeArgs, settings: Settings
) -> results.Result:
    """Run one charge in the caller's transaction. Raises KeyRaced if a concurrent
    transaction committed the same key first; the caller then replays in a new one."""
    if not settings.v4_enabled:
        return results.billing_disabled()
    cost = args.cost if args.cost is not None else default_cost(operation, settings)
    key = args.idempotency_key

    def pay(user: User, now: datetime) -> tuple[results.Result, int | None]:
        draw = rules.choose_draw(user, operation, cost, now, settings)
        if draw is None:
            return results.failure(
                results.PAYMENT_REQUIRED,
                results.NOT_ENOUGH_CREDITS,
                f"nothing left to pay for this {operation} (cost {cost} credits)",
                idempotency_key=key,
                replayed=False,
                state=rules.account_state(user, now, settings),
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
        return results.success(
            source=str(draw.source),
            amount=draw.amount,
            ledger_id=ledger_id,
            idempotency_key=key,
            replayed=False,
            state=rules.account_state(user, now, settings),
        ), ledger_id

    return idempotency.run_keyed(
        session,
        key=key,
        user_id=args.user_id,
        operation=operation,
        cost=cost,
        settings=settings,
        body=pay,
    )
