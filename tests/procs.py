"""Real ``celery worker`` subprocesses, for tests that need several processes or must kill one."""

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

from worker import app

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def celery_worker_process(
    queue: str, concurrency: int = 4, pool: str = "prefork", env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    hostname = f"test-{uuid.uuid4().hex[:8]}@%h"
    log = ROOT / ".billing-data" / f"{hostname.split('@')[0]}.log"
    log.parent.mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "worker",
        "-Q",
        queue,
        "-c",
        str(concurrency),
        "-P",
        pool,
        "-n",
        hostname,
        "--without-mingle",
        "--without-gossip",
        "-l",
        "WARNING",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_ready(proc, hostname.replace("%h", os.uname().nodename), log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_until_ready(
    proc: subprocess.Popen, hostname: str, log: Path, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if app.control.ping(destination=[hostname], timeout=0.5):
            return
    raise RuntimeError(f"worker {hostname} did not answer a ping in {timeout}s")
