"""Holds: reserve before a job, capture when it succeeds, release or expire when it does not.

A reserve chooses its source exactly as a charge does and takes the amount at once, so no
other job can spend it; its key is in the charges' namespace (its outcome is remembered under
it). A capture keeps the hold (all of it, or for credits part of it, the rest going back); a
release gives it back; a hold nobody settles by ``expires_at`` expires and gives it back
(``settlement.expire_due``, run by every movement on the account and by the beat's sweep).
Capture and release are keyed movements of their own, ``billing:capture:<hold key>`` and
``billing:release:<hold key>``: a repeat replays, and once a hold is closed the other one
answers 409 ``hold_closed``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from billing.core import results, rules, settlement
from billing.core.records import AccountRow, Entry, HoldChange, HoldRow, Part
from billing.core.settings import Settings
from billing.core.validation import RESERVED_KEY_PREFIX, CaptureArgs, ReleaseArgs, ReserveArgs
from billing.movements import frame
from billing.movements.charges import Charge, V4Gated, paid_outcome
from billing.movements.frame import Decision, Refused
from billing.movements.store import Store
from models import EntryType, HoldStatus, LedgerSource, Operation

HOLD_NOT_FOUND = "hold_not_found"
HOLD_CLOSED = "hold_closed"
PREFIX = "hold:"


def hold_view(hold: HoldRow) -> dict[str, Any]:
    view: dict[str, Any] = {"status": str(hold.status), "held": hold.amount}
    if hold.status == HoldStatus.HELD:
        view["expires_at"] = rules.as_utc(hold.expires_at).isoformat()
    return view


class Reserve(Charge):
    """Take what a charge would take, as an open hold; a 402 is remembered like a charge's."""

    def __init__(self, operation: Operation, args: ReserveArgs) -> None:
        super().__init__(operation, args)
        self.args: ReserveArgs = args
        self.operation = PREFIX + str(operation)

    def taken(
        self,
        account: AccountRow,
        draw: rules.Draw,
        parts: list[Part],
        cost: int,
        now: datetime,
        settings: Settings,
    ) -> Decision:
        ttl = self.args.ttl_seconds or settings.hold_ttl_seconds
        expires_at = now + timedelta(seconds=ttl)
        hold = HoldRow(
            self.key, self.kind, draw.source, draw.amount, now, expires_at, parts=tuple(parts)
        )
        account.holds.append(hold)
        entry = Entry(
            EntryType.HOLD,
            draw.source,
            draw.amount,
            self.kind,
            self.args.meta,
            hold_key=self.key,
            parts=tuple(parts),
        )
        state = rules.account_state(account, now, settings)
        outcome = paid_outcome(draw, parts, self.key, state)
        outcome["hold"] = hold_view(hold)
        return Decision(outcome, entry, cost, holds=[HoldChange(hold, new=True)])


class _Settle(V4Gated):
    """A capture or release of the hold ``hold_key`` on its locked account."""

    verb: str

    def __init__(self, hold_key: str, user_id: int) -> None:
        self.hold_key = hold_key
        self.key = f"{RESERVED_KEY_PREFIX}{self.operation}:{hold_key}"
        self.user_id = user_id

    def closed(self, hold: HoldRow) -> results.Result:
        return results.failure(
            results.CONFLICT,
            HOLD_CLOSED,
            f"the hold is {hold.status}; it cannot be {self.verb}",
            status=str(hold.status),
            idempotency_key=self.hold_key,
            replayed=False,
        )

    def settled_outcome(
        self, account: AccountRow, now: datetime, settings: Settings, settled: settlement.Settled
    ) -> results.Result:
        hold = settled.change.hold
        outcome = results.success(
            source=str(hold.source),
            amount=settled.entry.amount,
            returned=settled.returned,
            idempotency_key=self.hold_key,
            replayed=False,
            state=rules.account_state(account, now, settings),
            hold=hold_view(hold),
        )
        if settled.lapsed:
            # Given back to grants that expired or were voided meanwhile: written off at once.
            outcome["expired"] = settled.lapsed
        return outcome

    def hold(self, account: AccountRow) -> HoldRow | None:
        return next((h for h in account.holds if h.key == self.hold_key), None)

    def decide(self, account: AccountRow, now: datetime, settings: Settings) -> Decision:
        hold = self.hold(account)
        if hold is None:  # the store found it before the lock, and holds are never deleted
            raise Refused(hold_not_found(self.hold_key))
        if hold.status != HoldStatus.HELD:
            # Remembered: a closed hold stays closed, so the answer is final.
            return Decision(self.closed(hold), cost=self.requested_cost)
        return self.settle(account, hold, now, settings)

    def settle(
        self, account: AccountRow, hold: HoldRow, now: datetime, settings: Settings
    ) -> Decision:
        raise NotImplementedError


class Capture(_Settle):
    """Keep the hold: all of it, or for a credits hold ``amount`` of it (the rest returns)."""

    operation = "capture"
    verb = "captured"

    def __init__(self, args: CaptureArgs, user_id: int) -> None:
        super().__init__(args.idempotency_key, user_id)
        self.requested_cost = args.amount

    def invalid(self, account: AccountRow) -> results.Result | None:
        # A hold's amount and source never change, so an amount they rule out is a bad
        # argument in any state of the hold: checked before the key's outcome or the hold's
        # status, and never remembered (the same key may come again with a valid amount).
        hold, amount = self.hold(account), self.requested_cost
        if hold is None or amount is None or amount == hold.amount:
            return None
        if amount > hold.amount:
            return results.invalid("amount", f"is above the held amount ({hold.amount})")
        if hold.source != LedgerSource.CREDITS:
            return results.invalid(
                "amount",
                f"a {hold.source} hold is captured whole ({hold.amount}); only credits"
                " holds can be captured in part",
            )
        return None

    def settle(
        self, account: AccountRow, hold: HoldRow, now: datetime, settings: Settings
    ) -> Decision:
        amount = hold.amount if self.requested_cost is None else self.requested_cost
        settled = settlement.settle(account, hold, HoldStatus.CAPTURED, captured=amount)
        outcome = self.settled_outcome(account, now, settings, settled)
        return Decision(
            outcome, settled.entry, amount, holds=[settled.change], entries=settled.before
        )


class Release(_Settle):
    """Give the whole hold back (an allowance only while its period is current)."""

    operation = "release"
    verb = "released"

    def __init__(self, args: ReleaseArgs, user_id: int) -> None:
        super().__init__(args.idempotency_key, user_id)
        self.reason = args.reason

    def settle(
        self, account: AccountRow, hold: HoldRow, now: datetime, settings: Settings
    ) -> Decision:
        meta = {"reason": self.reason} if self.reason else None
        settled = settlement.settle(account, hold, HoldStatus.RELEASED, meta=meta)
        outcome = self.settled_outcome(account, now, settings, settled)
        if not settled.returned and hold.source != LedgerSource.ADMIN:
            outcome["note"] = (
                f"the {hold.source} period the hold was taken in has ended; nothing returned"
            )
        return Decision(outcome, settled.entry, holds=[settled.change], after=settled.after)


def list_open(account: AccountRow) -> list[dict[str, Any]]:
    """The account's open holds, oldest first, for operators (``billing state``): from the
    same read as its state, so the list and the state's ``held`` agree."""
    rows = sorted(rules.open_holds(account), key=lambda h: (rules.as_utc(h.created_at), h.key))
    return [
        {
            "idempotency_key": hold.key,
            "operation": str(hold.operation),
            "source": str(hold.source),
            "amount": hold.amount,
            "created_at": rules.as_utc(hold.created_at).isoformat(),
            "expires_at": rules.as_utc(hold.expires_at).isoformat(),
        }
        for hold in rows
    ]


def hold_not_found(key: str) -> results.Result:
    return results.failure(
        results.NOT_FOUND,
        HOLD_NOT_FOUND,
        f"no hold was reserved under idempotency key {key!r}",
        idempotency_key=key,
    )


def _settle(
    store: Store, key: str, movement: type[_Settle], args: Any, settings: Settings
) -> results.Result:
    # The hold's account never changes, so it is found without a lock; the frame then locks
    # that account and reads the hold again. A 404 is not remembered: the capture or release
    # may have overtaken its reserve, and can be sent again.
    user_id = store.find_hold(key)
    if user_id is None:
        return hold_not_found(key)
    return frame.run(store, movement(args, user_id), settings)


def reserve(
    store: Store, operation: Operation, args: ReserveArgs, settings: Settings
) -> results.Result:
    return frame.run(store, Reserve(operation, args), settings)


def reserve_generation(store: Store, args: ReserveArgs, settings: Settings) -> results.Result:
    """A generation's hold, the answer shaped as the caller asked."""
    return results.shaped(reserve(store, Operation.GENERATION, args, settings), args.include_state)


def reserve_assistant(store: Store, args: ReserveArgs, settings: Settings) -> results.Result:
    return results.shaped(reserve(store, Operation.ASSISTANT, args, settings), args.include_state)


def capture(store: Store, args: CaptureArgs, settings: Settings) -> results.Result:
    return _settle(store, args.idempotency_key, Capture, args, settings)


def release(store: Store, args: ReleaseArgs, settings: Settings) -> results.Result:
    return _settle(store, args.idempotency_key, Release, args, settings)
