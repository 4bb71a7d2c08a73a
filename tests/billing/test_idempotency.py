"""Exactly once per key: the first outcome of a key is final."""

from __future__ import annotations

from billing.core.settings import get_settings
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
    ]
    # The producer passed no cost this time: it asks for the same job, whatever it cost.
    same_job = worker.charge_generation(user, "k-409")

    assert [(c["code"], c["error"]) for c in conflicts] == [(409, "idempotency_conflict")] * 3
    assert (same_job["code"], same_job["replayed"], same_job["amount"]) == (200, True, 5)
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


# --- a key with an outcome answers it, whatever the configuration says now ----------------


def test_resend_after_the_configured_cost_changed_answers_the_first_outcome(
    worker, accounts, engine, settings_env
):
    user = accounts.no_funds()
    worker.grant(user, 100, "fund-cost-moved")  # funded through the ledger, for the audit
    first = worker.charge_generation(user, "cost-moved")  # the configured cost, 10
    settings_env(generation_cost="25")

    again = worker.charge_generation(user, "cost-moved")
    explicit_same = worker.charge_generation(user, "cost-moved", cost=10)
    explicit_other = worker.charge_generation(user, "cost-moved", cost=25)
    new_key = worker.charge_generation(user, "cost-new")

    assert (first["amount"], again["replayed"], again["ledger_id"]) == (
        10,
        True,
        first["ledger_id"],
    )
    assert explicit_same["replayed"] is True and explicit_same["ledger_id"] == first["ledger_id"]
    assert (explicit_other["code"], explicit_other["error"]) == (409, "idempotency_conflict")
    assert new_key["amount"] == 25  # the new cost applies to new keys
    assert accounts.get(user).balance_credits == 100 - 10 - 25
    # (the account's freemium counter was set by hand; its credits moved only through tasks)
    audited = worker.audit(user)["mismatches"]
    assert [m for m in audited if m["field"] == "balance_credits"] == []


def test_resend_while_billing_is_disabled_answers_the_first_outcome(
    worker, accounts, engine, settings_env
):
    user = accounts.credits_only(balance_credits=100)
    paid = worker.charge_generation(user, "before-off")
    broke = worker.charge_generation(accounts.no_funds(), "before-off-402")
    settings_env(v4_enabled="false")

    again = worker.charge_generation(user, "before-off")
    again_402 = worker.charge_generation(broke["state"]["user_id"], "before-off-402")
    new_key = worker.charge_generation(user, "while-off")

    assert again["replayed"] is True and again["ledger_id"] == paid["ledger_id"]
    assert (again_402["code"], again_402["replayed"]) == (402, True)
    assert (new_key["code"], new_key["error"]) == (400, "billing_disabled")
    assert count_rows(engine, "billing_requests") == 2  # the refused key is not remembered


def test_resend_of_a_subscription_whose_tier_was_removed_answers_the_first_outcome(
    worker, accounts, engine, settings_env
):
    user = accounts.credits_only()
    first = worker.subscribe(user, "premium", "sub-gone")
    settings_env(tiers='{"basic": 30, "standard": 100}')

    again = worker.subscribe(user, "premium", "sub-gone")
    new_key = worker.subscribe(user, "premium", "sub-gone-2")
    other_days = worker.subscribe(user, "premium", "sub-gone", days=31)

    assert first["code"] == 200
    assert again["replayed"] is True and again["ledger_id"] == first["ledger_id"]
    assert (new_key["code"], new_key["field"]) == (422, "tier")
    assert other_days["code"] == 409
    assert len([r for r in ledger_rows(engine, user) if r.entry_type == "subscription"]) == 1
