"""billing.charge_batch and billing.reserve_batch: each item answered exactly as its own
message would be; and include_state=False on the single messages."""

from __future__ import annotations

import threading

from billing.core.settings import get_settings
from billing_client import BillingClient
from billing_client.masking import masked_kwargs
from tests.conftest import count_rows, hold_rows, ledger_rows
from worker import app


def _batch(worker, items, **kwargs):
    return worker.call("billing.charge_batch", charges=items, **kwargs)


def test_each_item_is_decided_as_its_own_message_would_be(worker, accounts, engine):
    cost = get_settings().generation_cost
    subscriber, credits, broke = accounts.subscriber(), accounts.credits_only(), accounts.no_funds()
    already = worker.charge_generation(credits, "b-already")
    items = [
        {"user_id": subscriber, "idempotency_key": "b-sub", "operation": "generation"},
        {"user_id": credits, "idempotency_key": "b-cred", "operation": "assistant", "cost": 3},
        {"user_id": broke, "idempotency_key": "b-402", "operation": "generation"},
        {"user_id": 987654321, "idempotency_key": "b-404", "operation": "generation"},
        {"user_id": credits, "idempotency_key": "b-already", "operation": "generation"},
        {"user_id": credits, "idempotency_key": "b-already", "operation": "assistant"},
        {"user_id": credits, "idempotency_key": "b-422", "operation": "generation", "cost": "9"},
        {"user_id": credits, "idempotency_key": "b-op", "operation": "upscale"},
        ["not", "an", "object"],
        {"user_id": credits, "idempotency_key": "b-meta", "operation": "generation",
         "meta": {"job": "j-1"}},
    ]  # fmt: skip

    answer = _batch(worker, items)

    assert answer["ok"] and answer["code"] == 200
    got = answer["results"]
    assert [r["code"] for r in got] == [200, 200, 402, 404, 200, 409, 422, 422, 422, 200]
    assert (got[0]["source"], got[0]["amount"]) == ("subscription", 1)
    assert (got[1]["source"], got[1]["amount"]) == ("credits", 3)
    assert got[2]["error"] == "not_enough_credits" and "state" in got[2]
    assert got[4]["replayed"] is True and got[4]["ledger_id"] == already["ledger_id"]
    assert got[5]["error"] == "idempotency_conflict"
    assert got[6]["field"] == "cost" and got[7]["field"] == "operation"
    assert got[8]["field"] == "item"
    # Every item the batch decided is remembered as its single message: the same key sent
    # alone now replays exactly the batch's answer.
    for item, first in zip(items, got, strict=True):
        if first["code"] in (200, 402, 404) and not first.get("replayed"):
            name = f"billing.charge_{item['operation']}"
            kwargs = {k: v for k, v in item.items() if k != "operation"}
            again = worker.call(name, **kwargs)
            assert again == {**first, "replayed": True}, (item, first, again)
    assert accounts.get(credits).balance_credits == 100 - cost - 3 - cost
    assert [r.meta for r in ledger_rows(engine, credits)][-1] == {"job": "j-1"}


def test_items_of_one_account_are_applied_in_order(worker, accounts):
    cost = get_settings().generation_cost
    user = accounts.credits_only(balance_credits=2 * cost + 5)
    other = accounts.credits_only()
    items = []
    for i in range(5):
        items.append({"user_id": user, "idempotency_key": f"ord-{i}", "operation": "generation"})
        items.append({"user_id": other, "idempotency_key": f"oth-{i}", "operation": "assistant"})

    got = _batch(worker, items)["results"]

    mine = [r for item, r in zip(items, got, strict=True) if item["user_id"] == user]
    assert [r["code"] for r in mine] == [200, 200, 402, 402, 402]
    assert [r["state"]["credits"]["balance"] for r in mine] == [cost + 5, 5, 5, 5, 5]
    assert all(
        r["code"] == 200 for item, r in zip(items, got, strict=True) if item["user_id"] == other
    )


def test_a_key_twice_in_one_batch_is_charged_once(worker, accounts, engine):
    user = accounts.credits_only()
    item = {"user_id": user, "idempotency_key": "twice", "operation": "generation"}

    first, second = _batch(worker, [item, item])["results"]

    assert first["replayed"] is False and second["replayed"] is True
    assert second["ledger_id"] == first["ledger_id"]
    assert count_rows(engine, "credits_ledger") == 1


def test_a_malformed_batch_is_refused_whole_and_writes_nothing(worker, accounts, engine):
    user = accounts.credits_only()
    item = {"user_id": user, "idempotency_key": "mal", "operation": "generation"}
    cases = [
        ("charges", _batch(worker, "not a list")),
        ("charges", _batch(worker, [])),
        ("charges", _batch(worker, [item] * 101)),
        ("include_state", _batch(worker, [item], include_state="no")),
        ("extra", _batch(worker, [item], extra=1)),
    ]
    for field, answer in cases:
        assert answer["code"] == 422 and answer["field"] == field, answer
    assert count_rows(engine, "billing_requests") == 0


def test_concurrent_batches_with_the_same_keys_charge_each_key_once(worker, accounts, engine):
    cost = get_settings().generation_cost
    user = accounts.credits_only(balance_credits=5 * cost)
    items = [
        {"user_id": user, "idempotency_key": f"cc-{i}", "operation": "generation"} for i in range(8)
    ]
    answers: list[dict] = []
    threads = [
        threading.Thread(target=lambda: answers.append(_batch(worker, items))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(answers) == 4
    by_key = {}
    for answer in answers:
        for item, r in zip(items, answer["results"], strict=True):
            by_key.setdefault(item["idempotency_key"], set()).add((r["code"], r.get("ledger_id")))
    assert all(len(outcomes) == 1 for outcomes in by_key.values())  # one answer per key
    assert [next(iter(by_key[i["idempotency_key"]]))[0] for i in items] == [200] * 5 + [402] * 3
    assert accounts.get(user).balance_credits == 0
    assert count_rows(engine, "credits_ledger") == 5


def test_reserve_batch_holds_each_item(worker, accounts, engine):
    user = accounts.credits_only()
    items = [
        {
            "user_id": user,
            "idempotency_key": f"rb-{i}",
            "operation": "generation",
            "ttl_seconds": 60,
        }
        for i in range(3)
    ]

    got = worker.call("billing.reserve_batch", reserves=items, include_state=False)["results"]
    captured = worker.call("billing.capture", idempotency_key="rb-0")

    assert [r["hold"]["status"] for r in got] == ["held"] * 3
    assert all("state" not in r for r in got)
    assert captured["ok"] and captured["hold"]["status"] == "captured"
    assert sorted(h.status for h in hold_rows(engine)) == ["captured", "held", "held"]


def test_include_state_false_leaves_state_out_and_the_key_keeps_it(worker, accounts):
    user = accounts.credits_only()

    lean = worker.charge_generation(user, "lean-1", include_state=False)
    full = worker.charge_generation(user, "lean-1")
    bad = worker.charge_generation(user, "lean-2", include_state="false")

    assert lean["ok"] and "state" not in lean and lean["source"] == "credits"
    assert full["replayed"] is True and full["state"]["credits"]["balance"] == 100 - lean["amount"]
    assert {k: v for k, v in full.items() if k not in ("state", "replayed")} == {
        k: v for k, v in lean.items() if k != "replayed"
    }
    assert bad["code"] == 422 and bad["field"] == "include_state"


def test_billing_client_batches_and_leaves_state_out_unless_asked(worker, accounts):
    user = accounts.credits_only()
    client = BillingClient(app)

    paid = client.charge_generation(user, "cl-1")
    with_state = client.charge_generation(user, "cl-2", include_state=True)
    batch = client.charge_batch(
        [
            {"user_id": user, "idempotency_key": "cl-3", "operation": "generation"},
            {"user_id": user, "idempotency_key": "cl-4", "operation": "assistant", "cost": 7},
        ]
    )

    assert paid.ok and paid.state is None
    assert with_state.state["credits"]["balance"] == 80
    assert [(r.ok, r.amount, r.state) for r in batch] == [(True, 10, None), (True, 7, None)]


def test_a_batch_hides_every_items_meta_from_events_and_logs():
    shown = masked_kwargs(
        {"charges": [{"user_id": 1, "meta": {"ref": "pay_123"}}, {"user_id": 2}], "x": 1}
    )
    assert "pay_123" not in shown and "<hidden>" in shown and "'user_id': 2" in shown
