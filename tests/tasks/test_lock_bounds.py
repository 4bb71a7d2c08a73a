"""A worker frozen in the middle of a charge cannot block the account for long; a batch whose
accounts are locked answers inside its time limit.

The frozen pool process (SIGSTOP) holds the account's row lock between the charge's two round
trips. PostgreSQL ends its session after the idle-in-transaction timeout, which releases the
lock; another worker's charge, meanwhile waiting and retrying its lock timeouts, then goes
through. When the frozen process wakes, its charge finds its connection gone, is retried, and
is charged once.
"""

from __future__ import annotations

import os
import signal
import time

import psycopg

from billing_client import BillingClient
from tests.conftest import RESULT_TIMEOUT, ledger_rows
from tests.procs import celery_worker_process, children, wait_until
from worker import app

IDLE_TIMEOUT_MS = 3000
LOCK_TIMEOUT_MS = 1000
ENV = {
    "BILLING_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": str(IDLE_TIMEOUT_MS),
    "BILLING_DB_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS),
}


def test_a_frozen_worker_child_releases_the_account_within_the_idle_timeout(
    engine, accounts, worker
):
    user = accounts.freemium_only()
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    sessions = (
        "SELECT state, wait_event_type FROM pg_stat_activity"
        " WHERE application_name = 'billing-processor' AND datname = current_database()"
    )

    with (
        celery_worker_process(
            "billing-frozen", concurrency=1, env=ENV, loglevel="INFO"
        ) as frozen_worker,
        celery_worker_process("billing-other", concurrency=1, env=ENV),
        psycopg.connect(dsn, autocommit=True) as observer,
    ):
        child = children(frozen_worker.pid)[0]
        with psycopg.connect(dsn) as holder:
            holder.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user,))
            first = app.send_task(
                "billing.charge_generation",
                kwargs={"user_id": user, "idempotency_key": "frozen-1"},
                queue="billing-frozen",
            )
            wait_until(
                lambda: ("active", "Lock") in observer.execute(sessions).fetchall(),
                "the first charge waits for the row lock",
            )
            os.kill(child, signal.SIGSTOP)
        # The lock is the frozen charge's now: it read the account and will never write.
        wait_until(
            lambda: any(s == "idle in transaction" for s, _ in observer.execute(sessions)),
            "the frozen charge holds the lock, idle in its transaction",
        )
        try:
            frozen_at = time.monotonic()
            second = app.send_task(
                "billing.charge_generation",
                kwargs={"user_id": user, "idempotency_key": "frozen-2"},
                queue="billing-other",
            )
            served = second.get(timeout=RESULT_TIMEOUT)
            waited = time.monotonic() - frozen_at
        finally:
            os.kill(child, signal.SIGCONT)
        woken = first.get(timeout=RESULT_TIMEOUT)
        frozen_log = frozen_worker.log_path.read_text()

    assert served["ok"] is True and served["replayed"] is False
    # It waited for the frozen session to be ended, not for the frozen process.
    print(f"\nsecond charge served {waited:.2f} s after the first one froze")
    assert waited < (IDLE_TIMEOUT_MS + 2 * LOCK_TIMEOUT_MS) / 1000 + 4
    assert woken["ok"] is True
    # Its session was ended under it: the woken charge failed on it, was retried, and paid.
    assert f"billing.charge_generation[{first.id}] retry: Retry in" in frozen_log
    keys = [r.idempotency_key for r in ledger_rows(engine, user)]
    assert sorted(keys) == ["frozen-1", "frozen-2"]
    assert accounts.get(user).freemium_actions_used == 2
    assert worker.audit(user)["clean"] is True


BATCH_TIME_LIMIT = 6  # seconds: the batch must answer within it (its deadline is 1 s before)


def test_a_batch_on_locked_accounts_answers_within_its_time_limit_and_says_what_to_resend(
    engine, accounts, settings_env
):
    # A lock wait of 1 s per locked account: eight of them would take 8 s, past the limit.
    settings_env(
        db_lock_timeout_ms=str(LOCK_TIMEOUT_MS), task_time_limit_seconds=str(BATCH_TIME_LIMIT)
    )
    free, other = accounts.credits_only(), accounts.credits_only()
    locked = [accounts.credits_only() for _ in range(8)]
    items = [
        {"user_id": free, "idempotency_key": "bd-free-1"},
        {"user_id": locked[0], "idempotency_key": "bd-locked-0"},
        {"user_id": locked[0], "idempotency_key": "bd-locked-0-again"},
        {"user_id": free, "idempotency_key": "bd-free-2"},
        *(
            {"user_id": user, "idempotency_key": f"bd-locked-{n}"}
            for n, user in enumerate(locked[1:], start=1)
        ),
        {"user_id": free, "idempotency_key": "bd-free-3"},
        {"user_id": other, "idempotency_key": "bd-other"},
    ]
    items = [{**item, "operation": "generation"} for item in items]
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    with celery_worker_process("billing-batch-deadline", concurrency=1) as proc:
        client = BillingClient(app, queue="billing-batch-deadline", timeout=2 * BATCH_TIME_LIMIT)
        with psycopg.connect(dsn) as holder:
            holder.execute("SELECT 1 FROM users WHERE id = ANY(%s) FOR UPDATE", (locked,))
            sent = time.monotonic()
            first = client.charge_batch(items)
            took = time.monotonic() - sent
            holder.rollback()
        log = proc.log_path.read_text()
        resend = [item for item, answer in zip(items, first, strict=True) if answer.retry]
        resent = client.charge_batch(resend)
        whole_again = client.charge_batch(items)

    print(f"\nthe batch answered in {took:.2f} s")
    assert took < BATCH_TIME_LIMIT
    assert "Hard time limit" not in log and "WorkerLostError" not in log
    errors = [answer.error for answer in first]
    # Items decided before the deadline keep their answers; the locked accounts' items waited
    # their lock timeout; a later item of the same account was not tried; once the deadline
    # was near, no item was started.
    assert [answer.code for answer in first[:4]] == [200, 503, 503, 200]
    assert errors[1:3] == ["lock_timeout", "not_attempted"]
    reached = errors[4:].index("not_attempted")
    assert 2 <= reached <= 4, errors  # about one a second, up to the deadline at 5 s
    assert errors[4 : 4 + reached] == ["lock_timeout"] * reached
    assert errors[4 + reached :] == ["not_attempted"] * (len(items) - 4 - reached)
    not_done = [answer for answer in first if answer.code == 503]
    assert all(answer.retry and "nothing was written" in answer.message for answer in not_done)
    assert [answer.idempotency_key for answer in not_done] == [i["idempotency_key"] for i in resend]
    assert not any(answer.retry for answer in first if answer.code == 200)
    # Sent again by the same keys once the lock is free, each is charged, and once.
    assert [(answer.code, answer.replayed) for answer in resent] == [(200, False)] * len(resend)
    assert all(answer.code == 200 and answer.replayed for answer in whole_again)
    users = {free, other, *locked}
    keys = [row.idempotency_key for row in ledger_rows(engine) if row.user_id in users]
    assert sorted(keys) == sorted(item["idempotency_key"] for item in items)
    assert accounts.get(locked[0]).balance_credits == 80


def test_a_batch_item_whose_lock_wait_the_statement_timeout_ends_answers_503(
    engine, accounts, settings_env
):
    """A statement timeout shorter than the lock timeout ends the lock wait first, as
    QueryCanceled: that item answers 503 ``lock_timeout`` as well. Let through, it retried the
    whole batch, which waited on the lock again, until the lock was free."""
    settings_env(db_lock_timeout_ms="5000", db_statement_timeout_ms=str(LOCK_TIMEOUT_MS))
    free, locked = accounts.credits_only(), accounts.credits_only()
    items = [
        {"user_id": free, "idempotency_key": "bs-free-1", "operation": "generation"},
        {"user_id": locked, "idempotency_key": "bs-locked", "operation": "generation"},
        {"user_id": free, "idempotency_key": "bs-free-2", "operation": "generation"},
    ]
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    with celery_worker_process("billing-batch-statement", concurrency=1):
        client = BillingClient(app, queue="billing-batch-statement", timeout=RESULT_TIMEOUT)
        with psycopg.connect(dsn) as holder:
            holder.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (locked,))
            answers = client.charge_batch(items)
            holder.rollback()

    assert [(answer.code, answer.error) for answer in answers] == [
        (200, None),
        (503, "lock_timeout"),
        (200, None),
    ]
    assert answers[1].retry
    assert accounts.get(locked).balance_credits == 100
    assert [row.idempotency_key for row in ledger_rows(engine, locked)] == []
