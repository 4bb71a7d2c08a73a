"""billing.sync_tier_limits: bring every stored subscription in line with the configuration."""

from __future__ import annotations


def test_sync_renames_legacy_tiers_and_fixes_limits(worker, accounts, settings_env):
    legacy = [
        accounts.subscriber(subscription_type="pro", subscription_ops_limit=100) for _ in range(3)
    ]
    stale = [
        accounts.subscriber(subscription_type="premium", subscription_ops_limit=10)
        for _ in range(2)
    ]
    fine = accounts.subscriber(subscription_type="basic", subscription_ops_limit=30)
    custom = accounts.subscriber(subscription_type="enterprise", subscription_ops_limit=7)
    settings_env(tiers='{"basic": 30, "standard": 120, "premium": 300}')

    first = worker.sync_tier_limits()
    second = worker.sync_tier_limits()

    assert (first["renamed"], first["limits_changed"]) == (3, 5)
    assert (second["renamed"], second["limits_changed"]) == (0, 0)
    for user in legacy:
        row = accounts.get(user)
        assert (row.subscription_type, row.subscription_ops_limit) == ("standard", 120)
    assert {accounts.get(u).subscription_ops_limit for u in stale} == {300}
    assert accounts.get(fine).subscription_ops_limit == 30
    assert accounts.get(custom).subscription_ops_limit == 7
