"""A batch of charges (or reserves) in one message: each item decided exactly as its own
message would be.

Every item runs the one frame (``billing.movements.frame``) in a transaction of its own, in
the order given, so items of one account are applied in order, no lock is ever held across
accounts or longer than one movement holds it, and one item's 402, 404, 409 or 422 never
touches another's outcome. Its key, replays and conflicts are the single message's: an item answers
what ``billing.charge_generation`` with the same arguments would. What a batch saves is
Celery's per-message work (broker, pool, result, task events), paid once for all its items.

A batch must answer inside its time limit: killed by it, it would be redelivered and killed
again, forever. So it starts an item only while the item's longest wait for its account's lock
still ends before the ``deadline``; an item whose lock wait timed out, the later items of its
account (they would wait again, and must not overtake it) and the items past the deadline are
answered 503 with ``retry: true`` (``results.not_done``), with nothing written for them. Items
already decided keep their answers; the producer sends the others again, by the same keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from psycopg.errors import LockNotAvailable, QueryCanceled
from pydantic import BaseModel

from billing.core import results
from billing.core.settings import Settings
from billing.core.validation import (
    ChargeArgs,
    ChargeBatchArgs,
    ChargeItem,
    InvalidRequest,
    ReserveArgs,
    ReserveBatchArgs,
    ReserveItem,
)
from billing.movements import charges, frame, holds
from billing.movements.store import Store
from models import Operation

Movement = Callable[[Any], frame.Movement]


def _charge(item: ChargeItem) -> frame.Movement:
    args = ChargeArgs.model_construct(**_fields(item, ChargeArgs))
    return charges.Charge(Operation(item.operation), args)


def _reserve(item: ReserveItem) -> frame.Movement:
    args = ReserveArgs.model_construct(**_fields(item, ReserveArgs))
    return holds.Reserve(Operation(item.operation), args)


def _fields(item: BaseModel, into: type[BaseModel]) -> dict[str, Any]:
    """The item's validated fields that the single message's arguments have."""
    fields = type(item).model_fields
    return {name: getattr(item, name) for name in into.model_fields if name in fields}


CHARGES: tuple[type[ChargeItem], Movement] = (ChargeItem, _charge)
RESERVES: tuple[type[ReserveItem], Movement] = (ReserveItem, _reserve)

# What a batch keeps of its time limit for what follows its last item: publishing the events
# of up to 100 accounts, storing the result, one log line per item.
MARGIN_SECONDS = 1.0
MARGIN_SHARE = 0.1


def deadline(started: float, time_limit: float | None) -> float | None:
    """When (``time.monotonic()``) a batch that started at ``started`` must have finished its
    items, under a time limit of ``time_limit`` seconds (None: no limit)."""
    if time_limit is None:
        return None
    return started + time_limit - max(MARGIN_SECONDS, MARGIN_SHARE * time_limit)


def lock_wait(settings: Settings) -> float:
    """The longest one item can wait for its account's lock: the lock timeout, or the
    statement timeout when that is shorter (0 means off, for either)."""
    bounds = [ms for ms in (settings.db_lock_timeout_ms, settings.db_statement_timeout_ms) if ms]
    return min(bounds, default=0) / 1000


def run(
    store: Store,
    items: list[Any],
    kind: tuple[type[ChargeItem], Movement],
    settings: Settings,
    include_state: bool = True,
    deadline: float | None = None,
) -> list[results.Result]:
    """Every item's answer, in item order; none started that could end past ``deadline``."""
    parser, movement_of = kind
    wait = lock_wait(settings)
    answers: list[results.Result] = []
    blocked: set[int] = set()  # accounts whose lock an earlier item did not get
    attempted = False
    for raw in items:
        try:
            if not isinstance(raw, dict):
                raise InvalidRequest("item", "each item must be an object of keyword arguments")
            item = parser.parse((), raw)
        except InvalidRequest as exc:
            answers.append(exc.result())
            continue
        key = item.idempotency_key
        if item.user_id in blocked:
            answers.append(
                results.not_done(
                    results.NOT_ATTEMPTED,
                    "not attempted: an earlier item of this account in the batch did not get"
                    " the account's lock, and items of one account apply in order",
                    key,
                )
            )
            continue
        # The first item always runs, so a batch makes progress even under a time limit too
        # short for one lock wait.
        if attempted and deadline is not None and time.monotonic() + wait > deadline:
            answers.append(
                results.not_done(
                    results.NOT_ATTEMPTED,
                    "not attempted: the batch would have outrun its time limit",
                    key,
                )
            )
            continue
        attempted = True
        try:
            answer = frame.replaying_races(frame.run, store, movement_of(item), settings)
        except (LockNotAvailable, QueryCanceled):
            # The frame rolled its transaction back: nothing of this item was written. A
            # statement timeout shorter than the lock timeout ends the lock wait first
            # (``lock_wait``); let through, it would retry the whole batch, and wait again.
            blocked.add(item.user_id)
            answer = results.not_done(
                results.LOCK_TIMEOUT,
                "the account's row lock was not granted within the lock timeout"
                " (BILLING_DB_LOCK_TIMEOUT_MS, or BILLING_DB_STATEMENT_TIMEOUT_MS if shorter)",
                key,
            )
        answers.append(results.shaped(answer, include_state))
    return answers


def charge_batch(
    store: Store, args: ChargeBatchArgs, settings: Settings, deadline: float | None = None
) -> results.Result:
    """``billing.charge_batch``: every charge's answer, in item order."""
    answers = run(store, args.charges, CHARGES, settings, args.include_state, deadline)
    return results.success(results=answers)


def reserve_batch(
    store: Store, args: ReserveBatchArgs, settings: Settings, deadline: float | None = None
) -> results.Result:
    """``billing.reserve_batch``: every hold's answer, in item order."""
    answers = run(store, args.reserves, RESERVES, settings, args.include_state, deadline)
    return results.success(results=answers)
