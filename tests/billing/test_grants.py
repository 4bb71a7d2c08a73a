"""billing.grant_credits: top-ups after a confirmed payment, exactly once per key."""

from __future__ import annotations

from tests.conftest import count_rows, ledger_rows


def test_grant_adds_credits_and_writes_a_ledger_row(worker, accounts, engine):
    user = accounts.freemium_only()

    result = worker.grant(user, 250, "pay-1", meta={"provider_ref": "pi_123"})

    assert (result["ok"], result["code"], result["source"], result["amount"]) == (
        True,
        200,
        "credits",
        250,
    )
    assert result["state"]["credits"]["balance"] == 250
    assert accounts.get(user).balance_credits == 250
    (row,) = ledger_rows(engine, user)
    assert (row.entry_type, row.source, row.amount, row.balance_credits_after) == (
        "grant",
        "credits",
        250,
        250,
    )
    assert row.meta == {"provider_ref": "pi_123"}


def test_grant_is_exactly_once_per_key(worker, accounts, engine):
    user = accounts.freemium_only()

    first = worker.grant(user, 40, "pay-2")
    again = worker.grant(user, 40, "pay-2")
    conflict = worker.grant(user, 41, "pay-2")

    assert (first["replayed"], again["replayed"]) == (False, True)
    assert again["ledger_id"] == first["ledger_id"]
    assert (conflict["code"], conflict["error"]) == (409, "idempotency_conflict")
    assert accounts.get(user).balance_credits == 40
    assert len(ledger_rows(engine, user)) == 1


def test_grant_to_unknown_user_is_404(worker, engine):
    result = worker.grant(777_001, 10, "pay-ghost")

    assert (result["code"], result["error"]) == (404, "user_not_found")
    assert count_rows(engine, "credits_ledger") == 0


def test_grant_that_would_overflow_the_balance_is_refused_and_not_remembered(
    worker, accounts, engine
):
    user = accounts.credits_only(balance_credits=2**31 - 10)

    refused = worker.grant(user, 100, "pay-big")
    fits = worker.grant(user, 9, "pay-big")

    assert (refused["code"], refused["error"]) == (422, "balance_limit")
    assert fits["code"] == 200 and fits["replayed"] is False
    assert accounts.get(user).balance_credits == 2**31 - 1


def test_bad_grant_arguments(worker, accounts, engine):
    user = accounts.freemium_only()

    results = [
        worker.grant(user, 0, "g-a"),
        worker.grant(user, True, "g-b"),
        worker.grant(user, 1.5, "g-c"),
        worker.grant(user, 100_000_001, "g-d"),
        worker.grant(user, 5, "billing:refund:x"),
    ]

    assert [(r["code"], r["field"]) for r in results] == [
        (422, "amount"),
        (422, "amount"),
        (422, "amount"),
        (422, "amount"),
        (422, "idempotency_key"),
    ]
    assert count_rows(engine, "billing_requests") == 0
