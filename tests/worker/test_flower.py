"""Flower end to end: a real worker and a real Flower process, read back through its API."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from cli import processes
from tests.conftest import RESULT_TIMEOUT
from tests.procs import LOG_DIR, celery_worker_process

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


def _stop_reporting_a_hang(flower: subprocess.Popen, log: Path) -> None:
    """SIGTERM, as an operator's supervisor stops Flower. Once in a CI run Flower 2.2 took more
    than 30 s to exit after it; that is Flower's shutdown, not what this test checks, so a slow
    exit leaves every thread's stack in the log (faulthandler, on SIGABRT) and a warning, and
    ``processes.running`` kills what is left."""
    flower.terminate()
    try:
        flower.wait(timeout=20)
    except subprocess.TimeoutExpired:
        flower.send_signal(signal.SIGABRT)
        time.sleep(1)
        warnings.warn(f"Flower did not exit 20 s after SIGTERM; thread dump in {log}", stacklevel=2)


def test_flower_shows_billing_tasks_with_auth_and_read_only(accounts, broker):
    user = accounts.credits_only()
    queue = f"{QUEUE}-{broker.name}"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = LOG_DIR / "flower.log"
    LOG_DIR.mkdir(parents=True, exist_ok=True)

    env = {
        "BILLING_FLOWER_BASIC_AUTH": CREDENTIALS,
        "PYTHONFAULTHANDLER": "1",
        "BILLING_BROKER_URL": broker.url,
    }
    cmd = [sys.executable, "-m", "cli.main", "flower", "--port", str(port)]
    log.unlink(missing_ok=True)
    with (
        broker.producer(queue) as app,
        celery_worker_process(queue, 2, env=broker.worker_env(queue), control_app=app),
        processes.running(cmd, log, env) as flower,
    ):
        _wait_for(lambda: _get(f"{base}/healthcheck")[0] == 200)
        workers = f"{base}/api/workers?refresh=1"
        _wait_for(lambda: json.loads(_get(workers, CREDENTIALS)[1] or b"{}"))
        sent = [
            app.send_task(
                "billing.charge_generation",
                kwargs={"user_id": user, "idempotency_key": f"fl-{i}", "meta": {"ref": SECRET}},
                queue=queue,
            )
            for i in range(3)
        ]
        # The relay's sweep is a task like the others: operators see it in Flower.
        relay = app.send_task("billing.publish_events", queue=queue)
        for result in [*sent, relay]:
            result.get(timeout=RESULT_TIMEOUT)
        ids = {r.id for r in [*sent, relay]}

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
        _stop_reporting_a_hang(flower, log)

    relay_seen = seen.pop(relay.id)
    assert relay_seen["name"] == "billing.publish_events"
    assert "'published': 0" in relay_seen["result"]
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
