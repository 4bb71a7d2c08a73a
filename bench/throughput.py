"""End-to-end task throughput and latency through real workers: the floor and the charges.

A stream is sent as fast as the producer can (or at a fixed rate), and measured from the first
send to the last result. A task's latency is from its send to the moment its result was stored
(``date_done``, written by the worker), so the producer's polling does not count.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery.result import AsyncResult

from bench import bare
from cli import processes

QUEUE = "bench"


@dataclass
class StreamResult:
    tasks: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    def summary(self) -> dict[str, float]:
        return {
            "tasks_per_s": self.rate,
            "p50_ms": self.percentile(50),
            "p95_ms": self.percentile(95),
            "p99_ms": self.percentile(99),
            "seconds": self.seconds,
        }


def joined(*streams: StreamResult) -> StreamResult:
    """Streams run one after the other, as one: a job's steps when each waits for the last."""
    return StreamResult(
        sum(r.tasks for r in streams),
        sum(r.seconds for r in streams),
        [ms for r in streams for ms in r.latencies_ms],
    )


@contextmanager
def workers(
    app,
    env: dict[str, str],
    concurrency: int,
    log_dir,
    cwd=None,
    app_module: str = "bench.app",
    queue: str = QUEUE,
    loglevel: str = "WARNING",
) -> Iterator[None]:
    """One worker with the production configuration, on the bench queue; ``cwd``: a checkout
    whose code it runs instead of this one's; ``app_module="bench.bare"`` (``queue="bare"``):
    the plain Celery floor instead (``bench.bare``)."""
    hostname = f"bench-{uuid.uuid4().hex[:6]}@%h"
    cmd = processes.worker_command(
        queue=queue,
        concurrency=concurrency,
        hostname=hostname,
        loglevel=loglevel,
        app_module=app_module,
    )
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"bench-worker-{queue}.log"
        with processes.running(cmd, log, cwd=cwd) as proc:
            processes.wait_for_worker(app, proc, processes.node_name(hostname))
            yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def producer_gc_paused() -> Iterator[None]:
    """The producer's own garbage collection off for a stream. Its full collections took
    90-190 ms here as a stream's results piled up; one landing while paced sends were due held
    them back, and every task sent in the burst after it waited behind the others: that, not
    the worker or the database, was the p99 of 50-140 ms the charges showed under load."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@producer_gc_paused()
def run_stream(
    app,
    messages: list[tuple[str, dict[str, Any]]],
    rate: float | None = None,
    queue: str = QUEUE,
    headers: Callable[[], dict[str, Any]] | None = None,
) -> StreamResult:
    """Send every message (paced at ``rate`` per second if given) to ``queue`` and wait for
    all results; ``headers``: each message's extra headers, made as it is sent."""
    sent: list[tuple[float, AsyncResult]] = []
    started = time.time()
    for i, (name, kwargs) in enumerate(messages):
        if rate:
            delay = started + i / rate - time.time()
            if delay > 0:
                time.sleep(delay)
        extra = {"headers": headers()} if headers else {}
        sent.append((time.time(), app.send_task(name, kwargs=kwargs, queue=queue, **extra)))
    latencies = []
    last_done = started
    for sent_at, result in sent:
        answer = result.get(timeout=600)
        if not isinstance(answer, dict) or "code" not in answer:
            raise RuntimeError(f"unexpected answer {answer!r}")
        done = _date_done(result)
        last_done = max(last_done, done)
        latencies.append((done - sent_at) * 1000)
    return StreamResult(len(messages), last_done - started, latencies)


def _date_done(result: AsyncResult) -> float:
    done = result._get_task_meta()["date_done"]
    if isinstance(done, str):
        done = datetime.fromisoformat(done)
    return done.timestamp()


def median_of(results: list[StreamResult]) -> dict[str, Any]:
    """Medians over repetitions, with the min-max of each figure."""
    summaries = [r.summary() for r in results]
    out: dict[str, Any] = {}
    for key in summaries[0]:
        values = [s[key] for s in summaries]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def median_of_rates(results: list[StreamResult]) -> dict[str, float]:
    """The median rate over repetitions, with its min-max (streams without latencies)."""
    rates = [r.rate for r in results]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def bare_workers(
    concurrency: int, log_dir, env: dict[str, str] | None = None, queue: str = bare.QUEUE
) -> Any:
    """A worker of the plain Celery floor (``bench.bare``; with ``BENCH_BARE_PIECE`` in
    ``env``, the floor plus that piece) on ``queue``."""
    return workers(bare.app, env or {}, concurrency, log_dir, app_module="bench.bare", queue=queue)


def bare_stream(n: int, rate: float | None = None) -> StreamResult:
    return run_stream(bare.app, bare.noops(n), rate=rate, queue=bare.QUEUE)


def pair_ratios(side: list[StreamResult], base: list[StreamResult]) -> dict[str, Any]:
    """Rates of ``side`` over ``base``, round by round (each pair ran back to back), and
    their median: drift on the machine between rounds cancels out of each pair."""
    ratios = [s.rate / b.rate for s, b in zip(side, base, strict=True)]
    return {"median": statistics.median(ratios), "ratios": ratios}
