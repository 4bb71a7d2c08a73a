"""Exactly once per key: the first outcome of a key is final."""

from __future__ import annotations

from billing.settings import get_settings
from tests.conftest import count_rows, ledger_rows


def test_duplicate_key_charges_once(worker, accounts, engine):
    user = accounts.credits_only()
    cost = get_settings().generation_cost

    first = worker.charge_generation(user, "dup-1")
    second = worker.charge_generation(user, "dup-1")

    assert first["replayed"] is False and second["replayed"] is True
    assert {**second, "replayed": False} == first
    assert accounts.get(user).balance_credits == 100 - cost
    assert len(ledger_rows(engine, user)) == 1


def test_explicit_default_cost_is_the_same_request(worker, accounts):
    user = accounts.credits_only()

    first = worker.charge_assistant(user, "same-cost")
    again = worker.charge_assistant(user, "same-cost", cost=get_settings().assistant_cost)

    assert again["replayed"] is True and again["ledger_id"] == first["ledger_id"]


def test_rejection_is_remembered_even_after_funds_arrive(worker, accounts, engine):
    user = accounts.no_funds()
    first = worker.charge_generation(user, "late-funds")
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE users SET balance_credits = 500 WHERE id = {user}")

    again = worker.charge_generation(user, "late-funds")
    fresh = worker.charge_generation(user, "late-funds-2")

    assert (first["code"], again["code"], again["replayed"]) == (402, 402, True)
    assert fresh["code"] == 200 and fresh["source"] == "credits"


def test_unknown_user_outcome_is_remembered(worker, accounts):
    first = worker.charge_generation(55555, "ghost")
    accounts.create(id=55555, balance_credits=100)

    again = worker.charge_generation(55555, "ghost")

    assert (first["code"], again["code"], again["replayed"]) == (404, 404, True)


def test_same_key_for_a_different_request_is_409(worker, accounts, engine):
    user = accounts.credits_only()
    other = accounts.credits_only()
    worker.charge_generation(user, "k-409", cost=5)

    conflicts = [
        worker.charge_generation(other, "k-409", cost=5),
        worker.charge_assistant(user, "k-409", cost=5),
        worker.charge_generation(user, "k-409", cost=6),
        worker.charge_generation(user, "k-409"),
    ]

    assert [(c["code"], c["error"]) for c in conflicts] == [(409, "idempotency_conflict")] * 4
    assert accounts.get(user).balance_credits == 95
    assert accounts.get(other).balance_credits == 100
    assert count_rows(engine, "credits_ledger") == 1


def test_invalid_request_is_not_remembered(worker, accounts, engine):
    user = accounts.credits_only()

    bad = worker.charge_generation(user, "fix-me", cost=0)
    good = worker.charge_generation(user, "fix-me", cost=3)

    assert bad["code"] == 422 and bad["field"] == "cost"
    assert good["code"] == 200 and good["replayed"] is False
    assert count_rows(engine, "billing_requests") == 1
