"""The base task: validation, one transaction, retry policy and the outcome log line."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from billing import results
from billing.db import transaction
from billing.dml import KeyRaced
from billing.idempotency import Refused
from billing.settings import Settings, get_settings
from billing.validation import InvalidRequest, _Args
from worker.db import get_session_factory

logger = logging.getLogger("billing.tasks")

A = TypeVar("A", bound=_Args)

# Infrastructure failures worth another try: the database went away, a connection broke, a
# serialization failure or deadlock rolled us back, or the pool had nothing to give.
RETRYABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, KeyRaced)


class BillingTask(Task):
    autoretry_for = RETRYABLE
    retry_backoff = 1  # seconds, doubled per retry (Celery wants an int here)
    retry_backoff_max = 30
    retry_jitter = True
    max_retries = get_settings().task_max_retries
    # Business outcomes are results; only an exhausted retry or a bug ends in FAILURE.
    throws = ()

    def execute(
        self,
        parser: type[A],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handler: Callable[[Session, A, Settings], results.Result],
    ) -> results.Result:
        started = time.perf_counter()
        settings = get_settings()
        try:
            parsed = parser.parse(args, kwargs)
        except InvalidRequest as exc:
            outcome = exc.result()
            self._log(outcome, kwargs, started)
            return outcome
        try:
            outcome = self._in_transaction(lambda session: handler(session, parsed, settings))
        except KeyRaced:
            # A concurrent transaction committed the same key first: replay its outcome.
            outcome = self._in_transaction(lambda session: handler(session, parsed, settings))
        self._log(outcome, kwargs, started)
        return outcome

    def execute_batched(
        self,
        parser: type[A],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handler: Callable[[sessionmaker[Session], A, Settings], dict[str, Any]],
    ) -> results.Result:
        """For set-based jobs that commit batch by batch: the handler gets the session
        factory and opens one short transaction per batch."""
        started = time.perf_counter()
        try:
            parsed = parser.parse(args, kwargs)
        except InvalidRequest as exc:
            outcome = exc.result()
        else:
            outcome = results.success(**handler(get_session_factory(), parsed, get_settings()))
        self._log(outcome, kwargs, started)
        return outcome

    @staticmethod
    def _in_transaction(fn: Callable[[Session], results.Result]) -> results.Result:
        try:
            with transaction(get_session_factory()) as session:
                return fn(session)
        except Refused as refused:  # rolled back: nothing written, the key stays free
            return refused.result

    def _log(self, outcome: results.Result, kwargs: dict[str, Any], started: float) -> None:
        # One line per outcome, never the meta contents: they may hold payment references.
        line = {
            "event": "billing.outcome",
            "task": self.name,
            "task_id": getattr(self.request, "id", None),
            "user_id": kwargs.get("user_id"),
            "idempotency_key": kwargs.get("idempotency_key"),
            "source": outcome.get("source"),
            "amount": outcome.get("amount"),
            "code": outcome.get("code"),
            "error": outcome.get("error"),
            "replayed": outcome.get("replayed"),
            "reset": outcome.get("reset"),
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        }
        logger.info(json.dumps(line, default=str))
