"""billing.get_state: what the product shows a user about their allowances and credits."""

from __future__ import annotations

from datetime import timedelta

from billing.core.rules import as_utc
from billing.core.settings import get_settings


def test_state_for_a_subscriber(worker, accounts):
    user = accounts.subscriber(subscription_ops_used=12, balance_credits=40)
    row = accounts.get(user)

    result = worker.state(user)

    assert (result["ok"], result["code"]) == (True, 200)
    state = result["state"]
    assert (state["user_id"], state["role"]) == (user, "user")
    assert state["subscription"] == {
        "type": "standard",
        "active": True,
        "ends_at": as_utc(row.subscription_end).isoformat(),
        "ops_limit": 100,
        "ops_used": 12,
        "ops_remaining": 88,
        "resets_at": (as_utc(row.subscription_ops_reset_at) + timedelta(days=30)).isoformat(),
    }
    assert state["credits"] == {"balance": 40, "grants": [], "expiring": None}


def test_state_for_a_freemium_user(worker, accounts):
    limit = get_settings().freemium_limit
    user = accounts.freemium_only(freemium_actions_used=1)
    row = accounts.get(user)

    state = worker.state(user)["state"]

    assert state["subscription"]["type"] is None
    assert state["subscription"]["active"] is False
    assert state["subscription"]["ops_remaining"] == 0
    assert state["freemium"] == {
        "limit": limit,
        "used": 1,
        "remaining": limit - 1,
        "resets_at": (as_utc(row.freemium_reset_at) + timedelta(days=30)).isoformat(),
    }
    assert state["credits"] == {"balance": 0, "grants": [], "expiring": None}


def test_state_for_an_admin(worker, accounts):
    user = accounts.admin()

    assert worker.state(user)["state"]["role"] == "admin"


def test_state_of_an_account_made_by_a_bare_insert(worker, engine):
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (id) VALUES (42)")

    result = worker.state(42)
    charge = worker.charge_generation(42, "bare-1")

    assert result["state"]["freemium"]["used"] == 0
    assert charge["source"] == "freemium"


def test_state_of_an_unknown_user_is_404(worker):
    result = worker.state(123456)

    assert (result["ok"], result["code"], result["error"]) == (False, 404, "user_not_found")
