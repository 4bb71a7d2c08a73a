"""Infrastructure failures are retried with backoff, then fail the task, without leaking secrets."""

from __future__ import annotations

from celery.result import AsyncResult

from tests.procs import celery_worker_process, free_port, sample, scrape
from worker import app

QUEUE = "billing-retry"
UNREACHABLE = "postgresql+psycopg://billing:s3cret-pw@127.0.0.1:1/billing"


def test_unreachable_database_is_retried_then_fails(celery_worker):
    port = free_port()
    env = {
        "BILLING_DATABASE_URL": UNREACHABLE,
        "BILLING_TASK_MAX_RETRIES": "2",
        "BILLING_METRICS_PORT": str(port),
    }
    with celery_worker_process(QUEUE, concurrency=1, env=env, loglevel="INFO") as proc:
        result: AsyncResult = app.send_task(
            "billing.charge_generation",
            kwargs={"user_id": 1, "idempotency_key": "no-db"},
            queue=QUEUE,
        )
        result.get(timeout=60, propagate=False)
        log = proc.log_path.read_text()
        metrics = scrape(port)  # answers with the database away, and says so

    assert result.state == "FAILURE"
    assert "OperationalError" in str(result.result) and "Connection refused" in str(result.result)
    # Two retries after the first attempt, then the failure (the worker logs each retry).
    assert log.count(f"billing.charge_generation[{result.id}] retry: Retry in") == 2
    assert "s3cret-pw" not in str(result.result) and "s3cret-pw" not in (result.traceback or "")
    task = "billing.charge_generation"
    assert sample(metrics, "billing_retries_total", task=task, reason="OperationalError") == 2
    assert sample(metrics, "billing_task_failures_total", task=task, reason="OperationalError") == 1
    assert sample(metrics, "billing_state_read_ok", source="database") == 0
    assert sample(metrics, "billing_state_read_ok", source="broker") == 1


def test_tasks_are_registered_under_their_public_names():
    expected = {
        "billing.charge_generation",
        "billing.charge_assistant",
        "billing.get_state",
        "billing.get_ledger",
        "billing.charge_batch",
        "billing.reserve_batch",
    }
    assert expected <= set(app.tasks)
    for name in expected:
        assert app.amqp.router.route({}, name)["queue"].name == "billing"
