"""billing.refund: give back what a failed generation took, at most once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billing.core.settings import get_settings
from tests.conftest import ledger_rows, shift_clock


def test_refund_of_a_credits_charge_returns_the_credits(worker, accounts, engine):
    user = accounts.credits_only()
    charge = worker.charge_generation(user, "gen-c", cost=30)

    result = worker.refund("gen-c", reason="generation failed")

    assert (result["code"], result["source"], result["amount"], result["restored"]) == (
        200,
        "credits",
        30,
        True,
    )
    assert result["charge_ledger_id"] == charge["ledger_id"]
    assert accounts.get(user).balance_credits == 100
    refund_row = ledger_rows(engine, user)[-1]
    assert (refund_row.entry_type, refund_row.refund_of_id) == ("refund", charge["ledger_id"])
    assert refund_row.meta == {"reason": "generation failed"}


def test_refund_of_a_subscription_charge_returns_the_operation(worker, accounts):
    user = accounts.subscriber()
    worker.charge_generation(user, "gen-s")

    result = worker.refund("gen-s")

    assert (result["source"], result["amount"]) == ("subscription", 1)
    assert accounts.get(user).subscription_ops_used == 0


def test_refund_of_a_freemium_charge_returns_the_action(worker, accounts):
    user = accounts.freemium_only()
    worker.charge_generation(user, "gen-f")

    result = worker.refund("gen-f")

    assert (result["source"], result["amount"]) == ("freemium", 1)
    assert accounts.get(user).freemium_actions_used == 0


def test_refund_of_an_admin_charge_returns_nothing_and_succeeds(worker, accounts, engine):
    user = accounts.admin()
    worker.charge_generation(user, "gen-a")

    result = worker.refund("gen-a")

    assert (result["ok"], result["source"], result["amount"], result["restored"]) == (
        True,
        "admin",
        0,
        False,
    )
    assert [r.entry_type for r in ledger_rows(engine, user)] == ["charge", "refund"]


def test_refund_of_a_hold_captured_with_amount_0_says_nothing_was_charged(worker, accounts, engine):
    user = accounts.credits_only()
    worker.reserve_generation(user, "kept-nothing", cost=10)
    captured = worker.capture("kept-nothing", amount=0)

    result = worker.refund("kept-nothing")

    assert (result["code"], result["source"], result["amount"], result["restored"]) == (
        200,
        "credits",
        0,
        False,
    )
    assert result["charge_ledger_id"] == captured["ledger_id"]
    assert "captured with amount 0" in result["note"]
    assert "nothing was charged" in result["note"]
    assert "period" not in result["note"]
    assert accounts.get(user).balance_credits == 100
    assert worker.refund("kept-nothing") == {**result, "replayed": True}


def test_a_charge_is_refunded_at_most_once(worker, accounts, engine):
    user = accounts.credits_only()
    worker.charge_assistant(user, "as-r", cost=10)

    first = worker.refund("as-r")
    second = worker.refund("as-r", reason="asked twice")

    assert (first["replayed"], second["replayed"]) == (False, True)
    assert second["ledger_id"] == first["ledger_id"]
    assert accounts.get(user).balance_credits == 100
    assert [r.entry_type for r in ledger_rows(engine, user)] == ["charge", "refund"]


def test_refund_of_an_unknown_key_is_404_and_not_remembered(worker, accounts):
    user = accounts.credits_only()

    early = worker.refund("not-yet")
    worker.charge_assistant(user, "not-yet", cost=5)
    late = worker.refund("not-yet")

    assert (early["code"], early["error"]) == (404, "charge_not_found")
    assert (late["code"], late["amount"]) == (200, 5)


def test_refund_of_a_rejected_charge_is_404(worker, accounts):
    user = accounts.no_funds()
    assert worker.charge_generation(user, "was-402")["code"] == 402

    result = worker.refund("was-402")

    assert (result["code"], result["error"]) == (404, "charge_not_found")


def test_refund_across_a_reset_returns_nothing(worker, accounts, engine):
    user = accounts.freemium_only()
    worker.charge_generation(user, "old-period")
    shift_clock(engine, 31, [user])  # the period the action was taken from has ended

    result = worker.refund("old-period")

    assert (result["code"], result["amount"], result["restored"]) == (200, 0, False)
    assert "ended" in result["note"]
    assert accounts.get(user).freemium_actions_used == 0  # reset, and not pushed below zero
    assert result["state"]["freemium"]["remaining"] == get_settings().freemium_limit


def test_refund_in_a_later_period_leaves_the_new_period_alone(worker, accounts, engine):
    user = accounts.subscriber(subscription_end=datetime.now(UTC) + timedelta(days=90))
    worker.charge_generation(user, "s-old")
    shift_clock(engine, 31, [user])
    assert worker.charge_generation(user, "s-new")["source"] == "subscription"

    result = worker.refund("s-old")

    assert result["amount"] == 0
    assert accounts.get(user).subscription_ops_used == 1


def test_refund_past_the_balance_ceiling_is_refused_writes_nothing_and_can_come_again(
    worker, accounts, engine
):
    user = accounts.credits_only(balance_credits=1000)
    worker.charge_generation(user, "gen-ceiling", cost=500)
    with engine.begin() as conn:  # the balance grew meanwhile, to just under the ceiling
        conn.exec_driver_sql(f"UPDATE users SET balance_credits = 2147483500 WHERE id = {user}")

    refused = worker.refund("gen-ceiling")

    assert (refused["ok"], refused["code"], refused["error"]) == (False, 422, "balance_limit")
    assert accounts.get(user).balance_credits == 2147483500
    assert [r.entry_type for r in ledger_rows(engine, user)] == ["charge"]
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE users SET balance_credits = 100 WHERE id = {user}")
    again = worker.refund("gen-ceiling")
    assert (again["code"], again["amount"], again["replayed"]) == (200, 500, False)
    assert accounts.get(user).balance_credits == 600
