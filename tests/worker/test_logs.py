"""One JSON log line per billing task outcome, without meta contents."""

from __future__ import annotations

import json

from tests.conftest import RESULT_TIMEOUT
from tests.procs import LOG_DIR, celery_worker_process
from worker import app

QUEUE = "billing-logs"
SECRET = "pm_live_SECRET_4242"


def test_outcome_log_lines_are_json_without_meta(accounts):
    user = accounts.credits_only()
    calls = [
        (
            "billing.charge_generation",
            {"user_id": user, "idempotency_key": "log-1", "meta": {"card": SECRET}},
        ),
        (
            "billing.charge_generation",
            {"user_id": user, "idempotency_key": "log-1", "meta": {"card": SECRET}},
        ),
        (
            "billing.charge_assistant",
            {"user_id": user, "idempotency_key": "log-2", "cost": 0, "meta": {"card": SECRET}},
        ),
        (
            "billing.charge_batch",
            {
                "charges": [
                    {
                        "user_id": user,
                        "idempotency_key": "log-3",
                        "operation": "generation",
                        "meta": {"card": SECRET},
                    },
                    {"user_id": user, "idempotency_key": "log-1", "operation": "generation"},
                ]
            },
        ),
    ]
    with celery_worker_process(QUEUE, concurrency=1, loglevel="INFO") as proc:
        sent = [app.send_task(name, kwargs=kwargs, queue=QUEUE) for name, kwargs in calls]
        for result in sent:
            result.get(timeout=RESULT_TIMEOUT)
        log_path = proc.log_path
    # Nor do the stored results (kept a week) copy the request's kwargs.
    stored = [app.backend.get(app.backend.get_key_for_task(r.id)) for r in sent]
    assert all(s is not None for s in stored)
    assert not any(SECRET.encode() in s for s in stored)

    text = log_path.read_text()
    outcomes = [json.loads(line) for line in text.splitlines() if '"billing.outcome"' in line]
    assert [(o["task"], o["idempotency_key"], o["code"], o["replayed"]) for o in outcomes] == [
        ("billing.charge_generation", "log-1", 200, False),
        ("billing.charge_generation", "log-1", 200, True),
        ("billing.charge_assistant", "log-2", 422, None),
        # A batch: one line per item, as the item's own message would log it.
        ("billing.charge_batch", "log-3", 200, False),
        ("billing.charge_batch", "log-1", 200, True),
    ]
    assert outcomes[3]["duration_ms"] is None and outcomes[3]["user_id"] == user
    first = outcomes[0]
    assert (first["user_id"], first["source"], first["amount"]) == (user, "credits", 10)
    assert isinstance(first["duration_ms"], float) and first["ts"].endswith("+00:00")
    assert SECRET not in text
    assert LOG_DIR in log_path.parents


def test_no_credential_in_logs_or_results(accounts, database):
    # Trust authentication ignores the password, so the worker runs with one in its URL.
    password = "db-pa55-SECRET"
    url = database.replace("postgres@", f"postgres:{password}@")
    assert password in url
    user = accounts.credits_only()
    with celery_worker_process(
        "billing-secrets", concurrency=1, loglevel="DEBUG", env={"BILLING_DATABASE_URL": url}
    ) as proc:
        answers = [
            app.send_task(name, kwargs=kwargs, queue="billing-secrets").get(timeout=RESULT_TIMEOUT)
            for name, kwargs in [
                ("billing.charge_generation", {"user_id": user, "idempotency_key": "sec-1"}),
                ("billing.charge_generation", {"user_id": 1, "idempotency_key": "sec-2"}),
                ("billing.get_ledger", {"user_id": user, "limit": 0}),
                ("billing.audit", {}),
            ]
        ]
        log = proc.log_path.read_text()

    assert [a["code"] for a in answers] == [200, 404, 422, 200]
    assert password not in log
    assert password not in json.dumps(answers)
