"""Prometheus metrics of a billing worker, served on ``BILLING_METRICS_PORT``.

Every worker of the app, however it was started (``billing worker`` or plain
``celery -A worker worker``), serves ``/metrics`` from its main process when the port is set.
The pool processes count into prometheus-client's multiprocess files (a directory the main
process makes before it forks them), and the main process adds them up on every scrape, so no
child's counts are lost when it is recycled or killed.

What the tasks count (one place, ``tasks.base.BillingTask``; a batch counts each item's
outcome and times the message):
    billing_outcomes_total{task, code, source}, billing_task_duration_seconds{task},
    billing_task_queue_wait_seconds{task}, billing_retries_total{task, reason},
    billing_task_failures_total{task, reason}

What is read at scrape time from the database and the broker (the same on every worker; take
the max across them): billing_queue_length{queue}, billing_holds_open,
billing_events_pending, billing_events_oldest_pending_age_seconds,
billing_beat_last_success_timestamp_seconds{job}, billing_audit_mismatches, and
billing_state_read_ok{source} (0 when that read failed on this scrape).

Labels are bounded: task names, result codes, sources, exception class names, queue and job
names; never a user, key or ``meta``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery.signals import before_task_publish, worker_init, worker_shutdown

from billing.core.settings import get_settings
from billing_client.names import SENT_AT_HEADER  # set by billing_client and by this app

logger = logging.getLogger("billing.metrics")

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class _TaskMetrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.outcomes = Counter(
            "billing_outcomes_total",
            "Outcomes of billing tasks, by task, result code and the source drawn from",
            ["task", "code", "source"],
        )
        self.duration = Histogram(
            "billing_task_duration_seconds",
            "Run time of one billing task, validation to result",
            ["task"],
            buckets=DURATION_BUCKETS,
        )
        self.wait = Histogram(
            "billing_task_queue_wait_seconds",
            "Time from a message's send to its task's start (messages that carry the"
            f" {SENT_AT_HEADER} header: sent by billing_client or the billing app)",
            ["task"],
            buckets=WAIT_BUCKETS,
        )
        self.retries = Counter(
            "billing_retries_total",
            "Retries of billing tasks after an infrastructure failure, by exception class",
            ["task", "reason"],
        )
        self.failures = Counter(
            "billing_task_failures_total",
            "Billing tasks that failed for good (retries exhausted, or a bug)",
            ["task", "reason"],
        )


_task_metrics: _TaskMetrics | None = None


def _metrics() -> _TaskMetrics | None:
    """The task metrics of this process, or None when metrics are off."""
    global _task_metrics
    if get_settings().metrics_port is None:
        return None
    if _task_metrics is None:
        _task_metrics = _TaskMetrics()
    return _task_metrics


def outcome(task: str, result: dict[str, Any], seconds: float, sent_at: Any) -> None:
    """One message's outcome: counted, timed, and its wait in the queue."""
    counted(task, result)
    timed(task, seconds, sent_at)


def counted(task: str, result: dict[str, Any]) -> None:
    """One outcome counted (a batch counts each item's)."""
    metrics = _metrics()
    if metrics is None:
        return
    code = str(result.get("code"))
    source = result.get("source")
    metrics.outcomes.labels(task, code, source if isinstance(source, str) else "").inc()


def timed(task: str, seconds: float, sent_at: Any) -> None:
    """One message's run time and wait in the queue."""
    metrics = _metrics()
    if metrics is None:
        return
    metrics.duration.labels(task).observe(seconds)
    if isinstance(sent_at, int | float) and not isinstance(sent_at, bool):
        # Clocks of producer and worker hosts differ a little: never a negative wait.
        metrics.wait.labels(task).observe(max(time.time() - seconds - sent_at, 0.0))


def retry(task: str, exc: BaseException) -> None:
    metrics = _metrics()
    if metrics is not None:
        metrics.retries.labels(task, type(exc).__name__).inc()


def failure(task: str, exc: BaseException) -> None:
    metrics = _metrics()
    if metrics is not None:
        metrics.failures.labels(task, type(exc).__name__).inc()


@before_task_publish.connect
def _stamp_sent_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None and str(headers.get("task", "")).startswith("billing."):
        headers.setdefault(SENT_AT_HEADER, time.time())


class StateCollector:
    """Gauges read from the database and the broker on each scrape."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._engine: Any = None

    def _database(self) -> Any:
        if self._engine is None:
            from billing.storage.engine import create_db_engine

            settings = get_settings()
            self._engine = create_db_engine(
                settings.effective_database_url(),
                pool_size=1,
                session_options=settings.session_options(),
            )
        return self._engine

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from billing.reads import status

        ok = GaugeMetricFamily(
            "billing_state_read_ok",
            "1 when this scrape read the source (database, broker), else 0",
            labels=["source"],
        )
        try:
            state = status.database_state(self._database())
        except Exception as exc:  # a scrape must answer even with the database away
            logger.warning("metrics: cannot read the database: %s", exc)
            ok.add_metric(["database"], 0)
        else:
            ok.add_metric(["database"], 1)
            yield GaugeMetricFamily(
                "billing_holds_open",
                "Holds not yet captured, released or expired",
                value=state["holds_open"],
            )
            yield GaugeMetricFamily(
                "billing_events_pending",
                "Balance events recorded and not yet published",
                value=state["events_pending"],
            )
            yield GaugeMetricFamily(
                "billing_events_oldest_pending_age_seconds",
                "Age of the oldest unpublished balance event (0: none)",
                value=state["events_oldest_pending_age_seconds"],
            )
            yield CounterMetricFamily(
                "billing_credits_expired",
                "Credits that expired with their grant (or came back to an expired grant)",
                value=state["credits_expired"],
            )
            yield CounterMetricFamily(
                "billing_credits_voided",
                "Credits removed by voiding their grant",
                value=state["credits_voided"],
            )
            last = GaugeMetricFamily(
                "billing_beat_last_success_timestamp_seconds",
                "When each periodic job last succeeded (Unix time)",
                labels=["job"],
            )
            for job, run in state["jobs"].items():
                last.add_metric([job], run["succeeded_at"].timestamp())
            yield last
            if state["audit_mismatches"] is not None:
                yield GaugeMetricFamily(
                    "billing_audit_mismatches",
                    "Mismatches between balances and the ledger found by the last full audit",
                    value=state["audit_mismatches"],
                )
        try:
            from worker import inspect

            lengths = inspect.queue_lengths(self.app)
        except Exception as exc:
            logger.warning("metrics: cannot read the broker: %s", exc)
            ok.add_metric(["broker"], 0)
        else:
            ok.add_metric(["broker"], 1)
            queues = GaugeMetricFamily(
                "billing_queue_length", "Messages waiting on each billing queue", labels=["queue"]
            )
            for queue, length in lengths.items():
                queues.add_metric([queue], length)
            yield queues
        yield ok


class _Server:
    directory: Path | None = None
    owned = False
    http: Any = None


@worker_init.connect
def _serve(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, before it forks its pool: the multiprocess directory,
    then the HTTP server."""
    settings = get_settings()
    if settings.metrics_port is None:
        return
    if settings.metrics_dir is not None:
        directory, owned = Path(settings.metrics_dir), False
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):  # counts of a worker that ran here before
            stale.unlink()
    else:
        directory, owned = Path(tempfile.mkdtemp(prefix="billing-metrics-")), True
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)

    from prometheus_client import CollectorRegistry, multiprocess, start_http_server, values

    # Values made from now on (in this process and its children) go to the directory.
    values.ValueClass = values.get_value_class()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    registry.register(StateCollector(sender.app if sender is not None else None))
    server, _thread = start_http_server(
        settings.metrics_port, addr=settings.metrics_address, registry=registry
    )
    _Server.directory, _Server.owned, _Server.http = directory, owned, server
    logger.info("metrics on http://%s:%s/metrics", settings.metrics_address, settings.metrics_port)


@worker_shutdown.connect
def _stop(**_: Any) -> None:
    if _Server.http is not None:
        _Server.http.shutdown()
        _Server.http = None
    if _Server.owned and _Server.directory is not None:
        shutil.rmtree(_Server.directory, ignore_errors=True)
        _Server.directory = None
