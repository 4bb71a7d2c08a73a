"""Refunds: a generation that failed after it was paid for gives back what it took."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import accounts, idempotency, ledger, results, rules
from billing.settings import Settings
from billing.validation import RESERVED_KEY_PREFIX, RefundArgs
from models import BillingRequest, EntryType, LedgerEntry, LedgerSource

CHARGE_NOT_FOUND = "charge_not_found"


def refund_key(charge_key: str) -> str:
    return f"{RESERVED_KEY_PREFIX}refund:{charge_key}"


def refund(session: Session, args: RefundArgs, settings: Settings) -> results.Result:
    """Reverse the charge recorded under ``args.idempotency_key``, at most once.

    Credits always go back. An operation or freemium action goes back to its allowance only
    while the period it was taken from is current; otherwise nothing is returned and the
    result says so. An admin charge returns nothing and succeeds. A 404 is not remembered:
    a refund that overtook its charge can be sent again.
    """
    charge = session.scalars(
        select(LedgerEntry).where(
            LedgerEntry.idempotency_key == args.idempotency_key,
            LedgerEntry.entry_type == EntryType.CHARGE,
        )
    ).one_or_none()
    if charge is None:
        return results.failure(
            results.NOT_FOUND,
            CHARGE_NOT_FOUND,
            f"no charge was made under idempotency key {args.idempotency_key!r}",
            idempotency_key=args.idempotency_key,
        )
    key = refund_key(args.idempotency_key)
    loaded = accounts.load_for_update(session, charge.user_id, settings)
    assert loaded is not None, "a ledger row's user exists (foreign key)"
    stored = session.get(BillingRequest, key)
    if stored is not None:
        return idempotency.replay(stored, charge.user_id, "refund", None)
    user, now = loaded

    restored = charge.amount
    if charge.source == LedgerSource.CREDITS:
        user.balance_credits += charge.amount
    elif charge.source == LedgerSource.ADMIN:
        restored = 0
    else:
        used_column, reset_column = {
            LedgerSource.SUBSCRIPTION: ("subscription_ops_used", "subscription_ops_reset_at"),
            LedgerSource.FREEMIUM: ("freemium_actions_used", "freemium_reset_at"),
        }[charge.source]
        current = rules.as_utc(charge.created_at) >= rules.as_utc(getattr(user, reset_column))
        used = getattr(user, used_column)
        restored = min(charge.amount, used) if current else 0
        setattr(user, used_column, used - restored)
    session.flush()
    ledger_id = ledger.record(
        session,
        user,
        at=now,
        key=key,
        entry_type=EntryType.REFUND,
        source=charge.source,
        amount=restored,
        operation=charge.operation,
        meta={"reason": args.reason} if args.reason else None,
        refund_of_id=charge.id,
    )
    outcome = results.success(
        source=str(charge.source),
        amount=restored,
        restored=restored > 0,
        note=_note(charge.source, restored),
        ledger_id=ledger_id,
        charge_ledger_id=charge.id,
        idempotency_key=args.idempotency_key,
        replayed=False,
        state=rules.account_state(user, now, settings),
    )
    idempotency.remember(
        session,
        key=key,
        user_id=charge.user_id,
        operation="refund",
        cost=None,
        response=outcome,
        ledger_id=ledger_id,
    )
    return outcome


def _note(source: LedgerSource, restored: int) -> str:
    if source == LedgerSource.ADMIN:
        return "admin charges take nothing; nothing to return"
    if restored:
        return f"returned {restored} to {source}"
    return f"the {source} period the charge was taken from has ended; nothing returned"
