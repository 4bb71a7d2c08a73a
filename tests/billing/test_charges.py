"""The Billing v4 charge rules, each through a real worker against PostgreSQL and Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billing.core.settings import get_settings
from tests.conftest import count_rows, ledger_rows


def test_subscription_is_drawn_first(worker, accounts, engine):
    user = accounts.subscriber()

    result = worker.charge_generation(user, "sub-1")

    assert result["ok"] is True and result["code"] == 200
    assert (result["source"], result["amount"], result["replayed"]) == ("subscription", 1, False)
    after = accounts.get(user)
    assert after.subscription_ops_used == 1
    assert after.freemium_actions_used == 0
    assert after.balance_credits == 100
    assert result["state"]["subscription"]["ops_remaining"] == 99


def test_freemium_is_drawn_second(worker, accounts):
    user = accounts.subscriber(subscription_ops_used=100)

    result = worker.charge_generation(user, "free-1")

    assert (result["source"], result["amount"]) == ("freemium", 1)
    after = accounts.get(user)
    assert (after.subscription_ops_used, after.freemium_actions_used) == (100, 1)
    assert after.balance_credits == 100


def test_credits_are_drawn_last(worker, accounts):
    user = accounts.credits_only()
    cost = get_settings().generation_cost

    result = worker.charge_generation(user, "cred-1")

    assert (result["source"], result["amount"]) == ("credits", cost)
    assert accounts.get(user).balance_credits == 100 - cost
    assert result["state"]["credits"]["balance"] == 100 - cost


def test_strict_order_over_a_whole_allowance(worker, accounts):
    limit = get_settings().freemium_limit
    cost = get_settings().generation_cost
    # A tier missing from BILLING_TIERS keeps its stored limit, so 2 stays 2.
    user = accounts.create(
        subscription_type="custom",
        subscription_end=datetime.now(UTC) + timedelta(days=3),
        subscription_ops_limit=2,
        balance_credits=cost,
    )

    sources = [worker.charge_generation(user, f"seq-{i}").get("source") for i in range(limit + 4)]

    assert sources == ["subscription"] * 2 + ["freemium"] * limit + ["credits", None]


def test_not_enough_credits_is_402_and_consumes_nothing(worker, accounts, engine):
    user = accounts.no_funds(balance_credits=3)
    before = accounts.get(user)

    result = worker.charge_generation(user, "poor-1")

    assert result["ok"] is False
    assert (result["code"], result["error"]) == (402, "not_enough_credits")
    after = accounts.get(user)
    assert (after.balance_credits, after.freemium_actions_used, after.subscription_ops_used) == (
        before.balance_credits,
        before.freemium_actions_used,
        before.subscription_ops_used,
    )
    assert ledger_rows(engine, user) == []
    assert result["state"]["credits"]["balance"] == 3


def test_admin_passes_free_and_is_recorded(worker, accounts, engine):
    user = accounts.admin(balance_credits=0)

    result = worker.charge_generation(user, "adm-1")
    assistant = worker.charge_assistant(user, "adm-2", cost=500)

    assert (result["source"], result["amount"]) == ("admin", 0)
    assert (assistant["source"], assistant["amount"]) == ("admin", 0)
    after = accounts.get(user)
    assert (after.balance_credits, after.subscription_ops_used) == (0, 0)
    rows = ledger_rows(engine, user)
    assert [(r.source, r.amount, r.operation) for r in rows] == [
        ("admin", 0, "generation"),
        ("admin", 0, "assistant"),
    ]


def test_expired_subscription_is_not_used(worker, accounts):
    user = accounts.expired_subscription()

    result = worker.charge_generation(user, "exp-1")

    assert result["source"] == "credits"
    assert accounts.get(user).subscription_ops_used == 0
    assert result["state"]["subscription"]["active"] is False
    assert result["state"]["subscription"]["ops_remaining"] == 0


def test_exhausted_subscription_is_not_used(worker, accounts):
    with_freemium = accounts.subscriber(subscription_ops_used=100)
    without = accounts.subscriber(
        subscription_ops_used=100, freemium_actions_used=get_settings().freemium_limit
    )

    first = worker.charge_generation(with_freemium, "exh-1")
    second = worker.charge_generation(without, "exh-2")

    assert (first["source"], second["source"]) == ("freemium", "credits")
    assert accounts.get(with_freemium).subscription_ops_used == 100
    assert accounts.get(without).subscription_ops_used == 100


def test_assistant_draws_credits_only(worker, accounts):
    user = accounts.subscriber()
    cost = get_settings().assistant_cost

    result = worker.charge_assistant(user, "as-1")

    assert (result["source"], result["amount"]) == ("credits", cost)
    after = accounts.get(user)
    assert (after.subscription_ops_used, after.freemium_actions_used) == (0, 0)
    assert after.balance_credits == 100 - cost


def test_assistant_402_even_with_allowances_left(worker, accounts, engine):
    user = accounts.subscriber(balance_credits=0)

    result = worker.charge_assistant(user, "as-poor")

    assert (result["code"], result["error"]) == (402, "not_enough_credits")
    after = accounts.get(user)
    assert (after.subscription_ops_used, after.freemium_actions_used) == (0, 0)
    assert ledger_rows(engine, user) == []


def test_each_charge_writes_one_ledger_row(worker, accounts, engine):
    user = accounts.credits_only()
    cost = get_settings().generation_cost

    result = worker.charge_generation(user, "row-1", meta={"job_id": "j-1"})

    (row,) = ledger_rows(engine, user)
    assert row.id == result["ledger_id"]
    assert (row.entry_type, row.source, row.operation) == ("charge", "credits", "generation")
    assert (row.amount, row.idempotency_key) == (cost, "row-1")
    assert row.balance_credits_after == 100 - cost
    assert row.freemium_actions_used_after == get_settings().freemium_limit
    assert row.meta == {"job_id": "j-1"}


def test_custom_generation_cost(worker, accounts):
    user = accounts.credits_only()

    result = worker.charge_generation(user, "cg-1", cost=37)

    assert (result["source"], result["amount"]) == ("credits", 37)
    assert accounts.get(user).balance_credits == 63


def test_custom_generation_cost_does_not_change_allowance_units(worker, accounts):
    user = accounts.freemium_only()

    result = worker.charge_generation(user, "cg-2", cost=37)

    assert (result["source"], result["amount"]) == ("freemium", 1)


def test_custom_assistant_cost(worker, accounts):
    user = accounts.credits_only()

    result = worker.charge_assistant(user, "ca-1", cost=99)
    too_much = worker.charge_assistant(user, "ca-2", cost=2)

    assert (result["source"], result["amount"]) == ("credits", 99)
    assert too_much["code"] == 402
    assert accounts.get(user).balance_credits == 1


def test_unknown_user_is_404_and_writes_no_ledger(worker, engine):
    result = worker.charge_generation(987654, "ghost-1")

    assert (result["code"], result["error"]) == (404, "user_not_found")
    assert count_rows(engine, "credits_ledger") == 0


def test_billing_disabled_answers_400_and_writes_nothing(worker, accounts, engine, settings_env):
    user = accounts.credits_only()
    settings_env(v4_enabled="false")

    results = [
        worker.charge_generation(user, "off-1"),
        worker.charge_assistant(user, "off-2"),
        worker.state(user),
    ]

    assert [(r["code"], r["error"]) for r in results] == [(400, "billing_disabled")] * 3
    assert accounts.get(user).balance_credits == 100
    assert count_rows(engine, "credits_ledger") == 0
    assert count_rows(engine, "billing_requests") == 0
    settings_env(v4_enabled="true")
    assert worker.charge_generation(user, "off-1")["replayed"] is False
