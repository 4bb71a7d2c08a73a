"""The same key racing in two transactions, driven step by step on the real database."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.orm import Session

from billing import charges
from billing.dml import KeyRaced
from billing.settings import get_settings
from billing.validation import ChargeArgs
from models import Operation
from worker import app


def _charge(session: Session, user_id: int, key: str):
    args = ChargeArgs.parse((), {"user_id": user_id, "idempotency_key": key})
    return charges.charge(session, Operation.GENERATION, args, get_settings())


@pytest.mark.parametrize("second_user_exists", [True, False])
def test_key_taken_by_a_concurrent_transaction_raises_and_keeps_nothing(
    engine, accounts, second_user_exists
):
    first_user = accounts.credits_only()
    second_user = accounts.credits_only() if second_user_exists else 999_001
    outcome: dict[str, BaseException | None] = {}

    with Session(engine) as first, first.begin():
        assert _charge(first, first_user, "shared")["ok"] is True

        def second_charge() -> None:
            try:
                with Session(engine) as second, second.begin():
                    _charge(second, second_user, "shared")
                outcome["error"] = None
            except BaseException as exc:
                outcome["error"] = exc

        racer = threading.Thread(target=second_charge)
        racer.start()
        racer.join(timeout=1)
        assert racer.is_alive(), "the second insert should wait for the first transaction"
    racer.join(timeout=10)

    assert isinstance(outcome["error"], KeyRaced)
    if second_user_exists:
        assert accounts.get(second_user).balance_credits == 100
    with Session(engine) as session:
        replay = _charge(session, second_user, "shared")
    assert (replay["code"], replay["error"]) == (409, "idempotency_conflict")


def test_worker_answers_a_raced_key_with_the_replay(worker, accounts):
    # Through the worker the KeyRaced path ends in a replay or a 409, never in a failure.
    user = accounts.credits_only(balance_credits=1000)
    other = accounts.credits_only(balance_credits=1000)

    pending = [
        app.send_task(
            "billing.charge_generation",
            kwargs={"user_id": u, "idempotency_key": f"twin-{i}"},
        )
        for i in range(30)
        for u in (user, other)
    ]
    outcomes = [p.get(timeout=30) for p in pending]

    by_key: dict[str, list[int]] = {}
    for i, o in enumerate(outcomes):
        by_key.setdefault(f"twin-{i // 2}", []).append(o["code"])
    assert all(sorted(codes) == [200, 409] for codes in by_key.values())
    spent = 2000 - accounts.get(user).balance_credits - accounts.get(other).balance_credits
    assert spent == 30 * get_settings().generation_cost
