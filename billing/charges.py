"""Charges: a generation or assistant call, paid from the first source that can pay it."""

from __future__ import annotations

from sqlalchemy.orm import Session

from billing import idempotency, ledger, results, rules
from billing.accounts import load_for_update
from billing.settings import Settings
from billing.validation import ChargeArgs
from models import BillingRequest, EntryType, Operation


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

    # The row lock serialises charges of one user, so a repeat of the key by the same user
    # finds the first outcome here; a repeat racing under another user id, or for an
    # unknown user, is caught by the unique key in remember().
    loaded = load_for_update(session, args.user_id, settings)
    stored = session.get(BillingRequest, key)
    if stored is not None:
        return idempotency.replay(stored, args.user_id, operation, cost)

    fingerprint = {"key": key, "user_id": args.user_id, "operation": operation, "cost": cost}
    if loaded is None:
        outcome = {
            **results.user_not_found(args.user_id),
            "idempotency_key": key,
            "replayed": False,
        }
        idempotency.remember(session, **fingerprint, response=outcome)
        return outcome
    user, now = loaded

    draw = rules.choose_draw(user, operation, cost, now, settings)
    if draw is None:
        outcome = results.failure(
            results.PAYMENT_REQUIRED,
            results.NOT_ENOUGH_CREDITS,
            f"nothing left to pay for this {operation} (cost {cost} credits)",
            idempotency_key=key,
            replayed=False,
            state=rules.account_state(user, now, settings),
        )
        idempotency.remember(session, **fingerprint, response=outcome)
        return outcome

    rules.take(user, draw)
    session.flush()  # the UPDATE; CHECK constraints stop any overdraft the rules missed
    ledger_id = ledger.record(
        session,
        user,
        key=key,
        entry_type=EntryType.CHARGE,
        source=draw.source,
        amount=draw.amount,
        operation=operation,
        meta=args.meta,
    )
    outcome = results.success(
        source=str(draw.source),
        amount=draw.amount,
        ledger_id=ledger_id,
        idempotency_key=key,
        replayed=False,
        state=rules.account_state(user, now, settings),
    )
    idempotency.remember(session, **fingerprint, response=outcome, ledger_id=ledger_id)
    return outcome
