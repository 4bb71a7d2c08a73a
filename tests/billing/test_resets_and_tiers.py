"""Lazy resets inside the charge and the read, and tier normalisation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billing.core.settings import get_settings
from tests.conftest import days_ago, reset_rows, shift_clock


def test_freemium_resets_after_30_days(worker, accounts, engine):
    limit = get_settings().freemium_limit
    anchor = days_ago(31)
    user = accounts.create(freemium_actions_used=limit, freemium_reset_at=anchor)

    result = worker.charge_generation(user, "fr-1")

    assert (result["source"], result["state"]["freemium"]["used"]) == ("freemium", 1)
    after = accounts.get(user)
    assert after.freemium_actions_used == 1
    assert after.freemium_reset_at == anchor + timedelta(days=30)
    # The charge's lazy reset is recorded like the beat's, and the beat then finds nothing.
    recorded = [(r.source, r.restored, r.period_start) for r in reset_rows(engine, user)]
    assert recorded == [("freemium", limit, anchor + timedelta(days=30))]
    assert worker.reset_due_limits()["reset"] == 0
    assert len(reset_rows(engine, user)) == 1


def test_subscription_resets_after_30_days(worker, accounts):
    anchor = days_ago(30.5)
    user = accounts.subscriber(subscription_ops_used=100, subscription_ops_reset_at=anchor)

    result = worker.charge_generation(user, "sr-1")

    assert result["source"] == "subscription"
    after = accounts.get(user)
    assert after.subscription_ops_used == 1
    assert after.subscription_ops_reset_at == anchor + timedelta(days=30)


def test_no_reset_before_30_days(worker, accounts):
    limit = get_settings().freemium_limit
    anchor = days_ago(29.9)
    user = accounts.subscriber(
        subscription_ops_used=100,
        subscription_ops_reset_at=anchor,
        freemium_actions_used=limit,
        freemium_reset_at=anchor,
    )

    result = worker.charge_generation(user, "nr-1")

    assert result["source"] == "credits"
    after = accounts.get(user)
    assert (after.subscription_ops_used, after.freemium_actions_used) == (100, limit)
    assert after.freemium_reset_at == anchor and after.subscription_ops_reset_at == anchor


def test_late_reset_keeps_the_cycle_anchor(worker, accounts):
    anchor = days_ago(95)  # three whole periods and five days
    user = accounts.create(freemium_actions_used=2, freemium_reset_at=anchor)

    worker.state(user)

    assert accounts.get(user).freemium_reset_at == anchor + timedelta(days=90)


def test_reset_period_follows_the_setting(worker, accounts, settings_env):
    settings_env(reset_period_days="7")
    anchor = days_ago(8)
    user = accounts.create(freemium_actions_used=3, freemium_reset_at=anchor)

    state = worker.state(user)["state"]

    assert state["freemium"]["used"] == 0
    assert accounts.get(user).freemium_reset_at == anchor + timedelta(days=7)


def test_reset_is_applied_and_stored_when_state_is_read(worker, accounts, engine):
    anchor = days_ago(40)
    user = accounts.subscriber(
        subscription_ops_used=80,
        subscription_ops_reset_at=anchor,
        freemium_actions_used=4,
        freemium_reset_at=anchor,
    )

    state = worker.state(user)["state"]

    assert state["subscription"]["ops_used"] == 0 and state["freemium"]["used"] == 0
    after = accounts.get(user)
    assert (after.subscription_ops_used, after.freemium_actions_used) == (0, 0)
    assert after.freemium_reset_at == anchor + timedelta(days=30)
    recorded = sorted((r.source, r.restored, r.period_start) for r in reset_rows(engine, user))
    opened = anchor + timedelta(days=30)
    assert recorded == [("freemium", 4, opened), ("subscription", 80, opened)]


def test_pro_is_normalised_to_standard(worker, accounts):
    user = accounts.subscriber(subscription_type="pro", subscription_ops_limit=7)

    result = worker.charge_generation(user, "pro-1")

    assert result["state"]["subscription"]["type"] == "standard"
    after = accounts.get(user)
    assert after.subscription_type == "standard"
    assert after.subscription_ops_limit == get_settings().tiers["standard"]


def test_pro_is_normalised_when_state_is_read(worker, accounts):
    user = accounts.subscriber(subscription_type="pro")

    state = worker.state(user)["state"]

    assert state["subscription"]["type"] == "standard"
    assert accounts.get(user).subscription_type == "standard"


def test_limit_follows_the_tier_configuration(worker, accounts, settings_env):
    settings_env(tiers='{"basic": 30, "standard": 250, "premium": 300}')
    user = accounts.subscriber(subscription_type="standard", subscription_ops_limit=100)

    result = worker.charge_generation(user, "tier-1")

    assert result["state"]["subscription"]["ops_limit"] == 250
    assert result["state"]["subscription"]["ops_remaining"] == 249
    assert accounts.get(user).subscription_ops_limit == 250


def test_lowered_limit_stops_the_subscription_at_once(worker, accounts, settings_env):
    settings_env(tiers='{"basic": 30, "standard": 10, "premium": 300}')
    user = accounts.subscriber(subscription_ops_used=40)

    result = worker.charge_generation(user, "tier-2")

    assert result["source"] == "freemium"
    assert result["state"]["subscription"]["ops_remaining"] == 0


def test_unknown_tier_keeps_its_stored_limit(worker, accounts):
    user = accounts.subscriber(
        subscription_type="enterprise",
        subscription_end=datetime.now(UTC) + timedelta(days=1),
        subscription_ops_limit=7,
    )

    state = worker.state(user)["state"]

    assert (state["subscription"]["type"], state["subscription"]["ops_limit"]) == ("enterprise", 7)


def test_a_replay_stores_a_due_reset_like_any_read(worker, accounts, engine):
    user = accounts.create(freemium_actions_used=2, freemium_reset_at=days_ago(10))
    first = worker.charge_generation(user, "rp-1")
    shift_clock(engine, 30, [user])

    again = worker.charge_generation(user, "rp-1")

    assert again == {**first, "replayed": True}
    assert accounts.get(user).freemium_actions_used == 0
    assert [(r.source, r.restored) for r in reset_rows(engine, user)] == [("freemium", 3)]
