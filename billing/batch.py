"""A batch of charges (or reserves) in one message: each item decided exactly as its own
message would be.

Every item runs the one frame (``billing.frame``) in a transaction of its own, in the order
given, so items of one account are applied in order, no lock is ever held across accounts or
longer than one movement holds it, and one item's 402, 404, 409 or 422 never touches
another's outcome. Its key, replays and conflicts are the single message's: an item answers
what ``billing.charge_generation`` with the same arguments would. What a batch saves is
Celery's per-message work (broker, pool, result, task events), paid once for all its items.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from pydantic import BaseModel

from billing import charges, frame, holds, results
from billing.settings import Settings
from billing.store import Store
from billing.validation import (
    ChargeArgs,
    ChargeItem,
    InvalidRequest,
    ReserveArgs,
    ReserveItem,
)
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


def run(
    store: Store,
    items: list[Any],
    kind: tuple[type[ChargeItem], Movement],
    settings: Settings,
    include_state: bool = True,
) -> list[results.Result]:
    """Every item's answer, in item order."""
    parser, movement_of = kind
    answers = []
    for raw in items:
        try:
            if not isinstance(raw, dict):
                raise InvalidRequest("item", "each item must be an object of keyword arguments")
            item = parser.parse((), raw)
        except InvalidRequest as exc:
            answers.append(exc.result())
            continue
        answer = frame.replaying_races(partial(frame.run, store, movement_of(item), settings))
        answers.append(results.shaped(answer, include_state))
    return answers
