"""billing.get_ledger: a user's history, newest first, by keyset pagination."""

from __future__ import annotations

import pytest

from tests.conftest import ledger_rows


def test_ledger_is_empty_for_a_new_user(worker, accounts):
    user = accounts.freemium_only()

    result = worker.ledger(user)

    assert result == {"ok": True, "code": 200, "entries": [], "next_cursor": None}


def test_ledger_with_entries_newest_first(worker, accounts):
    user = accounts.subscriber(subscription_ops_limit=100)
    worker.charge_generation(user, "l-1", meta={"job": 1})
    worker.charge_assistant(user, "l-2", cost=7)

    entries = worker.ledger(user)["entries"]

    assert [e["idempotency_key"] for e in entries] == ["l-2", "l-1"]
    newest = entries[0]
    assert newest["entry_type"] == "charge"
    assert (newest["source"], newest["operation"], newest["amount"]) == ("credits", "assistant", 7)
    assert newest["balance_credits_after"] == 93
    assert newest["subscription_ops_used_after"] == 1
    assert newest["freemium_actions_used_after"] == 0
    assert entries[1]["meta"] == {"job": 1}
    assert set(newest) >= {"id", "created_at"}


def test_ledger_pagination_walks_every_entry_once(worker, accounts, engine):
    user = accounts.credits_only(balance_credits=1000)
    other = accounts.credits_only()
    for i in range(7):
        worker.charge_assistant(user, f"p-{i}", cost=1)
        if i % 3 == 0:
            worker.charge_assistant(other, f"o-{i}", cost=1)

    pages, cursor = [], None
    while True:
        page = worker.ledger(user, limit=3, cursor=cursor)
        pages.append([e["idempotency_key"] for e in page["entries"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert pages == [["p-6", "p-5", "p-4"], ["p-3", "p-2", "p-1"], ["p-0"]]
    assert len(ledger_rows(engine, user)) == 7


def test_exact_last_page_has_no_next_cursor(worker, accounts):
    user = accounts.credits_only()
    worker.charge_assistant(user, "x-1", cost=1)
    worker.charge_assistant(user, "x-2", cost=1)

    page = worker.ledger(user, limit=2)

    assert len(page["entries"]) == 2 and page["next_cursor"] is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": 2.0}, "limit"),
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": -5}, "cursor"),
        ({"cursor": "-5"}, "cursor"),
    ],
)
def test_bad_page_arguments_are_422(worker, accounts, kwargs, field):
    user = accounts.credits_only()

    result = worker.ledger(user, **kwargs)

    assert (result["code"], result["error"], result["field"]) == (422, "invalid_request", field)


def test_ledger_of_an_unknown_user_is_404(worker):
    assert worker.ledger(424242)["error"] == "user_not_found"


def test_ledger_disabled_answers_400(worker, accounts, settings_env):
    user = accounts.credits_only()
    worker.charge_assistant(user, "ld-1")
    settings_env(ledger_enabled="false")

    result = worker.ledger(user)

    assert (result["code"], result["error"]) == (400, "ledger_disabled")
