"""Infrastructure failures are retried with backoff, then fail the task, without leaking secrets."""

from __future__ import annotations

from celery.result import AsyncResult

from tests.procs import celery_worker_process
from worker import app

QUEUE = "billing-retry"
UNREACHABLE = "postgresql+psycopg://billing:s3cret-pw@127.0.0.1:1/billing"


def test_unreachable_database_is_retried_then_fails(celery_worker):
    env = {"BILLING_DATABASE_URL": UNREACHABLE, "BILLING_TASK_MAX_RETRIES": "2"}
    with celery_worker_process(QUEUE, concurrency=1, env=env, loglevel="INFO") as proc:
        result: AsyncResult = app.send_task(
            "billing.charge_generation",
            kwargs={"user_id": 1, "idempotency_key": "no-db"},
            queue=QUEUE,
        )
        result.get(timeout=60, propagate=False)
        log = proc.log_path.read_text()

    assert result.state == "FAILURE"
    assert "OperationalError" in str(result.result) and "Connection refused" in str(result.result)
    # Two retries after the first attempt, then the failure (the worker logs each retry).
    assert log.count(f"billing.charge_generation[{result.id}] retry: Retry in") == 2
    assert "s3cret-pw" not in str(result.result) and "s3cret-pw" not in (result.traceback or "")


def test_tasks_are_registered_under_their_public_names():
    expected = {
        "billing.charge_generation",
        "billing.charge_assistant",
        "billing.get_state",
        "billing.get_ledger",
    }
    assert expected <= set(app.tasks)
    for name in expected:
        assert app.amqp.router.route({}, name)["queue"].name == "billing"
