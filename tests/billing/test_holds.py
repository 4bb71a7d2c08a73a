"""Holds through a real worker: reserve, capture, release, expiry, and what they leave behind."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest

from billing.core.settings import get_settings
from tests.conftest import count_rows, hold_rows, ledger_rows, shift_clock


def _funded(worker, make, credits: int) -> int:
    """An account whose credits came in through the ledger, so the audit can explain them."""
    user = make(balance_credits=0)
    worker.grant(user, credits, f"fund-{user}")
    return user


@pytest.mark.parametrize(
    ("kind", "source", "amount"),
    [
        ("subscriber", "subscription", 1),
        ("freemium_only", "freemium", 1),
        ("credits_only", "credits", 10),
        ("admin", "admin", 0),
    ],
)
def test_a_reserve_takes_what_a_charge_would_take(worker, accounts, engine, kind, source, amount):
    user = getattr(accounts, kind)()

    result = worker.reserve_generation(user, f"r-{kind}")

    assert (result["ok"], result["code"], result["source"], result["amount"]) == (
        True,
        200,
        source,
        amount,
    )
    assert result["replayed"] is False and result["ledger_id"] > 0
    assert result["hold"]["status"] == "held"
    held = result["state"]["held"]
    assert held == {
        "subscription_ops": amount if source == "subscription" else 0,
        "freemium_actions": amount if source == "freemium" else 0,
        "credits": amount if source == "credits" else 0,
    }
    (hold,) = hold_rows(engine, user)
    assert (hold.status, hold.source, hold.amount) == ("held", source, amount)
    (row,) = ledger_rows(engine, user)
    assert (row.entry_type, row.hold_key, row.amount) == ("hold", f"r-{kind}", amount)
    # The hold's default time to live, from the database's clock at the reserve.
    expires = datetime.fromisoformat(result["hold"]["expires_at"])
    assert expires - hold.created_at == timedelta(seconds=get_settings().hold_ttl_seconds)


def test_what_a_hold_takes_is_gone_from_what_remains(worker, accounts):
    user = accounts.credits_only(balance_credits=25)

    worker.reserve_generation(user, "r1")
    worker.reserve_generation(user, "r2")
    third = worker.reserve_generation(user, "r3")
    charge = worker.charge_assistant(user, "c1", cost=6)

    assert third["code"] == 402 and third["error"] == "not_enough_credits"
    assert charge["code"] == 402  # 5 credits left; the holds keep 20
    state = worker.state(user)["state"]
    assert state["credits"]["balance"] == 5 and state["held"]["credits"] == 20


def test_an_assistant_reserve_draws_credits_only(worker, accounts):
    user = accounts.freemium_only(balance_credits=10)

    result = worker.reserve_assistant(user, "ra", cost=4)

    assert (result["source"], result["amount"]) == ("credits", 4)
    assert result["state"]["freemium"]["used"] == 0


def test_a_reserve_with_nothing_left_is_402_takes_nothing_and_is_remembered(
    worker, accounts, engine
):
    user = accounts.no_funds()

    first = worker.reserve_generation(user, "r-broke")
    worker.grant(user, 100, "topup")
    again = worker.reserve_generation(user, "r-broke")

    assert (first["code"], first["error"]) == (402, "not_enough_credits")
    assert again == {**first, "replayed": True}
    assert count_rows(engine, "billing_holds") == 0


def test_a_reserve_key_replays_and_shares_the_charges_namespace(worker, accounts):
    user = accounts.credits_only()

    first = worker.reserve_generation(user, "shared", ttl_seconds=60)
    again = worker.reserve_generation(user, "shared", ttl_seconds=60)
    charge_with_hold_key = worker.charge_generation(user, "shared")
    worker.charge_generation(user, "a-charge")
    reserve_with_charge_key = worker.reserve_generation(user, "a-charge")

    assert again == {**first, "replayed": True}
    for conflict in (charge_with_hold_key, reserve_with_charge_key):
        assert (conflict["code"], conflict["error"]) == (409, "idempotency_conflict")
    assert accounts.get(user).balance_credits == 80


def test_ttl_and_cost_are_validated_and_a_422_is_not_remembered(worker, accounts, engine):
    user = accounts.credits_only()

    for bad in ({"ttl_seconds": 0}, {"ttl_seconds": 86_401}, {"ttl_seconds": "60"}, {"cost": 0}):
        result = worker.reserve_generation(user, "r-bad", **bad)
        assert (result["code"], result["error"], result["field"]) == (
            422,
            "invalid_request",
            next(iter(bad)),
        )
    ok = worker.reserve_generation(user, "r-bad", ttl_seconds=86_400)

    (hold,) = hold_rows(engine, user)
    assert ok["code"] == 200
    assert hold.expires_at - hold.created_at == timedelta(days=1)


def test_capture_keeps_the_hold_and_replays(worker, accounts, engine):
    user = accounts.credits_only()
    reserve = worker.reserve_generation(user, "job-1")

    captured = worker.capture("job-1")
    again = worker.capture("job-1")

    assert (captured["ok"], captured["source"], captured["amount"], captured["returned"]) == (
        True,
        "credits",
        10,
        0,
    )
    assert captured["hold"]["status"] == "captured"
    assert captured["ledger_id"] > reserve["ledger_id"]
    assert again == {**captured, "replayed": True}
    assert captured["state"]["credits"]["balance"] == 90
    assert captured["state"]["held"]["credits"] == 0
    (hold,) = hold_rows(engine, user)
    assert (hold.status, hold.captured) == ("captured", 10) and hold.settled_at is not None
    rows = ledger_rows(engine, user)
    assert [(r.entry_type, r.amount, r.idempotency_key) for r in rows] == [
        ("hold", 10, "job-1"),
        ("capture", 10, "billing:settle:job-1"),
    ]


def test_a_partial_capture_of_credits_returns_the_rest_at_once(worker, accounts, engine):
    user = accounts.credits_only()
    worker.reserve_generation(user, "job-p", cost=10)

    captured = worker.capture("job-p", amount=7)
    different = worker.capture("job-p", amount=5)

    assert (captured["amount"], captured["returned"]) == (7, 3)
    assert accounts.get(user).balance_credits == 93
    assert (different["code"], different["error"]) == (409, "idempotency_conflict")
    rows = ledger_rows(engine, user)
    assert [(r.entry_type, r.amount, r.balance_credits_after) for r in rows] == [
        ("hold", 10, 90),
        ("release", 3, 93),  # the rest, written just before the capture it belongs to
        ("capture", 7, 93),  # moves nothing: the account as the rest left it
    ]
    assert rows[1].meta == {"rest_of_capture": True}


def test_capture_amounts_are_checked_and_a_422_is_not_remembered(worker, accounts):
    subscriber = accounts.subscriber()
    payer = accounts.credits_only()
    worker.reserve_generation(subscriber, "job-s")
    worker.reserve_generation(payer, "job-c", cost=10)

    whole_only = worker.capture("job-s", amount=0)
    too_much = worker.capture("job-c", amount=11)
    negative = worker.capture("job-c", amount=-1)

    assert (whole_only["code"], whole_only["field"]) == (422, "amount")
    assert "captured whole" in whole_only["message"]
    assert (too_much["code"], too_much["field"]) == (422, "amount")
    assert "above the held amount (10)" in too_much["message"]
    assert (negative["code"], negative["field"]) == (422, "amount")
    # Nothing was remembered: the same keys capture now.
    assert worker.capture("job-s", amount=1)["amount"] == 1
    assert worker.capture("job-c", amount=0)["returned"] == 10
    assert accounts.get(payer).balance_credits == 100


def test_a_capture_amount_the_hold_rules_out_is_422_in_any_state_and_not_remembered(
    worker, accounts, engine
):
    payer = accounts.credits_only()
    subscriber = accounts.subscriber()
    worker.reserve_generation(payer, "job-gone", cost=10)
    worker.reserve_generation(payer, "job-kept", cost=10)
    worker.reserve_generation(subscriber, "job-sub")
    worker.release("job-gone")
    worker.release("job-sub")
    kept = worker.capture("job-kept", amount=4)
    remembered = count_rows(engine, "billing_requests")

    above_released = worker.capture("job-gone", amount=11)
    above_captured = worker.capture("job-kept", amount=11)
    part_of_released_allowance = worker.capture("job-sub", amount=0)

    for refused in (above_released, above_captured, part_of_released_allowance):
        assert (refused["code"], refused["error"], refused["field"]) == (
            422,
            "invalid_request",
            "amount",
        ), refused
    assert "above the held amount (10)" in above_released["message"]
    assert "captured whole" in part_of_released_allowance["message"]
    assert count_rows(engine, "billing_requests") == remembered
    # Nothing was remembered under the keys: a valid amount gets the hold's own answer.
    closed = worker.capture("job-gone", amount=5)
    assert (closed["code"], closed["error"], closed["status"]) == (409, "hold_closed", "released")
    assert worker.capture("job-gone", amount=5) == {**closed, "replayed": True}
    assert worker.capture("job-kept", amount=4) == {**kept, "replayed": True}
    assert worker.capture("job-sub")["status"] == "released"
    assert accounts.get(payer).balance_credits == 96


def test_release_gives_everything_back_and_a_closed_hold_stays_closed(worker, accounts, engine):
    user = accounts.freemium_only(balance_credits=50)
    worker.reserve_generation(user, "job-r")
    worker.reserve_assistant(user, "job-k", cost=5)
    worker.capture("job-k")

    released = worker.release("job-r", reason="gpu out of memory")
    again = worker.release("job-r")
    capture_after_release = worker.capture("job-r")
    release_after_capture = worker.release("job-k")

    assert (released["source"], released["amount"], released["hold"]["status"]) == (
        "freemium",
        1,
        "released",
    )
    assert released["state"]["freemium"]["used"] == 0
    assert again == {**released, "replayed": True}
    assert (capture_after_release["code"], capture_after_release["error"]) == (409, "hold_closed")
    assert capture_after_release["status"] == "released"
    assert (release_after_capture["code"], release_after_capture["status"]) == (409, "captured")
    assert worker.capture("job-r") == {**capture_after_release, "replayed": True}
    release_row = next(r for r in ledger_rows(engine, user) if r.entry_type == "release")
    assert release_row.meta == {"reason": "gpu out of memory"}
    assert accounts.get(user).balance_credits == 45


def test_an_unknown_hold_is_404_and_not_remembered(worker, accounts):
    user = accounts.credits_only()

    early_capture = worker.capture("late")
    early_release = worker.release("late-2")
    worker.reserve_generation(user, "late")
    worker.charge_generation(user, "a-charge")

    assert (early_capture["code"], early_capture["error"]) == (404, "hold_not_found")
    assert (early_release["code"], early_release["error"]) == (404, "hold_not_found")
    assert worker.capture("late")["code"] == 200
    assert worker.capture("a-charge")["error"] == "hold_not_found"  # a charge is no hold


def test_a_hold_expires_lazily_on_any_movement_or_read(worker, accounts, engine):
    user = _funded(worker, accounts.freemium_only, 30)
    worker.reserve_generation(user, "slow", ttl_seconds=1)
    worker.reserve_assistant(user, "slow-credits", cost=5, ttl_seconds=1)
    worker.reserve_assistant(user, "kept", cost=5, ttl_seconds=600)
    time.sleep(1.2)

    state = worker.state(user)["state"]
    late_capture = worker.capture("slow")

    assert state["freemium"]["used"] == 0
    assert state["credits"]["balance"] == 25
    assert state["held"] == {"subscription_ops": 0, "freemium_actions": 0, "credits": 5}
    assert (late_capture["code"], late_capture["status"]) == (409, "expired")
    statuses = {h.idempotency_key: h.status for h in hold_rows(engine, user)}
    assert statuses == {"slow": "expired", "slow-credits": "expired", "kept": "held"}
    expiries = [r for r in ledger_rows(engine, user) if r.entry_type == "expire"]
    assert sorted((r.hold_key, r.amount) for r in expiries) == [("slow", 1), ("slow-credits", 5)]
    audit = worker.audit(user)
    assert audit["clean"] is True, audit["mismatches"]


def test_expire_holds_sweeps_what_nobody_touched_and_can_run_twice(worker, accounts, engine):
    users = [_funded(worker, accounts.freemium_only, 100) for _ in range(3)]
    for n, user in enumerate(users):
        worker.reserve_assistant(user, f"abandoned-{n}", cost=10, ttl_seconds=1)
    worker.reserve_assistant(users[0], "alive", cost=10, ttl_seconds=600)
    time.sleep(1.2)

    first = worker.expire_holds()
    second = worker.expire_holds()

    assert (first["ok"], first["code"], first["expired"]) == (True, 200, 3)
    assert second["expired"] == 0
    assert [accounts.get(u).balance_credits for u in users] == [90, 100, 100]
    assert sum(1 for r in ledger_rows(engine) if r.entry_type == "expire") == 3
    audit = worker.audit()
    assert audit["clean"] is True, audit["mismatches"]


def test_holds_crossing_a_period_reset(worker, accounts, engine):
    user = accounts.freemium_only(balance_credits=0)
    for key in ("across-release", "across-capture", "across-expire"):
        worker.reserve_generation(user, key, ttl_seconds=86_400)
    # Thirty-one days pass for this account (its holds with it): the period they were taken
    # in has ended, and the reset gives those actions back. A hold lives a day at most, so
    # these were taken at the very end of that period: two are still open, one just expired.
    shift_clock(engine, 31, [user])
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE billing_holds SET expires_at = now() + CASE idempotency_key"
            " WHEN 'across-expire' THEN interval '-1 second' ELSE interval '1 hour' END"
        )
    released = worker.release("across-release")
    captured = worker.capture("across-capture")

    assert (released["amount"], released["returned"]) == (0, 0)
    assert "period the hold was taken in has ended" in released["note"]
    assert (captured["amount"], captured["returned"]) == (1, 0)
    assert released["state"]["freemium"]["used"] == 0
    assert captured["state"]["held"]["freemium_actions"] == 0
    expired = next(r for r in ledger_rows(engine, user) if r.entry_type == "expire")
    assert expired.amount == 0
    # A charge in the new period takes a fresh action.
    assert worker.charge_generation(user, "after")["state"]["freemium"]["used"] == 1
    assert worker.audit(user)["clean"] is True


def test_a_captured_hold_is_refunded_like_a_charge(worker, accounts, engine):
    user = _funded(worker, accounts.freemium_only, 100)
    worker.reserve_assistant(user, "job-ref", cost=10)
    worker.reserve_assistant(user, "job-open", cost=10)
    captured = worker.capture("job-ref", amount=8)

    refund = worker.refund("job-ref", reason="user complaint")
    open_refund = worker.refund("job-open")

    assert (refund["code"], refund["amount"], refund["charge_ledger_id"]) == (
        200,
        8,
        captured["ledger_id"],
    )
    assert (open_refund["code"], open_refund["error"]) == (404, "charge_not_found")
    assert accounts.get(user).balance_credits == 90  # 100 - 10 held (job-open)
    assert worker.audit(user)["clean"] is True


def test_the_ledger_shows_every_step_of_a_hold(worker, accounts):
    user = accounts.credits_only()
    worker.reserve_generation(user, "seen", meta={"job": "j-1"})
    worker.capture("seen", amount=4)

    entries = worker.ledger(user)["entries"]

    assert [(e["entry_type"], e["amount"], e["hold_key"]) for e in entries] == [
        ("capture", 4, "seen"),
        ("release", 6, "seen"),
        ("hold", 10, "seen"),
    ]
    assert entries[-1]["meta"] == {"job": "j-1"}


def test_the_audit_stays_exact_with_holds_in_every_state_and_sees_a_broken_one(
    worker, accounts, engine
):
    user = _funded(worker, accounts.freemium_only, 100)
    worker.reserve_generation(user, "open")
    worker.reserve_generation(user, "kept")
    worker.capture("kept")
    worker.reserve_assistant(user, "given-back")
    worker.release("given-back")
    worker.reserve_assistant(user, "timed-out", ttl_seconds=1)
    time.sleep(1.2)
    worker.expire_holds()

    audit = worker.audit()
    assert audit["clean"] is True, audit["mismatches"]

    with engine.begin() as conn:  # a settlement written by hand, with no ledger row
        conn.exec_driver_sql(
            "UPDATE billing_holds SET status = 'released', settled_at = now()"
            " WHERE idempotency_key = 'open'"
        )
    audit = worker.audit()
    assert audit["clean"] is False
    assert audit["mismatches"] == [
        {"user_id": user, "field": "hold", "hold_key": "open", "stored": "released", "ledger": None}
    ]


def test_flags_and_costs_apply_to_new_hold_keys_only(worker, accounts, engine, settings_env):
    user = accounts.credits_only()
    held = worker.reserve_generation(user, "before-switch", ttl_seconds=600)
    captured = worker.capture("before-switch")
    open_hold = worker.reserve_generation(user, "open-at-switch", ttl_seconds=600)
    settings_env(v4_enabled="false", generation_cost="25")

    again = worker.reserve_generation(user, "before-switch", ttl_seconds=600)
    capture_again = worker.capture("before-switch")
    new_reserve = worker.reserve_generation(user, "while-off")
    new_capture = worker.capture("open-at-switch")
    settings_env(v4_enabled="true", generation_cost="25")
    later_capture = worker.capture("open-at-switch")

    assert again == {**held, "replayed": True} and again["amount"] == 10
    assert capture_again == {**captured, "replayed": True}
    for refused in (new_reserve, new_capture):
        assert (refused["code"], refused["error"]) == (400, "billing_disabled")
    assert (later_capture["code"], later_capture["amount"]) == (200, open_hold["amount"])
    assert count_rows(engine, "billing_holds") == 2


def test_credits_on_hold_count_against_the_balance_ceiling(worker, accounts):
    ceiling = 2**31 - 1
    user = accounts.credits_only(balance_credits=ceiling - 10)
    worker.reserve_assistant(user, "big-hold", cost=10)  # the balance is ceiling - 20

    refused = worker.grant(user, 15, "past-the-ceiling")
    granted = worker.grant(user, 10, "up-to-the-ceiling")
    released = worker.release("big-hold")

    assert (refused["code"], refused["error"]) == (422, "balance_limit")
    assert granted["code"] == 200 and granted["state"]["held"]["credits"] == 10
    assert (released["code"], released["state"]["credits"]["balance"]) == (200, ceiling)
