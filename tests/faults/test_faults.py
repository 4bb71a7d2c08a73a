"""Fault injection: crashes, restarts and duplicate storms lose nothing and double nothing.

Each scenario runs real `celery worker` subprocesses against the real PostgreSQL, on each
broker in turn (Redis, and RabbitMQ's quorum queues), with results in Redis; it sends 2,000
charges over 200 accounts and checks the invariants in ``harness``. On RabbitMQ the producer
never resends a key: every message it sent is answered.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.brokers import Broker, OwnRabbitMQ, OwnRedis
from tests.faults import harness
from tests.procs import celery_worker_process, children

pytestmark = pytest.mark.faults


def _report(name: str, broker: Broker, report: harness.Report) -> None:
    print(f"\n[{broker.name}: {name}] {report.line()}")


def _env(broker: Broker, queue: str) -> dict[str, str]:
    return {**harness.WORKER_ENV, **broker.worker_env(queue)}


def test_killed_worker_child_and_killed_worker(engine, database, broker):
    queue = f"faults-kill-{broker.name}"
    env = _env(broker, queue)
    fleet = harness.prepare_fleet(database)
    with broker.producer(queue) as app:
        with celery_worker_process(queue, 4, env=env, control_app=app) as first:
            sent = harness.send_stream(app, fleet, queue)
            harness.wait_until_progress(engine, 300)
            child = children(first.pid)[0]
            os.kill(child, signal.SIGKILL)  # one pool process, mid-task
            harness.wait_until_progress(engine, 900)
            os.killpg(first.pid, signal.SIGKILL)  # the whole worker, children and all
            first.wait()
        # Its unacknowledged messages come back to the new worker: at once on RabbitMQ (the
        # connection closed), after the visibility timeout on Redis.
        with celery_worker_process(queue, 4, env=env, control_app=app):
            report, _answers = harness.finish(engine, app, fleet, sent, queue, broker)
    _report("SIGKILL child + SIGKILL worker", broker, report)


def test_holds_outlive_a_killed_worker_and_expire_when_the_pipeline_dies(engine, database, broker):
    """Reserves instead of charges: a worker is SIGKILLed mid-stream (its reserves come back
    to the next one) while the pipeline captures every other job as soon as its hold is
    answered; then the pipeline dies, and the holds it left open expire and give back
    everything they took. Their time runs out by moving their deadlines to now, as the other
    tests move the clock: nothing expires during the stream, so exactly as many reserves
    succeed as the balances allow."""
    queue = f"faults-holds-{broker.name}"
    env = _env(broker, queue)
    ttl = 3600
    fleet = harness.prepare_fleet(database)
    with engine.connect() as conn:
        before = conn.execute(text(_TOTALS)).one()
    with broker.producer(queue) as app:
        with celery_worker_process(queue, 4, env=env, control_app=app) as first:
            sent = harness.send_stream(app, fleet, queue, hold_ttl=ttl)
            harness.wait_until_progress(engine, 500)
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        with celery_worker_process(queue, 4, env=env, control_app=app):
            captures = _capture_as_answered(app, sent, every=2, queue=queue, budget=120)
            report, answers = harness.finish(engine, app, fleet, sent, queue, broker, hold_ttl=ttl)
            held = sorted(key for key, copies in answers.items() if copies[0]["code"] == 200)
            answered = {key: result.get(timeout=120) for key, result in captures.items()}
            assert all(a["code"] == 200 for a in answered.values()), answered
            captured = sorted(answered)
            assert len(captured) > len(held) // 3
            # The pipeline is gone: the open holds' time runs out.
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "UPDATE billing_holds SET expires_at = now() - interval '1 millisecond'"
                        " WHERE status = 'held'"
                    )
                )
            # Some accounts are touched again and expire their holds themselves; the sweep,
            # run twice at once, gets the rest.
            touched = [
                app.send_task("billing.get_state", kwargs={"user_id": u}, queue=queue)
                for u in fleet.user_ids[::7]
            ]
            sweeps = [app.send_task("billing.expire_holds", queue=queue) for _ in range(2)]
            assert all(t.get(timeout=120)["code"] == 200 for t in touched)
            swept = sum(s.get(timeout=120)["expired"] for s in sweeps)
            audit = app.send_task("billing.audit", queue=queue).get(timeout=120)

    with engine.connect() as conn:
        statuses = dict(
            conn.execute(text("SELECT status, count(*) FROM billing_holds GROUP BY status")).all()
        )
        kept = conn.execute(
            text(
                "SELECT source, sum(amount) FROM billing_holds WHERE status = 'captured'"
                " GROUP BY source"
            )
        ).all()
        expiries = conn.execute(
            text("SELECT count(*) FROM credits_ledger WHERE entry_type = 'expire'")
        ).scalar_one()
        after = conn.execute(text(_TOTALS)).one()
    abandoned = len(held) - len(captured)
    assert statuses == {"captured": len(captured), "expired": abandoned}
    assert expiries == abandoned  # each hold given back once, by the sweeps or a read
    assert audit["clean"], audit["mismatches"][:5]
    # Everything not captured came back: what is gone is exactly what the captures kept.
    kept_by = dict(kept)
    assert before.credits - after.credits == kept_by.get("credits", 0)
    assert after.ops - before.ops == kept_by.get("subscription", 0)
    assert after.actions - before.actions == kept_by.get("freemium", 0)
    _report(
        f"holds: SIGKILL worker, {len(captured)} captured as answered, {abandoned} abandoned"
        f" and expired ({swept} by the two sweeps, the rest by reads)",
        broker,
        report,
    )


def _capture_as_answered(app, sent, every: int, queue: str, budget: float) -> dict:
    """Send a capture for every ``every``-th key as soon as its reserve answers with a hold,
    for at most ``budget`` seconds; the captures sent, by key."""
    waiting = dict(sent[::every])
    captures = {}
    deadline = time.monotonic() + budget
    while waiting and time.monotonic() < deadline:
        for key, result in list(waiting.items()):
            if result.ready():
                del waiting[key]
                if result.get()["code"] == 200:
                    captures[key] = app.send_task(
                        "billing.capture", kwargs={"idempotency_key": key}, queue=queue
                    )
        time.sleep(0.05)
    return captures


_TOTALS = (
    "SELECT sum(balance_credits) AS credits, sum(subscription_ops_used) AS ops,"
    " sum(freemium_actions_used) AS actions FROM users"
)


def test_warm_shutdown_then_restart(engine, database, broker):
    queue = f"faults-term-{broker.name}"
    env = _env(broker, queue)
    fleet = harness.prepare_fleet(database)
    with broker.producer(queue) as app:
        with celery_worker_process(queue, 4, env=env, control_app=app) as first:
            sent = harness.send_stream(app, fleet, queue)
            harness.wait_until_progress(engine, 500)
            first.send_signal(signal.SIGTERM)  # warm shutdown: finish what runs, keep the rest
            first.wait(timeout=60)
        stopped_at = harness.outcomes_stored(engine)
        with celery_worker_process(queue, 4, env=env, control_app=app):
            report, _answers = harness.finish(engine, app, fleet, sent, queue, broker)
    assert stopped_at < len(fleet.keys)  # the shutdown really happened mid-stream
    _report(f"SIGTERM at {stopped_at} outcomes, restart", broker, report)


def test_duplicate_storm_to_two_workers(engine, database, broker):
    queue = f"faults-storm-{broker.name}"
    env = _env(broker, queue)
    fleet = harness.prepare_fleet(database)
    with (
        broker.producer(queue) as app,
        celery_worker_process(queue, 3, env=env, control_app=app),
        celery_worker_process(queue, 3, env=env, control_app=app),
    ):
        sent = harness.send_stream(app, fleet, queue, copies=3)
        report, answers = harness.finish(engine, app, fleet, sent, queue, broker)
    # Every key has one first answer; its two other copies are replays of it.
    for copies in answers.values():
        assert sorted(c["replayed"] for c in copies) == [False, True, True]
    _report("every key x3, two workers", broker, report)


def test_database_connections_killed_repeatedly(engine, database, broker):
    queue = f"faults-pg-{broker.name}"
    env = _env(broker, queue)
    fleet = harness.prepare_fleet(database)
    stop = threading.Event()
    killed = []

    def killer() -> None:
        while not stop.is_set():
            with engine.begin() as conn:
                killed.append(
                    conn.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                            " WHERE application_name = 'billing-processor'"
                            " AND datname = current_database()"
                        )
                    ).scalar_one()
                )
            stop.wait(0.3)

    with (
        broker.producer(queue) as app,
        celery_worker_process(queue, 4, env=env, control_app=app),
    ):
        sent = harness.send_stream(app, fleet, queue)
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            harness.wait_until_progress(engine, 1500, timeout=240)
        finally:
            stop.set()
            thread.join()
        report, _answers = harness.finish(engine, app, fleet, sent, queue, broker)
    assert sum(killed) > 0
    _report(f"{sum(killed)} worker connections terminated", broker, report)


def test_broker_restarted_mid_stream(engine, database, broker, tmp_path: Path):
    """The tests' own broker node is stopped and started again while the workers run."""
    own = OwnRabbitMQ(tmp_path / "rabbitmq") if broker.amqp else OwnRedis(tmp_path / "redis")
    own.start()
    try:
        restarted = Broker(broker.name, own.url, broker.resends_allowed)
        queue = f"faults-restart-{broker.name}"
        env = _env(restarted, queue)
        fleet = harness.prepare_fleet(database)
        # As `billing worker` runs it: kombu's Redis transport sometimes loses its channel
        # while Redis restarts and the worker dies ("Unrecoverable error"); the supervisor
        # starts it again.
        with (
            restarted.producer(queue) as app,
            celery_worker_process(queue, 4, env=env, control_app=app, supervised=True) as worker,
        ):
            sent = harness.send_stream(app, fleet, queue)
            harness.wait_until_progress(engine, 500)
            own.restart()
            # On Redis, a message handed out in the instant it went down can be gone with it
            # (kombu pops it before recording it as unacknowledged): its answer never comes
            # and the producer sends the same key again, as the README tells producers to.
            # RabbitMQ puts back every delivery not acknowledged before it stopped.
            report, _answers = harness.finish(engine, app, fleet, sent, queue, restarted)
            restarts = worker.log_path.read_text().count("starting it again")
    finally:
        own.stop()
    _report(f"broker restarted mid-stream; worker restarted {restarts} time(s)", broker, report)
