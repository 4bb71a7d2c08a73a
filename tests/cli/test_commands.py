"""The `billing` command against the real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, inspect, text

from billing.core.settings import get_settings
from tests.db import recreate_database
from tests.services import database_url

SUBCOMMANDS = [
    "migrate",
    "worker",
    "beat",
    "flower",
    "demo",
    "state",
    "ledger",
    "grant",
    "open-account",
    "events",
    "status",
    "dead-letters",
    "audit",
    "repair-ledger-chain",
]


def billing(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command):
    result = billing(command, "--help")

    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: billing {command}")


def test_migrate_on_an_empty_database():
    recreate_database("billing_cli_migrate")
    url = database_url("billing_cli_migrate")

    result = billing("migrate", env={"BILLING_DATABASE_URL": url})

    assert result.returncode == 0, result.stderr
    assert "is at revision head" in result.stdout
    engine = create_engine(url)
    try:
        assert {"users", "credits_ledger", "billing_requests"} <= set(
            inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()


def test_open_account_then_grant_without_sql(engine):
    opened = billing("open-account", "881001")
    again = billing("open-account", "881001", "--json")
    admin = billing("open-account", "881002", "--role", "admin", "--json")
    granted = billing("grant", "881001", "40", "--key", "cli-open-pay")
    bad = billing("open-account", "0")

    assert opened.returncode == 0 and "account opened" in opened.stdout, opened.stderr
    assert (json.loads(again.stdout)["opened"], json.loads(admin.stdout)["opened"]) == (
        False,
        True,
    )
    assert json.loads(admin.stdout)["state"]["role"] == "admin"
    assert granted.returncode == 0 and "40 credits" in granted.stdout
    assert bad.returncode == 2 and "invalid user_id" in bad.stderr


def test_version_is_the_package_version():
    from importlib.metadata import version

    shown = billing("--version")

    assert shown.returncode == 0
    assert shown.stdout.strip() == f"billing {version('billing-processor')}"


def test_grant_then_state_and_ledger(engine, accounts):
    user = accounts.create()

    granted = billing("grant", str(user), "75", "--key", "cli-pay-1")
    again = billing("grant", str(user), "75", "--key", "cli-pay-1", "--json")
    state = billing("state", str(user))
    state_json = billing("state", str(user), "--json")
    ledger = billing("ledger", str(user))
    ledger_json = billing("ledger", str(user), "--limit", "1", "--json")

    assert granted.returncode == 0 and "75 credits" in granted.stdout
    assert json.loads(again.stdout)["replayed"] is True
    assert "credits:      75" in state.stdout
    assert json.loads(state_json.stdout)["state"]["credits"]["balance"] == 75
    assert "cli-pay-1" in ledger.stdout and "grant" in ledger.stdout
    page = json.loads(ledger_json.stdout)
    assert [e["idempotency_key"] for e in page["entries"]] == ["cli-pay-1"]
    # The full ISO 8601 time with its offset (it was cut to 25 characters, offset and all).
    created = page["entries"][0]["created_at"]
    assert datetime.fromisoformat(created).utcoffset() is not None
    assert f"  {created} " in ledger.stdout
    assert accounts.get(user).balance_credits == 75


def test_grants_with_terms_listed_in_draw_order_and_voided(engine, accounts):
    user = accounts.create()

    promo = billing(
        "grant", str(user), "30", "--key", "cli-promo", "--expires-in-days", "14",
        "--category", "promotional", "--json",
    )  # fmt: skip
    paid = billing("grant", str(user), "20", "--key", "cli-pack", "--priority", "10")
    bad = billing("grant", str(user), "5", "--key", "cli-bad", "--expires-at", "tomorrow")
    listed = billing("grants", str(user))
    listed_json = billing("grants", str(user), "--json")
    voided = billing("void-grant", "cli-promo", "--reason", "campaign withdrawn", "--json")
    after = json.loads(billing("grants", str(user), "--json").stdout)

    assert promo.returncode == 0 and paid.returncode == 0
    grant = json.loads(promo.stdout)["grant"]
    assert (grant["category"], grant["remaining"]) == ("promotional", 30)
    expires = datetime.fromisoformat(grant["expires_at"])
    assert timedelta(days=13.9) < expires - datetime.now(UTC) <= timedelta(days=14)
    assert bad.returncode != 0 and "expires_at" in bad.stderr
    # Priority 10 is drawn before priority 50, whatever expires first.
    lines = listed.stdout.splitlines()
    assert lines[1].startswith("cli-pack") and lines[2].startswith("cli-promo")
    assert "balance 50, of which general 0" in listed.stdout
    assert [g["key"] for g in json.loads(listed_json.stdout)["credits"]["grants"]] == [
        "cli-pack",
        "cli-promo",
    ]
    assert json.loads(voided.stdout)["amount"] == 30
    assert [g["key"] for g in after["credits"]["grants"]] == ["cli-pack"]
    assert accounts.get(user).balance_credits == 20


def test_errors_are_one_line_with_exit_codes(engine):
    unknown = billing("state", "987654")
    bad_amount = billing("grant", "1", "0", "--key", "k")

    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "error 404 user_not_found: user 987654 does not exist"
    assert bad_amount.returncode == 2
    assert bad_amount.stderr.strip().startswith("billing: invalid amount:")


def test_unreachable_database_and_broker_are_one_line_with_the_password_masked():
    db = billing(
        "state", "1", env={"BILLING_DATABASE_URL": "postgresql://ops:pa55word@127.0.0.1:1/x"}
    )
    broker = billing(
        "demo",
        env={
            "BILLING_BROKER_URL": "redis://:pa55word@127.0.0.1:1/0",
            "BILLING_RESULT_BACKEND": "redis://:pa55word@127.0.0.1:1/0",
        },
    )
    # The README's promise for `billing status` too, on either broker (it printed the
    # transport's traceback, 92 lines, and exited 1).
    status = [
        billing("status", env={"BILLING_BROKER_URL": url})
        for url in ("redis://:pa55word@127.0.0.1:1/0", "amqp://ops:pa55word@127.0.0.1:1//")
    ]

    for result, what in ((db, "database"), (broker, "broker"), *((s, "broker") for s in status)):
        assert result.returncode == 2
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith(f"billing: cannot reach the {what} at ")
        assert "pa55word" not in result.stderr + result.stdout
        assert ":***@" in errors[0]


def test_flower_refuses_to_start_without_credentials():
    result = billing("flower", env={"BILLING_FLOWER_BASIC_AUTH": ""})

    assert result.returncode == 2
    assert "refusing to start Flower without authentication" in result.stderr


def test_state_shows_what_open_holds_keep(worker, accounts):
    user = accounts.credits_only()
    worker.reserve_generation(user, "cli-hold", cost=15, ttl_seconds=600)
    worker.reserve_generation(user, "cli-done", cost=5)
    worker.capture("cli-done")

    state = billing("state", str(user))
    as_json = json.loads(billing("state", str(user), "--json").stdout)

    assert state.returncode == 0
    assert "credits:      80" in state.stdout
    assert "held:         0 operations, 0 actions, 15 credits" in state.stdout
    assert "cli-hold: 15 credits for a generation, expires" in state.stdout
    assert "cli-done" not in state.stdout
    assert [h["idempotency_key"] for h in as_json["open_holds"]] == ["cli-hold"]


def test_events_lists_recent_and_pending(worker, accounts, engine):
    cost = get_settings().generation_cost
    user = accounts.credits_only(balance_credits=cost)
    other = accounts.credits_only(balance_credits=cost)
    worker.charge_generation(user, "cli-last")  # low and depleted, published at once
    worker.charge_generation(other, "cli-other")
    with engine.begin() as conn:  # as if its worker died before publishing
        conn.execute(
            text("UPDATE billing_events SET published_at = NULL WHERE user_id = :u"), {"u": other}
        )

    listed = billing("events", str(user))
    everything = json.loads(billing("events", "--json").stdout)
    pending = billing("events", "--pending")
    bad = billing("events", "--limit", "0")

    assert listed.returncode == 0, listed.stderr
    assert "credits.low" in listed.stdout and "credits.depleted" in listed.stdout
    assert "cli-last" in listed.stdout and "cli-other" not in listed.stdout
    assert "2 unpublished" not in listed.stdout and "nothing unpublished" in listed.stdout
    assert [e["type"] for e in everything["events"]] == [
        "credits.depleted",
        "credits.low",
        "credits.depleted",
        "credits.low",
    ]
    assert everything["unpublished"] == 2
    assert pending.stdout.count("PENDING") == 2 and "cli-last" not in pending.stdout
    assert "2 unpublished, the oldest from" in pending.stdout
    assert bad.returncode == 2 and "limit" in bad.stderr


def test_status_shows_workers_queues_holds_events_jobs_and_audit(worker, accounts, engine):
    user = accounts.credits_only(balance_credits=get_settings().generation_cost)
    worker.reserve_generation(user, "st-hold", ttl_seconds=600)  # open; balance to 0: events
    with engine.begin() as conn:  # as if the worker died before publishing them
        conn.execute(text("UPDATE billing_events SET published_at = NULL"))
    worker.expire_holds()
    audited = worker.audit()

    shown = billing("status")
    status = json.loads(billing("status", "--json").stdout)

    assert shown.returncode == 0, shown.stderr
    assert status["workers"], "the test worker answers a ping"
    assert set(status["queues"]) == {"billing", "billing-admin", "billing-events", "billing.dead"}
    assert status["holds_open"] == 1 and status["events_pending"] == 2
    assert status["events_oldest_pending_age_seconds"] >= 0
    assert {"expire_holds", "audit"} <= set(status["jobs"])
    assert status["audit_mismatches"] == audited["mismatch_count"]
    assert "holds:    1 open" in shown.stdout
    assert "events:   2 unpublished, the oldest" in shown.stdout
    assert "expire_holds" in shown.stdout and "workers:  1 up" in shown.stdout


def test_a_worker_consumes_both_queues_unless_told_one():
    from cli import processes

    command = processes.worker_command()
    assert command[command.index("-Q") + 1] == "billing,billing-admin"


def test_dead_letters_needs_rabbitmq_or_redis_and_none_moves_back_on_redis(tmp_path):
    embedded = billing("dead-letters", env={"BILLING_BROKER_URL": f"sqla+sqlite:///{tmp_path}/b"})
    requeued_on_redis = billing("dead-letters", "--requeue")
    assert embedded.returncode == 1
    assert "error 400 not_rabbitmq" in embedded.stderr
    # Redis sets aside only items that were not task messages (worker.malformed).
    assert requeued_on_redis.returncode == 1
    assert "error 400 not_requeueable" in requeued_on_redis.stderr


def test_a_full_audit_from_the_command_line_is_recorded_for_status(engine, accounts):
    user = accounts.create()  # nothing written around the ledger: the audit finds it clean
    before = billing("status")
    one_account = billing("audit", str(user))
    after_one = billing("status")
    full = billing("audit")
    status = json.loads(billing("status", "--json").stdout)
    shown = billing("status")

    assert before.returncode == 0, before.stderr
    assert "audit:    never run" in before.stdout
    assert one_account.returncode == 0 and "audit:    never run" in after_one.stdout
    assert full.returncode == 0, full.stderr
    assert status["audit_mismatches"] == 0 and "audit" in status["jobs"]
    assert "audit:    clean (last full audit " in shown.stdout
