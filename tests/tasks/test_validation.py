"""Malformed messages, sent by name as a foreign producer would: 422, nothing written."""

from __future__ import annotations

import pytest

from tests.conftest import count_rows
from worker import app

GOOD = {"idempotency_key": "good-key"}

CASES = [
    # (task, kwargs without user_id / with overrides, field named in the error)
    ("charge_generation", {"user_id": "1"}, "user_id"),
    ("charge_generation", {"user_id": 1.0}, "user_id"),
    ("charge_generation", {"user_id": True}, "user_id"),
    ("charge_generation", {"user_id": [1]}, "user_id"),
    ("charge_generation", {"user_id": 0}, "user_id"),
    ("charge_generation", {"user_id": -7}, "user_id"),
    ("charge_generation", {"user_id": 2**63}, "user_id"),
    ("charge_generation", {"user_id": 2**80}, "user_id"),
    ("charge_generation", {"user_id": None}, "user_id"),
    ("charge_generation", {"idempotency_key": None}, "idempotency_key"),
    ("charge_generation", {"idempotency_key": ""}, "idempotency_key"),
    ("charge_generation", {"idempotency_key": "   "}, "idempotency_key"),
    ("charge_generation", {"idempotency_key": "k" * 256}, "idempotency_key"),
    ("charge_generation", {"idempotency_key": "k" * 10_000}, "idempotency_key"),
    ("charge_generation", {"idempotency_key": 12345}, "idempotency_key"),
    ("charge_generation", {"idempotency_key": "nul\x00key"}, "idempotency_key"),
    ("charge_generation", {"idempotency_key": "surrogate-\ud800"}, "idempotency_key"),
    ("charge_generation", {"cost": 0}, "cost"),
    ("charge_generation", {"cost": -1}, "cost"),
    ("charge_generation", {"cost": 1_000_001}, "cost"),
    ("charge_generation", {"cost": 2**64}, "cost"),
    ("charge_generation", {"cost": 2.5}, "cost"),
    ("charge_generation", {"cost": "10"}, "cost"),
    ("charge_generation", {"cost": False}, "cost"),
    ("charge_assistant", {"cost": True}, "cost"),
    ("charge_assistant", {"meta": "job-1"}, "meta"),
    ("charge_assistant", {"meta": [1, 2]}, "meta"),
    ("charge_assistant", {"meta": {"blob": "x" * 5000}}, "meta"),
    ("charge_assistant", {"meta": {"nul": "a\x00b"}}, "meta"),
    ("charge_assistant", {"unexpected": 1}, "unexpected"),
    ("charge_assistant", {"userid": 5}, "userid"),
    ("charge_generation", {"user_id": {"id": 1}}, "user_id"),
    ("charge_generation", {"idempotency_key": ["k"]}, "idempotency_key"),
    ("charge_generation", {"idempotency_key": True}, "idempotency_key"),
    ("charge_generation", {"idempotency_key": "billing:reset:x"}, "idempotency_key"),
    ("charge_assistant", {"meta": 7}, "meta"),
    ("charge_assistant", {"meta": True}, "meta"),
    ("charge_assistant", {"meta": {"nan": float("nan")}}, "meta"),
    ("charge_assistant", {"meta": {"list": list(range(2000))}}, "meta"),
    ("charge_assistant", {"cost": float("inf")}, "cost"),
    ("get_state", {"user_id": "abc"}, "user_id"),
    ("get_state", {"user_id": 5, "verbose": True}, "verbose"),
    ("get_ledger", {"user_id": 5, "limit": None, "cursor": 12}, "cursor"),
    ("grant_credits", {"amount": "100"}, "amount"),
    ("grant_credits", {"amount": -100}, "amount"),
    ("grant_credits", {"amount": 10**30}, "amount"),
    ("grant_credits", {"amount": None}, "amount"),
    ("activate_subscription", {"tier": "basic", "days": 0}, "days"),
    ("activate_subscription", {"tier": "basic", "days": True}, "days"),
    ("activate_subscription", {"tier": "basic", "days": 100_000}, "days"),
    ("activate_subscription", {"tier": "basic'; DROP TABLE users; --"}, "tier"),
    ("activate_subscription", {"tier": ""}, "tier"),
    ("activate_subscription", {"tier": 3}, "tier"),
    ("refund", {"reason": ["why"]}, "reason"),
    ("refund", {"reason": "r" * 501}, "reason"),
    ("audit", {"user_id": "all"}, "user_id"),
    ("reserve_generation", {"ttl_seconds": 0}, "ttl_seconds"),
    ("reserve_generation", {"ttl_seconds": 86_401}, "ttl_seconds"),
    ("reserve_generation", {"ttl_seconds": 60.0}, "ttl_seconds"),
    ("reserve_assistant", {"ttl_seconds": "900"}, "ttl_seconds"),
    ("reserve_assistant", {"cost": 0}, "cost"),
    ("reserve_assistant", {"meta": "job"}, "meta"),
    ("reserve_generation", {"idempotency_key": "billing:settle:x"}, "idempotency_key"),
    ("capture", {"amount": -1}, "amount"),
    ("capture", {"amount": 1_000_001}, "amount"),
    ("capture", {"amount": "5"}, "amount"),
    ("capture", {"user_id": 5}, "user_id"),
    ("release", {"reason": 7}, "reason"),
    ("release", {"idempotency_key": ""}, "idempotency_key"),
]

# Extra arguments each task needs to be otherwise valid.
REQUIRED = {
    "grant_credits": {"amount": 10},
    "activate_subscription": {"tier": "basic"},
}
NO_KEY = {"get_state", "get_ledger", "audit"}
NO_USER = {"refund", "capture", "release"}


def _deep(levels: int) -> dict:
    node: dict = {}
    root = node
    for _ in range(levels):
        node["n"] = {}
        node = node["n"]
    return root


@pytest.mark.parametrize(("task", "override", "field"), CASES)
def test_malformed_message_is_422_and_writes_nothing(
    worker, accounts, engine, task, override, field
):
    user = accounts.credits_only()
    kwargs = {
        **({} if task in NO_USER else {"user_id": user}),
        **({} if task in NO_KEY else GOOD),
        **REQUIRED.get(task, {}),
        **override,
    }

    result = app.send_task(f"billing.{task}", kwargs=kwargs).get(timeout=30)

    assert (result["ok"], result["code"], result["error"]) == (False, 422, "invalid_request")
    assert result["field"] == field and result["message"].startswith(f"{field}: ")
    assert "Value error" not in result["message"]
    assert count_rows(engine, "billing_requests") == 0
    assert count_rows(engine, "credits_ledger") == 0
    assert count_rows(engine, "billing_holds") == 0
    assert accounts.get(user).balance_credits == 100
    # The worker keeps serving the next good message.
    assert worker.charge_assistant(user, "after-bad")["code"] == 200


def test_messages_say_what_is_wrong_without_pydantics_prefix(worker, accounts):
    user = accounts.credits_only()

    blank = worker.charge_generation(user, "   ")
    reserved = worker.reserve_generation(user, "billing:mine")
    meta = worker.grant(user, 5, "g-1", meta={"ref": "x" * 5000})
    batch = worker.call(
        "billing.charge_batch",
        charges=[{"user_id": user, "idempotency_key": " ", "operation": "generation"}],
    )

    assert blank["message"] == "idempotency_key: idempotency_key must not be blank"
    assert reserved["message"] == ("idempotency_key: keys starting with 'billing:' are reserved")
    assert meta["code"] == 422 and meta["message"] == (
        "meta: meta is 5011 bytes as JSON; the limit is 4096"
    )
    item = batch["results"][0]
    assert item["code"] == 422
    assert item["message"] == "idempotency_key: idempotency_key must not be blank"


def test_corpus_is_at_least_forty_messages():
    assert len(CASES) >= 40


def test_sql_in_a_key_is_just_text(worker, accounts, engine):
    user = accounts.credits_only()
    key = "k'); DELETE FROM users; --"

    first = worker.charge_assistant(user, key)
    again = worker.charge_assistant(user, key)

    assert (first["code"], again["replayed"]) == (200, True)
    assert count_rows(engine, "users") == 1
    assert count_rows(engine, "credits_ledger") == 1


def test_unknown_user_gets_the_documented_404(worker, engine):
    result = app.send_task(
        "billing.grant_credits",
        kwargs={"user_id": 2**62, "amount": 5, "idempotency_key": "nobody"},
    ).get(timeout=30)

    assert (result["code"], result["error"]) == (404, "user_not_found")
    assert count_rows(engine, "credits_ledger") == 0


def test_positional_arguments_are_refused(worker, accounts, engine):
    user = accounts.credits_only()

    result = app.send_task("billing.charge_generation", args=[user, "pos-key"]).get(timeout=30)

    assert (result["code"], result["field"]) == (422, "args")
    assert count_rows(engine, "billing_requests") == 0


def test_message_with_no_arguments_at_all(worker):
    result = app.send_task("billing.charge_generation").get(timeout=30)

    assert (result["code"], result["field"]) == (422, "user_id")
    assert result["message"] == "user_id: is required"


def test_deeply_nested_meta_is_refused(worker, accounts, engine):
    user = accounts.credits_only()

    result = worker.charge_assistant(user, "deep", meta=_deep(200))

    assert (result["code"], result["field"]) == (422, "meta")
    assert count_rows(engine, "credits_ledger") == 0


def test_largest_valid_values_are_accepted(worker, accounts):
    user = accounts.credits_only(id=2**63 - 1, balance_credits=1_000_000)
    meta = {"blob": "x" * 4000}

    result = worker.charge_assistant(user, "k" * 255, cost=1_000_000, meta=meta)

    assert (result["code"], result["amount"]) == (200, 1_000_000)
    assert accounts.get(user).balance_credits == 0
