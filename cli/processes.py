"""Starting and stopping real Celery worker and beat processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from billing.core.settings import get_settings
from billing.storage.engine import mask_url


def worker_command(
    queue: str | None = None,
    concurrency: int | None = None,
    pool: str = "prefork",
    hostname: str | None = None,
    loglevel: str = "INFO",
    app_module: str = "worker",
) -> list[str]:
    """``queue``: a comma-separated list; default, the public and the admin queue."""
    settings = get_settings()
    return [
        sys.executable, "-m", "celery", "-A", app_module, "worker",
        "-Q", queue or f"{settings.queue},{settings.admin_queue}",
        "-P", pool,
        "-c", str(concurrency or os.cpu_count() or 2),
        "-n", hostname or f"billing-{uuid.uuid4().hex[:6]}@%h",
        # Billing workers share nothing with each other: mingle and gossip only add
        # start-up time and broker traffic.
        "--without-mingle", "--without-gossip",
        "-l", loglevel,
    ]  # fmt: skip


def supervise(cmd: list[str], max_backoff: float = 30.0) -> int:
    """Run the worker, and start it again if it dies on its own.

    A worker can die of things it cannot recover from by itself: the OOM killer, or kombu's
    Redis transport losing its channel while the broker restarts ("Unrecoverable error"). Its
    unacknowledged messages are safe in Redis and come back after the visibility timeout, so
    starting a new worker is all it takes. SIGTERM and SIGINT are passed on, and end the loop.
    """
    stopping = False
    proc: subprocess.Popen | None = None

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    backoff = 1.0
    while True:
        started = time.monotonic()
        proc = subprocess.Popen(cmd)
        code = proc.wait()
        if stopping or code == 0:
            return code
        if time.monotonic() - started > 60:
            backoff = 1.0
        print(
            f"billing: the worker exited with status {code}; starting it again in {backoff:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)


def beat_command(loglevel: str = "INFO") -> list[str]:
    schedule = get_settings().data_dir.resolve() / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable, "-m", "celery", "-A", "worker", "beat",
        "--schedule", str(schedule), "-l", loglevel,
    ]  # fmt: skip


def node_name(hostname_template: str) -> str:
    return hostname_template.replace("%h", os.uname().nodename)


@contextmanager
def running(
    cmd: list[str],
    log: IO[bytes] | Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen]:
    """Run a Celery process for the duration of the block; warm shutdown on the way out.
    ``cwd``: where it imports the app from (the bench runs another checkout's code)."""
    out = open(log, "ab") if isinstance(log, Path) else log  # noqa: SIM115
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop(proc)
        if isinstance(log, Path):
            out.close()


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class BrokerUnreachable(Exception):
    pass


def check_broker(app) -> None:
    """Fail fast, with the password masked, when the broker does not answer."""
    url = app.conf.broker_url
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=5)
    except Exception as exc:  # kombu raises the transport's own error types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BrokerUnreachable(
            f"cannot reach the broker at {mask_url(url)}: {reason.replace(url, mask_url(url))}"
        ) from None


def wait_for_worker(
    app, proc: subprocess.Popen, node: str, queue: str | None = None, timeout: float = 60
) -> None:
    """Block until the worker serves tasks.

    Redis carries Celery's broadcast ping; the embedded SQL broker has no fanout, so there a
    read-only probe task on the worker's queue shows it is consuming.
    """
    deadline = time.monotonic() + timeout
    broadcast = app.conf.broker_url.startswith(("redis", "amqp"))
    probe = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with status {proc.returncode}")
        if broadcast:
            if app.control.ping(destination=[node], timeout=0.5):
                return
            continue
        probe = probe or app.send_task(
            "billing.get_state", kwargs={"user_id": 1}, queue=queue or get_settings().queue
        )
        if probe.ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"the worker {node} did not answer within {timeout:.0f}s")
