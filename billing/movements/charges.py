"""Charges: a generation or assistant call, paid from the first source that can pay it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from billing.core import credits, results, rules
from billing.core.records import AccountRow, Entry, Part
from billing.core.settings import Settings
from billing.core.validation import ChargeArgs
from billing.movements import frame
from billing.movements.frame import Decision, Movement
from billing.movements.store import Store
from models import EntryType, LedgerSource, Operation


def default_cost(operation: Operation, settings: Settings) -> int:
    if operation == Operation.GENERATION:
        return settings.generation_cost
    return settings.assistant_cost


def paid_outcome(
    draw: rules.Draw, parts: list[Part], key: str, state: dict[str, Any]
) -> results.Result:
    outcome = results.success(
        source=str(draw.source),
        amount=draw.amount,
        idempotency_key=key,
        replayed=False,
        state=state,
    )
    if draw.source == LedgerSource.CREDITS:
        # What it drew from each grant, in draw order; ``grant: null`` is the general balance.
        outcome["credits_drawn"] = [part.as_json() for part in parts]
    return outcome


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


class V4Gated(Movement):
    """A movement ``BILLING_V4_ENABLED=false`` refuses for new keys (charges and holds)."""

    def enabled(self, settings: Settings) -> results.Result | None:
        return None if settings.v4_enabled else results.billing_disabled()


class Charge(V4Gated):
    """A generation or assistant charge; a 402 is remembered like a paid charge."""

    def __init__(self, operation: Operation, args: ChargeArgs) -> None:
        self.kind = operation
        self.args = args
        self.key = args.idempotency_key
        self.user_id = args.user_id
        self.operation = str(operation)
        self.requested_cost = args.cost

    def recorded_cost(self, settings: Settings) -> int:
        if self.requested_cost is not None:
            return self.requested_cost
        return default_cost(self.kind, settings)

    def decide(self, account: AccountRow, now: datetime, settings: Settings) -> Decision:
        cost = self.recorded_cost(settings)
        key = self.args.idempotency_key
        draw = rules.choose_draw(account, self.kind, cost, now, settings)
        if draw is None:
            state = rules.account_state(account, now, settings)
            return Decision(unpaid_outcome(self.kind, cost, key, state), cost=cost)
        parts: list[Part] = []
        if draw.source == LedgerSource.CREDITS:
            parts = credits.plan(account, draw.amount)
            credits.take(account, parts)
        else:
            rules.take(account, draw)
        return self.taken(account, draw, parts, cost, now, settings)

    def taken(
        self,
        account: AccountRow,
        draw: rules.Draw,
        parts: list[Part],
        cost: int,
        now: datetime,
        settings: Settings,
    ) -> Decision:
        """What taking ``draw`` (credits: ``parts``) from the locked account writes and
        answers."""
        entry = Entry(
            EntryType.CHARGE,
            draw.source,
            draw.amount,
            self.kind,
            self.args.meta,
            parts=tuple(parts),
        )
        state = rules.account_state(account, now, settings)
        return Decision(paid_outcome(draw, parts, self.key, state), entry, cost)


def charge(
    store: Store, operation: Operation, args: ChargeArgs, settings: Settings
) -> results.Result:
    """Charge one ``operation`` through the frame; the answer as the caller asked it shaped."""
    return results.shaped(frame.run(store, Charge(operation, args), settings), args.include_state)


def generation(store: Store, args: ChargeArgs, settings: Settings) -> results.Result:
    return charge(store, Operation.GENERATION, args, settings)


def assistant(store: Store, args: ChargeArgs, settings: Settings) -> results.Result:
    return charge(store, Operation.ASSISTANT, args, settings)
