"""The one frame of every keyed movement: charges, holds, grants, subscriptions, refunds.

    lock the account -> bring it up to date -> look the key up -> decide -> write -> commit

1. The store locks the account's row and reads it, with the database's clock, and then looks
   the key up: a repeat by the same user queues on the lock and finds what the first one
   committed. Nothing the frame decides on is read before the lock, so nothing read before it
   can be written back.
2. Lazy resets, the tier fix and the expiry of due holds bring the locked account up to date
   (``bring_up_to_date``).
3. An argument only the locked account can check (``Movement.invalid``: a capture above its
   hold) is a 422 first, whatever the key or the hold's state; it is not remembered.
   A key with an outcome answers that outcome (``replayed: true``) if the request matches it,
   else 409, whatever flags, costs and tiers are configured now: they apply to new keys only.
4. A new key: the movement's rules decide (``Movement.decide``); a refusal (a 422, a disabled
   flag) writes nothing and is not remembered.
5. The store writes the account, the reset records, the ledger row, the events the movement
   crossed (``billing.core.events``) and the remembered outcome, and commits, in one transaction.
   A key a concurrent transaction committed first meets the unique index: KeyRaced, and the
   caller runs the frame again, which then replays.

A movement is a small object: its key, user, fingerprint and rules. The stores are the only
place that knows SQL (``billing.movements.store``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import Any

from billing.core import credits, events, results, rules, settlement
from billing.core.records import (
    AccountRow,
    Entry,
    Event,
    GrantRow,
    HoldChange,
    Part,
    Restored,
    StoredOutcome,
    Writes,
    counters,
)
from billing.core.settings import Settings
from billing.movements.store import KeyRaced, Store
from models import EntryType, GrantStatus, LedgerSource

BALANCE_LIMIT = "balance_limit"


class Refused(Exception):
    """A new key's request refused before anything was written; nothing is remembered, so
    the same key may come again once the reason is gone."""

    def __init__(self, result: results.Result) -> None:
        super().__init__(result.get("message"))
        self.result = result


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the rules decided for a new key: the outcome, the ledger row it writes (None for a
    rejection that moves nothing, such as a 402), the cost the key is remembered with, and
    any holds and further ledger rows it writes (a reserve's hold, a capture's rest)."""

    outcome: results.Result
    entry: Entry | None = None
    cost: int | None = None
    holds: list[HoldChange] = dataclasses.field(default_factory=list)
    entries: list[Entry] = dataclasses.field(default_factory=list)
    # Rows written just after the movement's own (a release's write-offs of lapsed grants).
    after: list[Entry] = dataclasses.field(default_factory=list)


class Movement:
    """One keyed request. Subclasses set the fields and implement ``decide``."""

    key: str | None  # None: a read that only brings the account up to date
    user_id: int
    operation: str  # what a repeat of the key must match, with the user and the cost
    requested_cost: int | None = None  # as the producer sent it; None when absent
    hold_key: str | None = None  # the hold a capture or release settles
    # Grants the movement needs even when closed (a void's grant, a refund's parts' grants).
    grant_keys: tuple[str, ...] = ()
    # Whether a 404 (no such account) is the key's outcome for good. A job refused is; money
    # paid for an account not opened yet is not: the same key (a payment's id) must go
    # through once the account is opened.
    remembers_not_found: bool = True

    def enabled(self, settings: Settings) -> results.Result | None:
        """The refusal a disabled flag gives a new key, or None."""
        return None

    def invalid(self, account: AccountRow) -> results.Result | None:
        """A 422 for an argument only the locked account can check (a capture above its
        hold), or None. It is the arguments' validation, so it comes before the key's
        outcome and is refused as that is: nothing written, nothing remembered."""
        return None

    def recorded_cost(self, settings: Settings) -> int | None:
        """The cost a 404 is remembered with."""
        return self.requested_cost

    def matches(self, stored: StoredOutcome) -> bool:
        """A repeat matches when the user and operation are the same and the cost it passes,
        if any, is the one remembered: an absent cost matches whatever was charged."""
        return (
            stored.user_id == self.user_id
            and stored.operation == self.operation
            and (self.requested_cost is None or self.requested_cost == stored.cost)
        )

    def decide(self, account: AccountRow, now: datetime, settings: Settings) -> Decision:
        raise NotImplementedError


def run(store: Store, movement: Movement, settings: Settings) -> results.Result:
    """Run one movement in one transaction on ``store``; see the module's docstring."""
    try:
        return _run(store, movement, settings)
    except Refused as refused:
        return refused.result
    finally:
        store.rollback()  # nothing to do after a commit; undoes a refusal or an error


def replaying_races(run: Callable[..., results.Result], *args: Any) -> results.Result:
    """Call ``run(*args)`` (a frame on a store), and once more if its key met a concurrent
    commit of the same key (KeyRaced): the second run replays that commit's outcome."""
    try:
        return run(*args)
    except KeyRaced:
        return run(*args)


@dataclasses.dataclass(frozen=True)
class Update:
    """What bringing an account up to date changed, besides its counters."""

    resets: list[Restored] = dataclasses.field(default_factory=list)
    holds: list[HoldChange] = dataclasses.field(default_factory=list)
    entries: list[Entry] = dataclasses.field(default_factory=list)
    # Grants announced as expiring soon (``credits.expiring``), once each.
    notices: list[GrantRow] = dataclasses.field(default_factory=list)


def bring_up_to_date(account: AccountRow, now: datetime, settings: Settings) -> Update:
    """On the locked account: lazy resets and the tier fix, then every grant whose
    ``expires_at`` has come expires, then every hold whose time is up. Resets come first, so a
    hold taken in a period that has ended gives back nothing, as a refund of a charge from
    that period would; grants before holds, so a part a hold gives back to a grant that
    expired with it is written off at once."""
    resets = rules.refresh(account, now, settings)
    entries = [expiry_entry(account, grant, now) for grant in credits.due(account, now)]
    expired = settlement.expire_due(account, now)
    notices = credits.to_notify(account, now, settings.credit_expiry_notice)
    for grant in notices:
        grant.expiring_notified_at = now
    return Update(
        resets,
        [settled.change for settled in expired],
        entries + [entry for settled in expired for entry in settled.entries],
        notices,
    )


def expiry_entry(account: AccountRow, grant: GrantRow, now: datetime) -> Entry:
    """Expire ``grant`` on the locked account: what is left of it leaves the balance."""
    left, taken = credits.close(account, grant, GrantStatus.EXPIRED, now)
    # ``amount`` is what left the balance; the part, what left the grant.
    return Entry(
        EntryType.EXPIRY,
        LedgerSource.CREDITS,
        taken,
        key=credits.expiry_key(grant.key),
        after=counters(account),
        grant_key=grant.key,
        parts=(Part(grant.key, left),),
    )


def changed_grants(account: AccountRow, before: dict[str, tuple[Any, ...]]) -> list[GrantRow]:
    """The grants this movement made or changed (``before``: each one's ``mutable()`` as
    loaded), for the store to write."""
    return [g for g in account.grants if g.new or before.get(g.key) != g.mutable()]


def _run(store: Store, movement: Movement, settings: Settings) -> results.Result:
    locked = store.lock(movement.user_id, movement.key, movement.hold_key, movement.grant_keys)
    account, now, update, changed = locked.account, locked.now, Update(), False
    grants_before: dict[str, tuple[Any, ...]] = {}
    if account is not None:
        invalid = movement.invalid(account)
        if invalid is not None:
            raise Refused(invalid)
        before = dataclasses.replace(account)
        grants_before = {g.key: g.mutable() for g in account.grants}
        now = rules.effective_now(account, locked.now)
        update = bring_up_to_date(account, now, settings)
        changed = account != before
    if locked.stored is not None:
        # Answered from the outcome alone; a due reset or expiry is still stored, as every
        # read does (unless a flag is off: then nothing is written).
        if (changed or update.holds or update.entries or update.notices) and movement.enabled(
            settings
        ) is None:
            assert account is not None
            found = events.detect(
                account, now, settings, entries=update.entries, notices=update.notices
            )
            grants = changed_grants(account, grants_before)
            store.write(
                writes_for(
                    movement.user_id,
                    None,
                    now,
                    account,
                    changed,
                    update,
                    events=found,
                    grants=grants,
                )
            )
        return replay(locked.stored, movement)
    refusal = movement.enabled(settings)
    if refusal is not None:
        raise Refused(refusal)
    if account is None:
        return _remember_not_found(store, movement, now, settings)

    before_rules = events.levels(account, now)
    decision = movement.decide(account, now, settings)
    # Credits an open hold keeps come back to the balance when it is released or expires,
    # so they count against the ceiling as if they were there.
    if account.balance_credits + rules.held(account)["credits"] > rules.MAX_BALANCE:
        raise Refused(
            results.failure(
                results.UNPROCESSABLE,
                BALANCE_LIMIT,
                f"the balance would exceed {rules.MAX_BALANCE} credits; nothing was written",
            )
        )
    remembered = None
    if movement.key is not None:
        remembered = StoredOutcome(account.id, movement.operation, decision.cost, decision.outcome)
    changed = account != before
    found = events.detect(
        account,
        now,
        settings,
        key=movement.key,
        before=before_rules,
        entries=update.entries,
        notices=update.notices,
    )
    ledger_id = store.write(
        writes_for(
            account.id,
            movement.key,
            now,
            account,
            changed,
            update,
            decision,
            remembered,
            found,
            changed_grants(account, grants_before),
        )
    )
    if decision.entry is None:
        return decision.outcome
    return {**decision.outcome, "ledger_id": ledger_id}


def writes_for(
    user_id: int,
    key: str | None,
    now: datetime,
    account: AccountRow | None,
    changed: bool,
    update: Update,
    decision: Decision | None = None,
    outcome: StoredOutcome | None = None,
    events: list[Event] | None = None,
    grants: list[GrantRow] | None = None,
) -> Writes:
    """What bringing the account up to date writes, then what the movement decided, and the
    events of both."""
    holds, entries, entry, trailing = update.holds, update.entries, None, []
    if decision is not None:
        holds, entries, entry = holds + decision.holds, entries + decision.entries, decision.entry
        trailing = decision.after
    return Writes(
        user_id,
        key,
        now,
        account=account,
        changed=changed,
        resets=update.resets,
        holds=holds,
        grants=grants or [],
        entries=entries,
        entry=entry,
        trailing=trailing,
        outcome=outcome,
        events=events or [],
    )


def _remember_not_found(
    store: Store, movement: Movement, now: datetime, settings: Settings
) -> results.Result:
    outcome = {
        **results.user_not_found(movement.user_id),
        "idempotency_key": movement.key,
        "replayed": False,
    }
    if movement.key is not None and movement.remembers_not_found:
        cost = movement.recorded_cost(settings)
        stored = StoredOutcome(movement.user_id, movement.operation, cost, outcome)
        store.write(Writes(movement.user_id, movement.key, now, outcome=stored))
    else:
        store.rollback()  # nothing to write: end the transaction the lock began
    return outcome


def replay(stored: StoredOutcome, movement: Movement) -> results.Result:
    if not movement.matches(stored):
        return conflict(movement.key, stored)
    return {**stored.response, "replayed": True}


def conflict(key: str | None, stored: StoredOutcome) -> results.Result:
    return results.failure(
        results.CONFLICT,
        results.IDEMPOTENCY_CONFLICT,
        "this idempotency key was already used for a different request "
        f"(user {stored.user_id}, {stored.operation}, cost {stored.cost})",
        idempotency_key=key,
        replayed=False,
    )
