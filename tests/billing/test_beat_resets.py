"""billing.reset_due_limits from Celery beat: set-based, idempotent, safe beside charges."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from billing.core.rules import as_utc
from billing.core.settings import get_settings
from billing.jobs import resets
from billing.storage.engine import session_factory
from tests.conftest import (
    RESULT_TIMEOUT,
    days_ago,
    event_rows,
    hold_rows,
    ledger_rows,
    reset_rows,
)
from tests.procs import celery_worker_process
from worker import app


def _bulk_due_accounts(engine, count: int, anchor, first_id: int = 100_000) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (id, freemium_actions_used, freemium_reset_at,"
                " subscription_ops_used, subscription_ops_reset_at)"
                " SELECT g, 1 + g % 3, :anchor, 0, :anchor"
                " FROM generate_series(:a, :b) AS g"
            ),
            {"a": first_id, "b": first_id + count - 1, "anchor": anchor},
        )


def test_reset_resets_only_due_accounts_and_keeps_their_anchor(worker, accounts, engine):
    anchor = days_ago(65)
    due = [accounts.create(freemium_actions_used=n, freemium_reset_at=anchor) for n in (0, 2, 5)]
    due_sub = accounts.subscriber(subscription_ops_used=40, subscription_ops_reset_at=anchor)
    fresh = accounts.create(freemium_actions_used=3, freemium_reset_at=days_ago(10))

    first = worker.reset_due_limits()
    second = worker.reset_due_limits()

    assert (first["ok"], first["reset"]) == (True, 4)
    assert second["reset"] == 0
    for user in due:
        row = accounts.get(user)
        assert row.freemium_actions_used == 0
        assert as_utc(row.freemium_reset_at) == anchor + timedelta(days=60)
    sub = accounts.get(due_sub)
    assert (sub.subscription_ops_used, sub.freemium_actions_used) == (0, 0)
    assert accounts.get(fresh).freemium_actions_used == 3
    # One record per allowance that gave something back: what, for which period, and when;
    # none in the ledger, which holds movements of money and allowance only.
    restored = [(r.user_id, r.source, r.restored, r.period_start) for r in reset_rows(engine)]
    opened = anchor + timedelta(days=60)
    assert sorted(restored) == sorted(
        [
            (due[1], "freemium", 2, opened),
            (due[2], "freemium", 5, opened),
            (due_sub, "subscription", 40, opened),
        ]
    )
    assert all(r.recorded_at >= opened for r in reset_rows(engine))
    assert [r for r in ledger_rows(engine) if r.entry_type == "reset"] == []


def test_two_reset_runs_at_once_reset_each_account_once(worker, engine):
    anchor = days_ago(31)
    _bulk_due_accounts(engine, 5000, anchor)

    runs = [app.send_task("billing.reset_due_limits") for _ in range(2)]
    results = [r.get(timeout=RESULT_TIMEOUT * 4) for r in runs]

    assert sum(r["reset"] for r in results) == 5000
    with engine.connect() as conn:
        zeroed, moved = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE freemium_actions_used = 0),"
                " count(*) FILTER (WHERE freemium_reset_at = :moved"
                "   AND subscription_ops_reset_at = :moved)"
                " FROM users"
            ),
            {"moved": anchor + timedelta(days=30)},
        ).one()
        recorded, accounts_recorded = conn.execute(
            text("SELECT count(*), count(DISTINCT user_id) FROM allowance_resets")
        ).one()
    assert (zeroed, moved) == (5000, 5000)
    assert (recorded, accounts_recorded) == (5000, 5000)


def test_batches_grow_while_fast_and_every_due_account_is_reset_once(engine):
    anchor = days_ago(31)
    _bulk_due_accounts(engine, 300, anchor)
    factory = session_factory(engine)

    # A target no batch can reach: each batch doubles, from the least size on (10, 100, 200).
    totals = resets.reset_due_limits(factory, get_settings(), target_ms=10**9, first_batch=10)

    assert (totals["batches"], totals["reset"], totals["recorded"]) == (3, 300, 300)
    with engine.connect() as conn:
        moved = conn.execute(
            text("SELECT count(*) FROM users WHERE freemium_reset_at = :moved"),
            {"moved": anchor + timedelta(days=30)},
        ).scalar_one()
    assert moved == 300
    assert resets.reset_due_limits(factory, get_settings())["reset"] == 0


def test_a_slow_batch_shrinks_the_next_to_the_time_target():
    assert resets.next_batch_size(3000, elapsed_ms=120, target_ms=40) == 1000
    assert resets.next_batch_size(1000, elapsed_ms=1, target_ms=40) == 2000  # at most double
    assert resets.next_batch_size(1000, elapsed_ms=30, target_ms=40) == 1333
    assert resets.next_batch_size(500, elapsed_ms=10_000, target_ms=40) == resets.MIN_BATCH
    assert resets.next_batch_size(resets.MAX_BATCH, elapsed_ms=1) == resets.MAX_BATCH


def test_reset_racing_100_concurrent_charges_loses_nothing(worker, accounts, engine):
    limit = get_settings().freemium_limit
    cost = get_settings().generation_cost
    anchor = days_ago(31)
    users = [
        accounts.create(freemium_actions_used=limit, freemium_reset_at=anchor) for _ in range(10)
    ]
    for user in users:
        worker.grant(user, 3 * cost, f"fund-{user}")

    queue = "billing-reset-race"
    with celery_worker_process(queue, concurrency=4):
        pending = []
        for i in range(100):
            pending.append(
                app.send_task(
                    "billing.charge_generation",
                    kwargs={"user_id": users[i % 10], "idempotency_key": f"race-{i}"},
                    queue=queue,
                )
            )
            if i % 20 == 0:
                pending.append(app.send_task("billing.reset_due_limits", queue=queue))
        outcomes = [p.get(timeout=RESULT_TIMEOUT * 4) for p in pending]

    charges = [o for o in outcomes if "reset" not in o]
    assert [o["code"] for o in charges].count(200) == 10 * (limit + 3)
    assert [o["code"] for o in charges].count(402) == 100 - 10 * (limit + 3)
    for user in users:
        row = accounts.get(user)
        assert as_utc(row.freemium_reset_at) == anchor + timedelta(days=30)
        assert (row.freemium_actions_used, row.balance_credits) == (limit, 0)
        resets = reset_rows(engine, user)
        assert [(r.source, r.restored) for r in resets] == [("freemium", limit)]
    assert worker.audit()["clean"] is True


def test_a_real_beat_fires_the_reset_the_sweeps_and_the_relay_and_a_second_beat_stands_by(
    worker, accounts, engine, tmp_path, broker
):
    """On each broker: on RabbitMQ the beat's tasks go to a worker process of their own (the
    in-process worker is on Redis), and the beat lock lives in the result backend's Redis."""
    user = accounts.create(freemium_actions_used=4, freemium_reset_at=days_ago(31))
    # A hold nobody settles or touches again: only the beat's sweep can expire it.
    abandoned = accounts.credits_only()
    worker.reserve_generation(abandoned, "beat-abandoned", ttl_seconds=1)
    # Events a worker recorded and died before publishing, and a subscription about to end.
    emptied = accounts.credits_only(balance_credits=get_settings().generation_cost)
    worker.charge_generation(emptied, "beat-emptied")
    with engine.begin() as conn:
        conn.execute(text("UPDATE billing_events SET published_at = NULL"))
    lapsing = accounts.subscriber(subscription_end=datetime.now(UTC) + timedelta(days=1))
    env_cmd = [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO"]

    def beat(name: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            [*env_cmd, "--schedule", str(tmp_path / f"{name}-schedule")],
            env={
                **os.environ,
                "BILLING_BROKER_URL": broker.url,
                "BILLING_RESET_INTERVAL_SECONDS": "1",
                "BILLING_HOLD_SWEEP_SECONDS": "1",
                "BILLING_EVENTS_SWEEP_SECONDS": "1",
                "BILLING_SUBSCRIPTION_SWEEP_SECONDS": "1",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    stack = contextlib.ExitStack()
    if broker.amqp:
        queues = {"BILLING_QUEUE": "billing", "BILLING_ADMIN_QUEUE": "billing-admin"}
        control = stack.enter_context(broker.producer("billing"))
        stack.enter_context(
            celery_worker_process(
                "billing,billing-admin", 2, env={**broker.worker_env("billing"), **queues},
                control_app=control,
            )
        )  # fmt: skip
    first = beat("first")
    second = None
    try:
        deadline = time.monotonic() + 60
        while accounts.get(user).freemium_actions_used and time.monotonic() < deadline:
            time.sleep(0.2)
        assert accounts.get(user).freemium_actions_used == 0
        while hold_rows(engine)[0].status == "held" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert hold_rows(engine)[0].status == "expired"
        assert accounts.get(abandoned).balance_credits == 100

        def events() -> list[tuple[int, str, bool]]:
            return [
                (row.user_id, row.type, row.published_at is not None) for row in event_rows(engine)
            ]

        expected = {
            (emptied, "credits.low", True),
            (emptied, "credits.depleted", True),
            (abandoned, "hold.expired", True),
            (lapsing, "subscription.expiring", True),
        }
        while set(events()) != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(events()) == sorted(expected)
        second = beat("second")
        deadline = time.monotonic() + 60
        while "standing by" not in (tmp_path / "second.log").read_text() and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert (
            "another beat holds the beat lock; standing by" in (tmp_path / "second.log").read_text()
        )
        assert "Sending due task" not in (tmp_path / "second.log").read_text()
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
        stack.close()


def test_a_period_already_in_the_journal_is_skipped_counted_and_logged_not_fatal(
    worker, accounts, engine, caplog
):
    # Only a hand-written row or an anchor moved backwards can make a period open twice. One
    # such row must not fail every run: the batch resets its accounts, skips that record,
    # counts it and logs it, and the next run goes on.
    anchor = days_ago(31)
    odd = accounts.create(freemium_actions_used=2, freemium_reset_at=anchor)
    others = [accounts.create(freemium_actions_used=3, freemium_reset_at=anchor) for _ in range(3)]
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO allowance_resets (user_id, source, period_start, restored)"
                " VALUES (:u, 'freemium', :start, 1)"
            ),
            {"u": odd, "start": anchor + timedelta(days=30)},
        )

    with caplog.at_level("WARNING", logger="billing.resets"):
        first = worker.reset_due_limits()

    assert (first["ok"], first["reset"], first["recorded"], first["skipped"]) == (True, 4, 3, 1)
    assert str(odd) in caplog.text and "skipped" in caplog.text
    assert [accounts.get(u).freemium_actions_used for u in (odd, *others)] == [0, 0, 0, 0]
    # The hand-written record stands as it was; the others were recorded once.
    assert [r.restored for r in reset_rows(engine, odd)] == [1]
    assert [r.restored for u in others for r in reset_rows(engine, u)] == [3, 3, 3]
    # The next run finds nothing due and fails on nothing; charges are served.
    assert worker.reset_due_limits()["reset"] == 0
    assert worker.charge_generation(odd, "after-dup")["code"] == 200
    assert accounts.get(odd).freemium_actions_used == 1
