"""Flower end to end: a real worker and a real Flower process, read back through its API."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import RESULT_TIMEOUT
from tests.procs import LOG_DIR, celery_worker_process
from worker import app

QUEUE = "billing-flower"
CREDENTIALS = "ops:fl0wer-pass"
SECRET = "payment_ref_SECRET_777"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError:  # not listening yet
        return 0, b""


def _post(url: str, auth: str) -> int:
    request = urllib.request.Request(url, data=b"{}", method="POST")
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait_for(predicate, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


def test_flower_shows_billing_tasks_with_auth_and_read_only(accounts):
    user = accounts.credits_only()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = LOG_DIR / "flower.log"
    LOG_DIR.mkdir(parents=True, exist_ok=True)

    with celery_worker_process(QUEUE, concurrency=2), open(log, "wb") as out:
        flower = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "flower", "--port", str(port)],
            env={**os.environ, "BILLING_FLOWER_BASIC_AUTH": CREDENTIALS},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for(lambda: _get(f"{base}/healthcheck")[0] == 200)
            _wait_for(
                lambda: (
                    QUEUE.split("-")[0]
                    and json.loads(_get(f"{base}/api/workers?refresh=1", CREDENTIALS)[1] or b"{}")
                )
            )
            sent = [
                app.send_task(
                    "billing.charge_generation",
                    kwargs={"user_id": user, "idempotency_key": f"fl-{i}", "meta": {"ref": SECRET}},
                    queue=QUEUE,
                )
                for i in range(3)
            ]
            for result in sent:
                result.get(timeout=RESULT_TIMEOUT)
            ids = {r.id for r in sent}

            def tasks_seen():
                status, body = _get(f"{base}/api/tasks", CREDENTIALS)
                tasks = json.loads(body) if status == 200 else {}
                done = {i: t for i, t in tasks.items() if i in ids and t["state"] == "SUCCESS"}
                return done if len(done) == len(ids) else None

            seen = _wait_for(tasks_seen)
            unauthenticated = _get(f"{base}/api/tasks")
            wrong_password = _get(f"{base}/api/tasks", "ops:guess")
            apply_attempt = _post(f"{base}/api/task/async-apply/billing.get_state", CREDENTIALS)
            revoke_attempt = _post(f"{base}/api/task/revoke/{next(iter(ids))}", CREDENTIALS)
            metrics = _get(f"{base}/metrics")
        finally:
            flower.terminate()
            flower.wait(timeout=30)

    for task in seen.values():
        assert task["name"] == "billing.charge_generation"
        assert task["worker"] and task["runtime"] is not None
        assert "'meta': '<hidden>'" in task["kwargs"] and SECRET not in task["kwargs"]
        assert "'ok': True" in task["result"]
    assert unauthenticated[0] == 401 and wrong_password[0] == 401
    assert apply_attempt == 403 and revoke_attempt == 403
    assert metrics[0] == 200 and b"flower_events_total" in metrics[1]
    assert SECRET not in Path(log).read_text()
    # What the closing note quotes: one task as Flower's API returned it.
    print(json.dumps(next(iter(seen.values())), indent=1, default=str))
