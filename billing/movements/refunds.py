"""Refunds: a generation that failed after it was paid for gives back what it took."""

from __future__ import annotations

from datetime import datetime

from billing.core import credits, results, rules, settlement
from billing.core.records import AccountRow, ChargeRow, Entry, Part, counters
from billing.core.settings import Settings
from billing.core.validation import RESERVED_KEY_PREFIX, RefundArgs
from billing.movements import frame
from billing.movements.frame import Decision, Movement
from billing.movements.store import Store
from models import EntryType, LedgerSource

CHARGE_NOT_FOUND = "charge_not_found"


def refund_key(charge_key: str) -> str:
    return f"{RESERVED_KEY_PREFIX}refund:{charge_key}"


class Refund(Movement):
    """Reverse one charge, at most once (its own key, and the ledger's unique refund_of_id).

    Credits always go back. An operation or freemium action goes back to its allowance only
    while the period it was taken from is current; otherwise nothing is returned and the
    result says so. An admin charge returns nothing and succeeds, as does a hold captured with
    amount 0 (it charged nothing).
    """

    operation = "refund"

    def __init__(self, args: RefundArgs, charge: ChargeRow) -> None:
        self.args = args
        self.charge = charge
        self.key = refund_key(args.idempotency_key)
        self.user_id = charge.user_id
        self.grant_keys = tuple(p.grant for p in charge.parts if p.grant is not None)

    def decide(self, account: AccountRow, now: datetime, settings: Settings) -> Decision:
        charge = self.charge
        restored = rules.returnable(account, charge.source, charge.amount, charge.created_at)
        parts: tuple[Part, ...] = ()
        lapses: list[Entry] = []
        if charge.source == LedgerSource.CREDITS:
            # Each part goes back to its own grant; one whose grant has expired or been voided
            # meanwhile is written off at once (reinstated credits past their grant's expiry
            # expire immediately).
            parts = charge.parts or (Part(None, charge.amount),)
            lapsed = credits.give_back(account, parts)
            entry_after = counters(account)
            lapses = settlement.write_offs(account, lapsed, self.key)
        else:
            rules.give_back(account, charge.source, restored)
            entry_after = None
        outcome = results.success(
            source=str(charge.source),
            amount=restored,
            restored=restored > 0,
            note=_note(charge, restored),
            charge_ledger_id=charge.id,
            idempotency_key=self.args.idempotency_key,
            replayed=False,
            state=rules.account_state(account, now, settings),
        )
        if lapses:
            outcome["expired"] = sum(e.amount for e in lapses)
        meta = {"reason": self.args.reason} if self.args.reason else None
        entry = Entry(
            EntryType.REFUND,
            charge.source,
            restored,
            charge.operation,
            meta,
            charge.id,
            after=entry_after,
            parts=parts,
        )
        return Decision(outcome, entry, after=lapses)


def refund(store: Store, args: RefundArgs, settings: Settings) -> results.Result:
    """Find the charge (its ledger row never changes, so no lock), then run the frame on its
    account. A 404 is not remembered: a refund that overtook its charge can be sent again."""
    charge = store.find_charge(args.idempotency_key)
    if charge is None:
        return results.failure(
            results.NOT_FOUND,
            CHARGE_NOT_FOUND,
            f"no charge was made under idempotency key {args.idempotency_key!r}",
            idempotency_key=args.idempotency_key,
        )
    return frame.run(store, Refund(args, charge), settings)


def _note(charge: ChargeRow, restored: int) -> str:
    source = charge.source
    if source == LedgerSource.ADMIN:
        return "admin charges take nothing; nothing to return"
    if charge.amount == 0:
        # Only a credits hold captured with amount=0 leaves a charge of nothing: every other
        # charge costs at least 1, and an allowance hold is captured whole.
        return "the hold was captured with amount 0: nothing was charged, so nothing to return"
    if restored:
        return f"returned {restored} to {source}"
    return f"the {source} period the charge was taken from has ended; nothing returned"
