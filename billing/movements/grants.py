"""Grants: credits added after a payment was confirmed or given as a promotion (the provider
stays outside), each with its expiry, priority and category; and voiding what is left of one.
"""

from __future__ import annotations

from datetime import datetime

from billing.core import credits, results, rules
from billing.core.records import AccountRow, Entry, GrantRow, Part
from billing.core.settings import Settings
from billing.core.validation import RESERVED_KEY_PREFIX, GrantArgs, VoidGrantArgs
from billing.movements import frame
from billing.movements.frame import Decision, Movement, Refused
from billing.movements.store import Store
from models import EntryType, GrantCategory, GrantStatus, LedgerSource

GRANT_NOT_FOUND = "grant_not_found"
GRANT_CLOSED = "grant_closed"


class Grant(Movement):
    """Credits in, as a grant of their own; the frame refuses one that would take the balance
    past its ceiling. The grant's terms (expiry, priority, category) are part of the key's
    fingerprint: a resend that changes them is a 409."""

    remembers_not_found = False  # paid for: it goes through once the account is opened

    def __init__(self, args: GrantArgs) -> None:
        self.args = args
        self.key = args.idempotency_key
        self.user_id = args.user_id
        self.requested_cost = args.amount
        self.operation = "grant" + (f":{args.fingerprint}" if args.fingerprint else "")

    def decide(self, account: AccountRow, now: datetime, settings: Settings) -> Decision:
        args = self.args
        if args.expires_at is not None and args.expires_at <= rules.as_utc(now):
            raise Refused(results.invalid("expires_at", "must be later than now"))
        grant = GrantRow(
            self.key,
            args.amount,
            args.amount,
            args.expires_at,
            args.priority,
            GrantCategory(args.category),
            now,
            new=True,
        )
        account.grants.append(grant)
        account.balance_credits += args.amount
        outcome = results.success(
            source=str(LedgerSource.CREDITS),
            amount=args.amount,
            idempotency_key=self.key,
            replayed=False,
            state=rules.account_state(account, now, settings),
            grant=credits.view(grant),
        )
        entry = Entry(
            EntryType.GRANT,
            LedgerSource.CREDITS,
            args.amount,
            meta=args.meta,
            grant_key=self.key,
            parts=(Part(self.key, args.amount),),
        )
        return Decision(outcome, entry, args.amount)


def void_key(grant_key: str) -> str:
    return f"{RESERVED_KEY_PREFIX}void:{grant_key}"


class Void(Movement):
    """Remove what is left of a grant. What open holds keep from it is voided when it comes
    back. A second void of the same grant replays; an expired grant is a 409."""

    operation = "void"

    def __init__(self, args: VoidGrantArgs, user_id: int) -> None:
        self.args = args
        self.grant_key = args.idempotency_key
        self.key = void_key(args.idempotency_key)
        self.user_id = user_id
        self.grant_keys = (args.idempotency_key,)

    def decide(self, account: AccountRow, now: datetime, settings: Settings) -> Decision:
        grant = credits.find(account, self.grant_key)
        if grant is None:  # found before the lock, and grants are never deleted
            raise Refused(grant_not_found(self.grant_key))
        if grant.status != GrantStatus.ACTIVE:
            # Remembered: a closed grant stays closed, so the answer is final.
            return Decision(
                results.failure(
                    results.CONFLICT,
                    GRANT_CLOSED,
                    f"the grant is {grant.status}; it cannot be voided",
                    status=str(grant.status),
                    idempotency_key=self.grant_key,
                    replayed=False,
                )
            )
        left, voided = credits.close(account, grant, GrantStatus.VOIDED, now)
        meta = {"reason": self.args.reason} if self.args.reason else None
        entry = Entry(
            EntryType.VOID,
            LedgerSource.CREDITS,
            voided,
            meta=meta,
            grant_key=grant.key,
            parts=(Part(grant.key, left),),
        )
        outcome = results.success(
            source=str(LedgerSource.CREDITS),
            amount=voided,
            idempotency_key=self.grant_key,
            replayed=False,
            state=rules.account_state(account, now, settings),
            grant=credits.view(grant),
        )
        return Decision(outcome, entry)


def grant_not_found(key: str) -> results.Result:
    return results.failure(
        results.NOT_FOUND,
        GRANT_NOT_FOUND,
        f"no grant was made under idempotency key {key!r}",
        idempotency_key=key,
    )


def grant(store: Store, args: GrantArgs, settings: Settings) -> results.Result:
    """Add credits through the frame."""
    return frame.run(store, Grant(args), settings)


def void(store: Store, args: VoidGrantArgs, settings: Settings) -> results.Result:
    """Find the grant's account (it never changes, so no lock), then void it through the
    frame. A 404 is not remembered: a void that overtook its grant can be sent again."""
    user_id = store.find_grant(args.idempotency_key)
    if user_id is None:
        return grant_not_found(args.idempotency_key)
    return frame.run(store, Void(args, user_id), settings)
