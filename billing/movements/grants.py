"""Top-ups: credits added after a payment was confirmed (the provider stays outside)."""

from __future__ import annotations

from datetime import datetime

from billing.core import results, rules
from billing.core.records import AccountRow, Entry
from billing.core.settings import Settings
from billing.core.validation import GrantArgs
from billing.movements import frame
from billing.movements.frame import Decision, Movement
from billing.movements.store import Store
from models import EntryType, LedgerSource


class Grant(Movement):
    """Credits in; the frame refuses one that would take the balance past its ceiling."""

    operation = "grant"

    def __init__(self, args: GrantArgs) -> None:
        self.args = args
        self.key = args.idempotency_key
        self.user_id = args.user_id
        self.requested_cost = args.amount

    def decide(self, account: AccountRow, now: datetime, settings: Settings) -> Decision:
        account.balance_credits += self.args.amount
        outcome = results.success(
            source=str(LedgerSource.CREDITS),
            amount=self.args.amount,
            idempotency_key=self.key,
            replayed=False,
            state=rules.account_state(account, now, settings),
        )
        entry = Entry(EntryType.GRANT, LedgerSource.CREDITS, self.args.amount, meta=self.args.meta)
        return Decision(outcome, entry, self.args.amount)


def grant(store: Store, args: GrantArgs, settings: Settings) -> results.Result:
    """Add credits through the frame."""
    return frame.run(store, Grant(args), settings)
