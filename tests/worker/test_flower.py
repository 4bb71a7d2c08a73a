"""Flower end to end: a real worker and a real Flower process, read back through its API."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import warnings
from pathlib import Path

import pytest
from celery.utils.saferepr import saferepr

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


def _send_task_sent(app, task_id: str, kwargs: dict, queue: str, retries: int = 0) -> None:
    """The ``task-sent`` event a producer without our masking sends (Celery's own fields, its
    repr of the arguments), at the moment the test chooses."""
    with app.events.default_dispatcher() as dispatcher:
        dispatcher.send(
            "task-sent",
            uuid=task_id, root_id=task_id, parent_id=None, name="billing.charge_generation",
            args="()", kwargs=saferepr(kwargs), retries=retries, eta=None, expires=None,
            queue=queue, exchange="", routing_key=queue,
        )  # fmt: skip


def _json(url: str) -> dict:
    status, body = _get(url, CREDENTIALS)
    return json.loads(body) if status == 200 else {}


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
    pages: dict[str, bytes] = {}
    with (
        broker.producer(queue) as app,
        celery_worker_process(queue, 2, env=broker.worker_env(queue), control_app=app),
        processes.running(cmd, log, env) as flower,
    ):
        # A producer of its own, with no masking of meta: it sends task-sent events carrying
        # its own repr of the arguments (celeryconfig turns them on).
        assert app.conf.task_send_sent_event
        _wait_for(lambda: _get(f"{base}/healthcheck")[0] == 200)
        workers = f"{base}/api/workers?refresh=1"

        def our_worker() -> str | None:  # not another test's worker on the same broker
            for name, info in _json(workers).items():
                if any(q.get("name") == queue for q in info.get("active_queues") or ()):
                    return name
            return None

        node = _wait_for(our_worker)
        # Flower has applied one of its events (a heartbeat): it receives events by now, and
        # the ones the test sends next reach it.
        _wait_for(lambda: _json(f"{base}/api/workers?status=1").get(node))
        ids = [str(uuid.uuid4()) for _ in range(3)]
        kwargs = {
            i: {"user_id": user, "idempotency_key": f"fl-{n}", "meta": {"ref": SECRET}}
            for n, i in enumerate(ids)
        }

        # The producer's task-sent first, before any worker saw the task.
        for i in ids:
            _send_task_sent(app, i, kwargs[i], queue)
        _wait_for(lambda: all(_json(f"{base}/api/task/info/{i}") for i in ids))
        pending = {i: _json(f"{base}/api/task/info/{i}") for i in ids}
        pages["sent first"] = json.dumps(pending).encode()

        sent = [
            app.send_task("billing.charge_generation", kwargs=kwargs[i], queue=queue, task_id=i)
            for i in ids
        ]
        # The relay's sweep is a task like the others: operators see it in Flower.
        relay = app.send_task("billing.publish_events", queue=queue)
        for result in [*sent, relay]:
            result.get(timeout=RESULT_TIMEOUT)
        all_ids = {r.id for r in [*sent, relay]}

        def tasks_seen(retries: int | None = None):
            tasks = _json(f"{base}/api/tasks")
            done = {
                i: t
                for i, t in tasks.items()
                if i in all_ids
                and t["state"] == "SUCCESS"
                and (retries is None or i not in ids or t["retries"] == retries)
            }
            return done if len(done) == len(all_ids) else None

        _wait_for(tasks_seen)
        # The producer's task-sent again, after the worker's events: a sent event that reached
        # Flower late (its retries mark it, to see when Flower has applied it).
        for i in ids:
            _send_task_sent(app, i, kwargs[i], queue, retries=7)
        seen = _wait_for(lambda: tasks_seen(retries=7))

        # A task the worker holds until its countdown (on Redis; RabbitMQ holds it in the
        # broker): Flower's worker page lists it from the worker's unmasked answer.
        scheduled = app.send_task(
            "billing.charge_generation",
            kwargs={"user_id": user, "idempotency_key": "fl-later", "meta": {"ref": SECRET}},
            queue=queue,
            countdown=3,
        )
        worker_api = f"{base}/api/workers?refresh=1&workername={node}"
        if not broker.amqp:
            _wait_for(
                lambda: (
                    scheduled.id in json.dumps(_json(worker_api).get(node, {}).get("scheduled"))
                ),
                timeout=2.5,
            )
        pages["worker api"] = _get(worker_api, CREDENTIALS)[1]
        pages["worker page"] = _get(f"{base}/worker/{node}", CREDENTIALS)[1]
        scheduled.get(timeout=RESULT_TIMEOUT)

        pages["task list"] = _get(f"{base}/api/tasks", CREDENTIALS)[1]
        pages["search"] = _get(f"{base}/api/tasks?search={SECRET}", CREDENTIALS)[1]
        pages["tasks table"] = _get(
            f"{base}/tasks/datatable?draw=1&start=0&length=100&order[0][column]=0"
            "&order[0][dir]=asc&columns[0][data]=name",
            CREDENTIALS,
        )[1]
        for i in ids:
            pages[f"info {i}"] = _get(f"{base}/api/task/info/{i}", CREDENTIALS)[1]
            pages[f"page {i}"] = _get(f"{base}/task/{i}", CREDENTIALS)[1]
        unauthenticated = _get(f"{base}/api/tasks")
        wrong_password = _get(f"{base}/api/tasks", "ops:guess")
        apply_attempt = _post(f"{base}/api/task/async-apply/billing.get_state", CREDENTIALS)
        revoke_attempt = _post(f"{base}/api/task/revoke/{next(iter(ids))}", CREDENTIALS)
        metrics = _get(f"{base}/metrics")
        _stop_reporting_a_hang(flower, log)

    for i, task in pending.items():
        assert task["state"] == "PENDING", i
        assert "'meta': '<hidden>'" in task["kwargs"] and SECRET not in task["kwargs"]
    relay_seen = seen.pop(relay.id)
    assert relay_seen["name"] == "billing.publish_events"
    assert "'published': 0" in relay_seen["result"]
    for task in seen.values():
        assert task["name"] == "billing.charge_generation"
        assert task["worker"] and task["runtime"] is not None
        # Started, from the worker's task-started event: task_track_started is off (it only
        # writes a STARTED result to the backend), and operators lose nothing by it.
        assert task["received"] <= task["started"] <= task["succeeded"]
        assert "'meta': '<hidden>'" in task["kwargs"] and SECRET not in task["kwargs"]
        assert "'ok': True" in task["result"]
    for what, body in pages.items():
        assert body and SECRET.encode() not in body, what
    assert json.loads(pages["search"]) == {}
    if not broker.amqp:  # the worker held it: its page listed it, meta hidden
        assert scheduled.id.encode() in pages["worker api"]
        assert b"'meta': '<hidden>'" in pages["worker api"]
    assert unauthenticated[0] == 401 and wrong_password[0] == 401
    assert apply_attempt == 403 and revoke_attempt == 403
    assert metrics[0] == 200 and b"flower_events_total" in metrics[1]
    assert SECRET not in Path(log).read_text()
    # What the closing note quotes: one task as Flower's API returned it.
    print(json.dumps(next(iter(seen.values())), indent=1, default=str))


def _events(task_id: str, producer_kwargs: str, worker_kwargs: str) -> dict[str, dict]:
    base = {"uuid": task_id, "name": "billing.charge_generation", "clock": 1, "pid": 1}
    worker = {**base, "hostname": "billing-1@host", "local_received": time.time()}
    return {
        "sent": {
            **base, "type": "task-sent", "hostname": "producer@host", "args": "()",
            "kwargs": producer_kwargs, "local_received": time.time(),
        },
        "received": {**worker, "type": "task-received", "args": "()", "kwargs": worker_kwargs},
        "started": {**worker, "type": "task-started"},
        "succeeded": {
            **worker, "type": "task-succeeded", "result": "{'ok': True, 'code': 200}",
            "runtime": 0.01,
        },
    }  # fmt: skip


@pytest.mark.parametrize(
    "order",
    [
        ("sent", "received", "started", "succeeded"),
        ("received", "started", "sent", "succeeded"),
        ("received", "started", "succeeded", "sent"),
    ],
)
def test_flowers_state_never_keeps_meta_whatever_the_order_of_events(order):
    """Flower's own state, as ``billing flower`` runs it: the producer's task-sent carries its
    unmasked repr, and a task-sent applied after the worker's events used to replace the
    worker's masked arguments with it."""
    from flower.events import EventsState

    from cli.flower import install

    install()
    state = EventsState(max_tasks_in_memory=100)
    unmasked = repr({"user_id": 1, "idempotency_key": "k", "meta": {"ref": SECRET}})
    masked = repr({"user_id": 1, "idempotency_key": "k", "meta": "<hidden>"})
    cut_short = unmasked[:60] + "..."  # a repr cut inside meta, as saferepr cuts it
    for i, producer_kwargs in enumerate([unmasked, cut_short]):
        task_id = f"task-{i}"
        events = _events(task_id, producer_kwargs, masked)
        for step, kind in enumerate(order):
            state.event({**events[kind], "timestamp": time.time() + step})
        task = state.tasks[task_id]
        assert task.state == "SUCCESS"
        assert SECRET not in task.kwargs and "'ref'" not in task.kwargs
        assert task.kwargs in (masked, "<hidden: arguments not shown>")
        assert SECRET not in json.dumps(task.as_dict(), default=str)


@pytest.mark.parametrize(("setting", "tracked"), [(None, False), ("true", True)])
def test_a_started_result_is_stored_only_when_asked(setting, tracked):
    """task_track_started costs a backend write per task and shows Flower nothing its events do
    not (above): off unless BILLING_TRACK_STARTED asks for it."""
    env = {k: v for k, v in os.environ.items() if k != "BILLING_TRACK_STARTED"}
    if setting is not None:
        env["BILLING_TRACK_STARTED"] = setting
    probe = "from worker import app; print(app.conf.task_track_started)"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == str(tracked)
