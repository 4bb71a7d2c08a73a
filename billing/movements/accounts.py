"""Reading an account's state, brought up to date (lazy resets, tier fix, hold expiry)."""

from __future__ import annotations

from datetime import datetime

from billing.core import credits, results, rules
from billing.core.records import AccountRow
from billing.core.settings import Settings
from billing.core.validation import OpenAccountArgs, UserArgs
from billing.movements import frame, holds
from billing.movements.frame import Decision, Movement
from billing.movements.store import Store
from models import UserRole


class BringUpToDate(Movement):
    """A keyless pass through the frame: lock, bring up to date, store it, answer the state."""

    key = None
    operation = "state"

    def __init__(self, user_id: int, with_holds: bool = False) -> None:
        self.user_id = user_id
        self.with_holds = with_holds

    def decide(self, account: AccountRow, now: datetime, settings: Settings) -> Decision:
        return Decision(_state(account, now, settings, self.with_holds))


def _state(
    account: AccountRow, now: datetime, settings: Settings, with_holds: bool
) -> results.Result:
    """The state, and for operators the open holds it counts, both of one read."""
    state = results.success(state=rules.account_state(account, now, settings))
    if with_holds:
        state["open_holds"] = holds.list_open(account)
    return state


def get_state(
    store: Store, args: UserArgs, settings: Settings, *, with_holds: bool = False
) -> results.Result:
    if not settings.v4_enabled:
        return results.billing_disabled()
    # A read takes no lock unless the account needs a reset, a tier fix or an expiry stored.
    # Then the frame reads it again under its row lock: what this first read saw is never
    # written.
    account, now = store.peek(args.user_id)
    if account is None:
        return results.user_not_found(args.user_id)
    effective = rules.effective_now(account, now)
    if (
        not rules.refresh_changes(account, effective, settings)
        and not rules.due_holds(account, effective)
        and not credits.due(account, effective)
        and not credits.to_notify(account, effective, settings.credit_expiry_notice)
    ):
        return _state(account, now, settings, with_holds)
    outcome = frame.run(store, BringUpToDate(args.user_id, with_holds), settings)
    if outcome["code"] == results.NOT_FOUND:  # gone between the two reads
        return results.user_not_found(args.user_id)
    return outcome


def open_account(store: Store, args: OpenAccountArgs, settings: Settings) -> results.Result:
    """Open the account ``user_id`` (nothing charged, nothing granted), or answer it as it is:
    ``opened`` says which. The role is the one it was opened with: opening it again, with
    any role, changes nothing."""
    if not settings.v4_enabled:
        return results.billing_disabled()
    opened = store.open_account(args.user_id, UserRole(args.role))
    read = get_state(store, UserArgs(user_id=args.user_id), settings)
    if not read["ok"]:  # removed by hand between the two: its answer says so
        return read
    return results.success(opened=opened, state=read["state"])
