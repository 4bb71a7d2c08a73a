"""The base task: validation, one transaction, retry policy and the outcome log line."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import psycopg
from celery import Task
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from billing.core import results
from billing.core.settings import Settings, get_settings
from billing.core.validation import Args, InvalidRequest
from billing.jobs import runs
from billing.movements import batch, frame
from billing.movements.store import KeyRaced, Store
from billing.storage.engine import transaction
from billing.storage.factory import connect
from tasks.names import PRIVILEGED
from worker import events, metrics
from worker.db import get_engine, get_session_factory
from worker.logs import json_lines

logger = json_lines("billing.outcomes")

A = TypeVar("A", bound=Args)

# The periodic jobs' time limit: a sweep may run long, a movement never does.
SWEEP_TIME_LIMIT = get_settings().sweep_time_limit_seconds


class NoArgs(Args):
    """Periodic jobs take no arguments."""


# Infrastructure failures worth another try: the database went away, a connection broke, a
# lock or statement timeout, a serialization failure or deadlock rolled us back, or the pool
# had nothing to give.
RETRYABLE = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    psycopg.OperationalError,  # the PostgreSQL store talks to psycopg directly
    # The server ended a session left idle inside its transaction (a frozen worker).
    psycopg.errors.IdleInTransactionSessionTimeout,
    KeyRaced,
)


class BillingTask(Task):
    Request = "tasks.request:BillingRequest"
    autoretry_for = RETRYABLE
    retry_backoff = 1  # seconds, doubled per retry (Celery wants an int here)
    retry_backoff_max = 30
    retry_jitter = True
    max_retries = get_settings().task_max_retries
    # Business outcomes are results; only an exhausted retry or a bug ends in FAILURE.
    throws = ()
    # A batch task names the argument that holds its items: its log and counts are per item.
    batch_items: str | None = None
    # The result's text in events and Flower: its head (ok, code, source, amount) is what an
    # operator reads; the full result is in the backend. Celery builds it in the pool process
    # for every task and its cost grows with the length: 37 us at 100 characters against 97 us
    # at 256 for a charge with its state (bench.compare measures the task).
    resultrepr_maxsize = 100

    def execute(
        self,
        parser: type[A],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handler: Callable[[Store, A, Settings], results.Result],
    ) -> results.Result:
        """Validate, then run the handler on a store (``billing.movements.store``) on one
        pooled connection: keyed movements run the frame there, one transaction each."""
        return self._validated(parser, args, kwargs, self.on_store, handler)

    def execute_batch(
        self,
        parser: type[A],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handler: Callable[..., results.Result],
    ) -> results.Result:
        """A batch task: the handler (``billing.movements.batch``) answers every item, and
        starts none that could end past this run's time limit."""
        deadline = batch.deadline(time.monotonic(), time_limit(self))
        return self.execute(parser, args, kwargs, partial(handler, deadline=deadline))

    @staticmethod
    def on_store(
        handler: Callable[[Store, A, Settings], results.Result], parsed: A, settings: Settings
    ) -> results.Result:
        return frame.replaying_races(BillingTask.run_on_store, handler, parsed, settings)

    @staticmethod
    def run_on_store(
        handler: Callable[[Store, A, Settings], results.Result], parsed: A, settings: Settings
    ) -> results.Result:
        outcome = None
        try:
            with connect(get_engine()) as conn:
                outcome = handler(conn, parsed, settings)
                if conn.event_accounts:
                    # After the commit, on the same connection: the events the movement
                    # recorded reach the queue now, not at the relay sweep's next run.
                    events.publish_after_commit(conn, conn.event_accounts)
        except Exception as exc:
            if outcome is None:
                raise
            # The movement committed; its events wait in the outbox for the relay sweep.
            events.unpublished(conn.event_accounts, exc)
        return outcome

    def execute_read(
        self,
        parser: type[A],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handler: Callable[[Session, A, Settings], results.Result],
    ) -> results.Result:
        """Validate, then run a read that writes nothing (ledger pages, the audit) in an ORM
        session."""
        return self._validated(parser, args, kwargs, self.in_session, handler)

    @staticmethod
    def in_session(
        handler: Callable[[Session, A, Settings], results.Result], parsed: A, settings: Settings
    ) -> results.Result:
        with transaction(get_session_factory()) as session:
            return handler(session, parsed, settings)

    def execute_sweep(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handler: Callable[[Settings], dict[str, Any]],
        job: str,
    ) -> results.Result:
        """A periodic job (no arguments) that commits batch by batch, each its own short
        transaction; its success is recorded (``billing.jobs.runs``)."""
        return self._validated(NoArgs, args, kwargs, self.sweep, handler, job)

    @staticmethod
    def sweep(
        handler: Callable[[Settings], dict[str, Any]], job: str, _parsed: Args, settings: Settings
    ) -> results.Result:
        outcome = results.success(**handler(settings))
        runs.record(get_engine(), job, outcome)
        return outcome

    def _validated(
        self,
        parser: type[A],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run: Callable[..., results.Result],
        *run_with: Any,
    ) -> results.Result:
        """Parse the arguments (a 422 touches nothing), ``run(*run_with, parsed, settings)``,
        and log one line per outcome."""
        started = time.perf_counter()
        settings = get_settings()
        refused = self._refused_queue(settings, kwargs)
        try:
            parsed = parser.parse(args, kwargs)
        except InvalidRequest as exc:
            outcome = refused or exc.result()
        else:
            outcome = refused or run(*run_with, parsed, settings)
        self._log(outcome, kwargs, started)
        return outcome

    def privileged(self, kwargs: dict[str, Any]) -> bool:
        """Whether this message may run only from the admin queue."""
        return self.name in PRIVILEGED

    def _refused_queue(self, settings: Settings, kwargs: dict[str, Any]) -> results.Result | None:
        """A privileged task is run only from the admin queue: one taken from any other queue,
        or from a queue the worker cannot name, is refused before anything is read or written
        (and not remembered). The queue is the one the worker consumed the message from
        (``worker.routes`` writes it), never a field its producer wrote."""
        if not self.privileged(kwargs):
            return None
        request = self.request
        delivery = getattr(request, "delivery_info", None) or {}
        # Run in this process, from no message: a direct call, or Task.apply (whose
        # delivery_info Celery builds; a worker builds its own, without that key).
        if request.called_directly or delivery.get("is_eager") is True:
            return None
        queue = delivery.get("routing_key")
        if queue == settings.admin_queue:
            return None
        named = queue if isinstance(queue, str) else None
        return results.forbidden_queue(self.name, named, settings.admin_queue)

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        metrics.retry(self.name, exc)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        metrics.failure(self.name, exc)

    def _log(self, outcome: results.Result, kwargs: dict[str, Any], started: float) -> None:
        seconds = time.perf_counter() - started
        answers = outcome.get("results") if self.batch_items else None
        if isinstance(answers, list):
            # A batch: one line and one count per item, as its own message would have.
            items = kwargs.get(self.batch_items)
            for item, answer in zip(items or [], answers, strict=False):
                self._log_line(answer, item if isinstance(item, dict) else {}, None)
                metrics.counted(self.name, answer)
        else:
            self._log_line(outcome, kwargs, seconds)
            metrics.counted(self.name, outcome)
        metrics.timed(self.name, seconds, getattr(self.request, metrics.SENT_AT_HEADER, None))

    def _log_line(
        self, outcome: results.Result, kwargs: dict[str, Any], seconds: float | None
    ) -> None:
        # One line per outcome, never the meta contents: they may hold payment references.
        line = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "info",
            "event": "billing.outcome",
            "task": self.name,
            "task_id": getattr(self.request, "id", None),
            "user_id": _loggable(kwargs.get("user_id")),
            "idempotency_key": _loggable(kwargs.get("idempotency_key")),
            "source": outcome.get("source"),
            "amount": outcome.get("amount"),
            "code": outcome.get("code"),
            "error": outcome.get("error"),
            "replayed": outcome.get("replayed"),
            "reset": outcome.get("reset"),
            # A batch item's own time is not measured: the message's is in the metrics.
            "duration_ms": None if seconds is None else round(seconds * 1000, 2),
        }
        logger.info(json.dumps(line, default=str))


def _loggable(value: Any) -> Any:
    """An argument as it may appear in a log line: scalars as they are, long text cut short,
    anything else (a foreign producer's list or object) by its type only."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= 255 else value[:255] + "..."
    return f"<{type(value).__name__}>"


def time_limit(task: Task) -> float | None:
    """The shortest time limit of this run, in seconds: the task's own (``task_time_limit``),
    or a shorter hard or soft limit its message asks for. A message may shorten the run, never
    lengthen it, and a limit that is not a positive number is not one."""
    from_message = getattr(task.request, "timelimit", None)
    limits = [task.time_limit, task.soft_time_limit]
    if isinstance(from_message, list | tuple):
        limits += from_message
    positive = [
        float(limit)
        for limit in limits
        if isinstance(limit, int | float) and not isinstance(limit, bool) and limit > 0
    ]
    return min(positive, default=None)
