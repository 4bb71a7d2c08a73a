"""Reads that bring an account up to date never write back what they saw before the row lock.

Each race is driven deterministically: a test transaction holds the account's row lock, the
movement is sent and queues on it, then the read is sent and queues behind it, then the lock
is released. The read saw the account before the movement (its first, unlocked look found a
lazy reset due); what it stores must still be what the movement left.

And a read's figures are of one moment: thousands of reads while holds are taken and released
each see the account's credits whole.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
from celery.result import AsyncResult, ResultSet
from sqlalchemy import Engine

from billing.core.settings import get_settings
from tests.conftest import RESULT_TIMEOUT, days_ago, ledger_rows
from tests.procs import celery_worker_process, wait_until
from worker import app


def _dsn(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def _lock_waiters(observer: psycopg.Connection) -> int:
    return observer.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    ).fetchone()[0]


def race_behind_a_held_lock(
    engine: Engine, user: int, movement: Callable[[], object], read: Callable[[], object]
) -> tuple[object, object]:
    """Hold ``user``'s row lock; start the movement, then the read, each once the one before
    it queues on the lock; release; return both handles."""
    with (
        psycopg.connect(_dsn(engine), autocommit=True) as observer,
        psycopg.connect(_dsn(engine)) as holder,
    ):
        holder.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user,))
        first = movement()
        wait_until(lambda: _lock_waiters(observer) == 1, "the movement waits for the row lock")
        second = read()
        wait_until(lambda: _lock_waiters(observer) == 2, "the read waits behind it")
        holder.commit()
    return first, second


def _send(name: str, **kwargs: object) -> AsyncResult:
    return app.send_task(name, kwargs=kwargs)  # routed by name


def _freemium_used_up_and_due(accounts) -> int:
    return accounts.create(
        freemium_actions_used=get_settings().freemium_limit, freemium_reset_at=days_ago(31)
    )


def test_get_state_racing_a_charge_leaves_the_charge_counted(worker, accounts, engine):
    user = _freemium_used_up_and_due(accounts)

    charge, state = race_behind_a_held_lock(
        engine,
        user,
        lambda: _send("billing.charge_generation", user_id=user, idempotency_key="race-1"),
        lambda: _send("billing.get_state", user_id=user),
    )
    charged = charge.get(timeout=RESULT_TIMEOUT)
    read = state.get(timeout=RESULT_TIMEOUT)

    assert (charged["code"], charged["source"]) == (200, "freemium")
    assert [r.idempotency_key for r in ledger_rows(engine, user)] == ["race-1"]
    assert accounts.get(user).freemium_actions_used == 1
    assert read["state"]["freemium"]["used"] == 1
    assert worker.audit(user)["clean"] is True


def test_get_state_racing_a_new_subscription_keeps_its_anchor(worker, accounts, engine):
    user = accounts.create(
        subscription_type="standard",
        subscription_end=days_ago(5),
        subscription_ops_limit=100,
        subscription_ops_used=7,
        subscription_ops_reset_at=days_ago(40),
    )
    before = datetime.now(UTC)

    activation, state = race_behind_a_held_lock(
        engine,
        user,
        lambda: _send(
            "billing.activate_subscription", user_id=user, tier="premium", idempotency_key="sub-r"
        ),
        lambda: _send("billing.get_state", user_id=user),
    )
    activated = activation.get(timeout=RESULT_TIMEOUT)
    state.get(timeout=RESULT_TIMEOUT)

    assert activated["change"] == "new"
    row = accounts.get(user)
    assert row.subscription_ops_reset_at >= before  # the new period's start, not the old cycle's
    assert (row.subscription_type, row.subscription_ops_used) == ("premium", 0)
    assert worker.audit(user)["clean"] is True


def test_billing_state_command_racing_a_charge_leaves_the_charge_counted(worker, accounts, engine):
    user = _freemium_used_up_and_due(accounts)
    command: list[subprocess.Popen] = []

    def billing_state() -> None:
        command.append(
            subprocess.Popen(
                [sys.executable, "-m", "cli.main", "state", str(user), "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )

    charge, _ = race_behind_a_held_lock(
        engine,
        user,
        lambda: _send("billing.charge_generation", user_id=user, idempotency_key="race-cli"),
        billing_state,
    )
    charged = charge.get(timeout=RESULT_TIMEOUT)
    out, err = command[0].communicate(timeout=60)

    assert command[0].returncode == 0, err
    assert charged["source"] == "freemium"
    assert accounts.get(user).freemium_actions_used == 1
    assert json.loads(out)["state"]["freemium"]["used"] == 1
    assert worker.audit(user)["clean"] is True


READS_QUEUE = "billing-read-races"
READS = 2000
IN_FLIGHT = 100
HOLDS = 100  # of 10 credits: the account's 1,000


def test_get_state_shows_one_snapshot_while_holds_come_and_go(worker, accounts, engine):
    # Reserves and releases move the account's 1,000 credits between its balance and its open
    # holds: a read that saw the balance and the holds at two moments shows another sum. (On
    # two statements, about one read in a hundred did here.)
    user = accounts.create()
    worker.grant(user, 1000, f"fund-{user}")
    stop = threading.Event()
    churned: list[int] = []

    def churn() -> None:
        # Through the in-process worker, on the public queue, while another worker's
        # processes serve the reads from a queue of their own. A batch's reserves commit one
        # after another at the database's pace; then every hold is released, one task each.
        while not stop.is_set():
            keys = [f"churn-{len(churned)}-{n}" for n in range(HOLDS)]
            items = [
                {"user_id": user, "idempotency_key": key, "operation": "assistant", "cost": 10}
                for key in keys
            ]
            reserved = app.send_task("billing.reserve_batch", kwargs={"reserves": items})
            assert {r["code"] for r in reserved.get(timeout=RESULT_TIMEOUT)["results"]} == {200}
            released = [_send("billing.release", idempotency_key=key) for key in keys]
            assert {r.get(timeout=RESULT_TIMEOUT)["code"] for r in released} == {200}
            churned.append(len(keys))

    writer = threading.Thread(target=churn)
    sums: Counter[int] = Counter()
    with celery_worker_process(READS_QUEUE, concurrency=4):
        writer.start()
        try:
            for _ in range(READS // IN_FLIGHT):
                pending = [
                    app.send_task("billing.get_state", kwargs={"user_id": user}, queue=READS_QUEUE)
                    for _ in range(IN_FLIGHT)
                ]
                for answer in ResultSet(pending).get(timeout=RESULT_TIMEOUT):
                    state = answer["state"]
                    sums[state["credits"]["balance"] + state["held"]["credits"]] += 1
        finally:
            stop.set()
            writer.join()

    assert sums == {1000: READS}
    assert sum(churned) >= 2 * HOLDS  # the holds came and went while the reads ran
    assert accounts.get(user).balance_credits == 1000
    assert worker.audit(user)["clean"] is True
