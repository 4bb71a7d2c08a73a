"""billing.activate_subscription: start, renew, change tier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billing.core.rules import as_utc
from tests.conftest import count_rows, days_ago, ledger_rows


def test_new_subscription_starts_a_fresh_period(worker, accounts, engine):
    user = accounts.freemium_only()
    before = datetime.now(UTC)

    result = worker.subscribe(user, "premium", "sub-new", days=30)

    assert (result["code"], result["change"], result["tier"]) == (200, "new", "premium")
    row = accounts.get(user)
    assert (row.subscription_type, row.subscription_ops_limit, row.subscription_ops_used) == (
        "premium",
        300,
        0,
    )
    assert as_utc(row.subscription_ops_reset_at) >= before - timedelta(seconds=5)
    ends = as_utc(row.subscription_end) - as_utc(row.subscription_ops_reset_at)
    assert ends == timedelta(days=30)
    assert result["state"]["subscription"]["active"] is True
    (entry,) = ledger_rows(engine, user)
    assert (entry.entry_type, entry.source, entry.amount) == ("subscription", "subscription", 300)
    assert entry.meta == {"tier": "premium", "days": 30, "change": "new"}
    assert worker.charge_generation(user, "after-sub")["source"] == "subscription"


def test_expired_subscription_restarts_with_nothing_used(worker, accounts):
    user = accounts.expired_subscription(subscription_ops_used=60)

    result = worker.subscribe(user, "standard", "sub-again")

    assert result["change"] == "new"
    assert accounts.get(user).subscription_ops_used == 0


def test_renewal_extends_the_end_and_keeps_the_period(worker, accounts):
    anchor = days_ago(10)
    user = accounts.subscriber(subscription_ops_used=42, subscription_ops_reset_at=anchor)
    before = accounts.get(user)

    result = worker.subscribe(user, "standard", "sub-renew", days=30)

    after = accounts.get(user)
    assert result["change"] == "renewal"
    assert as_utc(after.subscription_end) == as_utc(before.subscription_end) + timedelta(days=30)
    assert after.subscription_ops_used == 42
    assert as_utc(after.subscription_ops_reset_at) == anchor


def test_legacy_alias_renews_the_canonical_tier(worker, accounts):
    user = accounts.subscriber(subscription_type="standard")

    result = worker.subscribe(user, "pro", "sub-pro")

    assert (result["change"], result["tier"]) == ("renewal", "standard")


def test_upgrade_applies_the_new_limit_at_once_and_keeps_what_was_used(worker, accounts):
    user = accounts.subscriber(subscription_ops_used=95)
    before = accounts.get(user)

    result = worker.subscribe(user, "premium", "sub-up", days=30)

    after = accounts.get(user)
    assert result["change"] == "tier_change"
    assert (after.subscription_type, after.subscription_ops_limit) == ("premium", 300)
    assert after.subscription_ops_used == 95
    assert result["state"]["subscription"]["ops_remaining"] == 205
    assert as_utc(after.subscription_end) > as_utc(before.subscription_end)


def test_unknown_tier_is_422_and_not_remembered(worker, accounts, engine):
    user = accounts.freemium_only()

    unknown = worker.subscribe(user, "platinum", "sub-x")
    fixed = worker.subscribe(user, "basic", "sub-x")

    assert (unknown["code"], unknown["field"]) == (422, "tier")
    assert "platinum" in unknown["message"]
    assert fixed["code"] == 200 and fixed["replayed"] is False
    assert count_rows(engine, "billing_requests") == 1


def test_subscription_is_exactly_once_per_key(worker, accounts, engine):
    user = accounts.freemium_only()

    first = worker.subscribe(user, "basic", "sub-once", days=30)
    again = worker.subscribe(user, "basic", "sub-once", days=30)
    other_tier = worker.subscribe(user, "premium", "sub-once", days=30)

    assert (again["replayed"], again["ledger_id"]) == (True, first["ledger_id"])
    assert other_tier["error"] == "idempotency_conflict"
    row = accounts.get(user)
    assert as_utc(row.subscription_end) - as_utc(row.subscription_ops_reset_at) == timedelta(
        days=30
    )
    assert len(ledger_rows(engine, user)) == 1


def test_tier_change_for_fewer_days_than_are_left_keeps_the_later_end(worker, accounts):
    user = accounts.subscriber(subscription_end=datetime.now(UTC) + timedelta(days=40))
    before = accounts.get(user)

    result = worker.subscribe(user, "basic", "sub-down", days=10)

    assert result["change"] == "tier_change"
    assert as_utc(accounts.get(user).subscription_end) == as_utc(before.subscription_end)
