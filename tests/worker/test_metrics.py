"""/metrics of a real worker (``celery -A worker worker``, prefork): business outcomes summed
over its pool processes, none lost when a child dies; state read from the database and the
broker; labels that name no user, key or meta; and every metric the alert rules and the
dashboard use is one a worker serves."""

from __future__ import annotations

import json
import os
import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from billing.core.settings import get_settings
from tests.procs import celery_worker_process, children, free_port, sample, scrape, wait_until
from worker import app

QUEUE = "billing-metrics"
OPS = Path(__file__).resolve().parents[2] / "ops"
TASKS = {
    "billing.charge_generation",
    "billing.charge_assistant",
    "billing.grant_credits",
    "billing.reserve_generation",
    "billing.expire_holds",
    "billing.expire_grants",
    "billing.void_grant",
    "billing.audit",
}


def _send(name: str, **kwargs: object) -> dict:
    return app.send_task(name, kwargs=kwargs, queue=QUEUE).get(timeout=60)


def test_a_worker_serves_outcomes_summed_over_its_pool_and_the_state(accounts, engine):
    cost = get_settings().generation_cost
    paying = accounts.credits_only(balance_credits=3 * cost)
    broke = accounts.no_funds()
    port = free_port()
    env = {"BILLING_METRICS_PORT": str(port)}
    with celery_worker_process(QUEUE, concurrency=2, env=env) as proc:
        for n in range(3):
            assert _send("billing.charge_generation", user_id=paying, idempotency_key=f"m{n}")["ok"]
        assert _send("billing.charge_generation", user_id=paying, idempotency_key="m0")["ok"]
        for n in range(2):
            answer = _send("billing.charge_generation", user_id=broke, idempotency_key=f"b{n}")
            assert answer["code"] == 402
        assert _send("billing.charge_assistant", user_id=-1, idempotency_key="bad")["code"] == 422
        assert _send("billing.grant_credits", user_id=paying, amount=5, idempotency_key="g")["ok"]
        held = _send("billing.reserve_generation", user_id=paying, idempotency_key="h", cost=5)
        assert held["ok"]
        assert _send("billing.expire_holds")["ok"]
        # Credits that expire and are voided: counted from the ledger at scrape time.
        soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        expiring = {"amount": 7, "idempotency_key": "gx", "expires_at": soon}
        assert _send("billing.grant_credits", user_id=broke, **expiring)["ok"]
        with engine.begin() as conn:
            conn.execute(text("UPDATE credit_grants SET expires_at = now() WHERE amount = 7"))
        assert _send("billing.expire_grants")["credits_expired"] == 7
        assert _send("billing.grant_credits", user_id=broke, amount=4, idempotency_key="gv")["ok"]
        assert _send("billing.void_grant", idempotency_key="gv")["amount"] == 4
        # Accounts made with balances and counters the ledger does not explain: mismatches.
        audited = _send("billing.audit")
        assert audited["mismatch_count"] > 0
        before = scrape(port)
        # A pool process killed: what it counted stays in the sum.
        for child in children(proc.pid):
            os.kill(child, signal.SIGKILL)
        wait_until(lambda: len(children(proc.pid)) == 2, "the pool replaced its processes")
        _send("billing.charge_generation", user_id=broke, idempotency_key="b-after")
        after = scrape(port)

    def outcomes(samples: dict, task: str, code: str, source: str = "") -> float | None:
        return sample(samples, "billing_outcomes_total", task=task, code=code, source=source)

    assert sample(before, "billing_credits_expired_total") == 7
    assert sample(before, "billing_credits_voided_total") == 4
    generation = "billing.charge_generation"
    assert outcomes(before, generation, "200", "credits") == 4  # a replay is an outcome too
    assert outcomes(before, generation, "402") == 2
    assert outcomes(before, "billing.charge_assistant", "422") == 1
    assert outcomes(before, "billing.grant_credits", "200", "credits") == 3  # with gx and gv
    assert outcomes(before, "billing.reserve_generation", "200", "credits") == 1
    assert outcomes(after, generation, "200", "credits") == 4
    assert outcomes(after, generation, "402") == 3
    assert sample(after, "billing_task_duration_seconds_count", task=generation) == 7
    # Sent through the app: each message carries its send time, and waited a little.
    waited = sample(after, "billing_task_queue_wait_seconds_count", task=generation)
    assert waited == 7
    assert 0 <= sample(after, "billing_task_queue_wait_seconds_sum", task=generation) < 60

    # Read from the database and the broker at scrape time.
    assert sample(before, "billing_holds_open") == 1
    assert sample(before, "billing_events_pending") == 0
    assert sample(before, "billing_audit_mismatches") == audited["mismatch_count"]
    assert sample(before, "billing_queue_length", queue=get_settings().queue) == 0
    last = sample(before, "billing_beat_last_success_timestamp_seconds", job="expire_holds")
    assert last is not None and last > 0
    assert sample(before, "billing_state_read_ok", source="database") == 1

    # Bounded labels: task names, codes, sources, exception classes, queues, jobs.
    for (_name, labels), _value in after.items():
        for label, value in labels:
            assert str(paying) not in value and "m0" not in value and value != "h", (label, value)
            if label == "task":
                assert value in TASKS
            if label == "code":
                assert re.fullmatch(r"\d{3}", value)

    # Every billing metric the alerts and the dashboard use, a worker serves.
    served = {re.sub(r"_(bucket|count|sum)$", "", name) for name, _labels in after}
    served |= {name.removesuffix("_total") for name in served}
    used = set(
        re.findall(r"\bbilling_[a-z_]+", (OPS / "prometheus" / "billing-rules.yml").read_text())
    )
    dashboard = json.loads((OPS / "grafana" / "billing-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\bbilling_[a-z_]+", target["expr"]))
    used = {re.sub(r"_(bucket|count|sum)$", "", name) for name in used}
    failures_only = {"billing_retries_total", "billing_task_failures_total"}  # test_retries
    assert used - served <= failures_only, used - served
