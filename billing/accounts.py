"""Reading an account's state, brought up to date (lazy resets, tier fix, hold expiry)."""

from __future__ import annotations

from datetime import datetime

from billing import frame, results, rules
from billing.frame import Decision, Movement
from billing.rules import AccountRow
from billing.settings import Settings
from billing.store import Store
from billing.validation import UserArgs


class BringUpToDate(Movement):
    """A keyless pass through the frame: lock, bring up to date, store it, answer the state."""

    key = None
    operation = "state"

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id

    def decide(self, account: AccountRow, now: datetime, settings: Settings) -> Decision:
        return Decision(results.success(state=rules.account_state(account, now, settings)))


def get_state(store: Store, args: UserArgs, settings: Settings) -> results.Result:
    if not settings.v4_enabled:
        return results.billing_disabled()
    # A read takes no lock unless the account needs a reset, a tier fix or an expiry stored.
    # Then the frame reads it again under its row lock: what this first read saw is never
    # written.
    account, now = store.peek(args.user_id)
    if account is None:
        return results.user_not_found(args.user_id)
    effective = rules.effective_now(account, now)
    if not rules.refresh_changes(account, effective, settings) and not rules.due_holds(
        account, effective
    ):
        return results.success(state=rules.account_state(account, now, settings))
    outcome = frame.run(store, BringUpToDate(args.user_id), settings)
    if outcome["code"] == results.NOT_FOUND:  # gone between the two reads
        return results.user_not_found(args.user_id)
    return outcome
