"""Real ``celery worker`` subprocesses, for tests that need several processes or must kill one."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cli import processes
from worker import app

LOG_DIR = Path(__file__).resolve().parent.parent / ".billing-data" / "test-logs"


@contextmanager
def celery_worker_process(
    queue: str,
    concurrency: int = 4,
    pool: str = "prefork",
    env: dict[str, str] | None = None,
    loglevel: str = "WARNING",
    control_app=None,
    supervised: bool = False,
    include: str | None = None,
) -> Iterator[subprocess.Popen]:
    """A worker on its own queue; the process carries ``log_path``, its combined output.
    ``supervised`` runs it as `billing worker` does, restarted if it dies on its own;
    ``include`` imports one more module of tasks."""
    hostname = f"test-{uuid.uuid4().hex[:8]}@%h"
    # A test's worker on its own queue takes the privileged tasks sent there too.
    env = {"BILLING_ADMIN_QUEUE": queue, **(env or {})}
    cmd = processes.worker_command(queue, concurrency, pool, hostname, loglevel=loglevel)
    if include:
        cmd += ["-I", include]
    if supervised:
        cmd = [
            sys.executable, "-m", "cli.main", "worker", "--queue", queue,
            "--concurrency", str(concurrency), "--pool", pool, "--hostname", hostname,
            "--loglevel", loglevel,
        ]  # fmt: skip
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{hostname.split('@')[0]}.log"
    with processes.running(cmd, log, env) as proc:
        proc.log_path = log  # type: ignore[attr-defined]
        try:
            processes.wait_for_worker(control_app or app, proc, processes.node_name(hostname))
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{log.read_text()[-3000:]}") from None
        yield proc


def consumer_command(hostname: str) -> list[str]:
    """The product's events consumer (``tests.consumer``) as a real ``celery worker``."""
    return [
        sys.executable, "-m", "celery", "-A", "tests.consumer", "worker", "-P", "solo",
        "-c", "1", "-n", hostname, "--without-gossip", "--without-mingle",
        "--without-heartbeat", "--loglevel", "WARNING",
    ]  # fmt: skip


def children(pid: int) -> list[int]:
    """The pool processes of a worker (its child processes)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting until {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A worker's /metrics as {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))
