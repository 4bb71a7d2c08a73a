"""A worker frozen in the middle of a charge cannot block the account for long.

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
