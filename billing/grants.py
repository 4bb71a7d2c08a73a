"""Top-ups: credits added after a payment was confirmed (the provider stays outside)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from billing import idempotency, ledger, results, rules
from billing.settings import Settings
from billing.validation import GrantArgs
from models import EntryType, LedgerSource, User

MAX_BALANCE = 2**31 - 1  # users.balance_credits is a PostgreSQL integer


def grant_credits(session: Session, args: GrantArgs, settings: Settings) -> results.Result:
    key = args.idempotency_key

    def top_up(user: User, now: datetime) -> tuple[results.Result, int | None]:
        if user.balance_credits + args.amount > MAX_BALANCE:
            # Not remembered: the outcome is refused, as a 422 is, and nothing is written.
            raise idempotency.Refused(
                results.invalid("amount", f"the balance would exceed {MAX_BALANCE} credits")
            )
        user.balance_credits += args.amount
        session.flush()
        ledger_id = ledger.record(
            session,
            user,
            at=now,
            key=key,
            entry_type=EntryType.GRANT,
            source=LedgerSource.CREDITS,
            amount=args.amount,
            meta=args.meta,
        )
        return results.success(
            source=str(LedgerSource.CREDITS),
            amount=args.amount,
            ledger_id=ledger_id,
            idempotency_key=key,
            replayed=False,
            state=rules.account_state(user, now, settings),
        ), ledger_id

    return idempotency.run_keyed(
        session,
        key=key,
        user_id=args.user_id,
        operation="grant",
        cost=args.amount,
        settings=settings,
        body=top_up,
    )
