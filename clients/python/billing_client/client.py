from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.utils.saferepr import saferepr
from kombu.exceptions import OperationalError as KombuOperationalError

from billing_client import names, rabbitmq
from billing_client.masking import masked
from billing_client.names import PRIVILEGED, SENT_AT_HEADER


class OutcomeUnknown(Exception):
    """The outcome is unknown: the movement may or may not have been committed (a commit can
    land and only its answer be lost). Send the same request with the same idempotency key
    again: it answers the first outcome if there was one, and runs it if there was not.
    Never send it under a new key: if the first one was committed, that charges twice."""


class BillingTimeout(OutcomeUnknown):
    """No answer in time. Outcome unknown: send the same request with the same key again."""


class NotConfirmed(OutcomeUnknown):
    """The broker did not take the message: it refused it (RabbitMQ's negative confirm), or it
    could not be reached or went away before it confirmed. It may or may not be queued: send
    the same request with the same key again."""


class BillingFailed(OutcomeUnknown):
    """The task ended in FAILURE (an infrastructure failure outlasted its retries), or its
    answer was not a result. Outcome unknown: its last attempt may have committed before it
    failed. Send the same request with the same key again."""


@dataclass(frozen=True)
class BillingResult:
    """A billing task's answer. ``ok`` and ``code`` are always there; the other fields are
    there when the task answers them (``raw`` has everything)."""

    ok: bool
    code: int
    error: str | None = None
    message: str | None = None
    field: str | None = None
    source: str | None = None
    amount: int | None = None
    ledger_id: int | None = None
    idempotency_key: str | None = None
    replayed: bool = False
    state: dict[str, Any] | None = None
    # A reserve's, capture's or release's hold: {"status": ..., "held": n, "expires_at": ...}.
    hold: dict[str, Any] | None = None
    # A batch item that was not done (503 ``not_attempted`` or ``lock_timeout``): nothing was
    # written for it; send it again, under the same key.
    retry: bool = False
    # A grant's or void's grant: {key, amount, remaining, expires_at, priority, category,
    # status}.
    grant: dict[str, Any] | None = None
    # What a credits charge or reserve drew from each grant: [{grant (None: the general
    # balance), amount}].
    credits_drawn: list[dict[str, Any]] | None = None
    # What a release, refund or capture gave back to grants that had closed: written off.
    expired: int | None = None
    # open_account: whether this call opened the account (False: it was open already).
    opened: bool | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, answer: dict[str, Any]) -> BillingResult:
        return cls(
            ok=bool(answer.get("ok")),
            code=int(answer.get("code", 0)),
            error=answer.get("error"),
            message=answer.get("message"),
            field=answer.get("field"),
            source=answer.get("source"),
            amount=answer.get("amount"),
            ledger_id=answer.get("ledger_id"),
            idempotency_key=answer.get("idempotency_key"),
            replayed=bool(answer.get("replayed", False)),
            state=answer.get("state"),
            hold=answer.get("hold"),
            retry=answer.get("retry") is True,
            grant=answer.get("grant"),
            credits_drawn=answer.get("credits_drawn"),
            expired=answer.get("expired"),
            opened=answer.get("opened"),
            raw=answer,
        )

    @property
    def payment_required(self) -> bool:
        return self.code == 402


def _state(include_state: bool) -> dict[str, Any]:
    """The task's default is the full answer; a client that does not want ``state`` says so."""
    return {} if include_state else {"include_state": False}


class BillingClient:
    def __init__(
        self,
        app: Celery | None = None,
        *,
        broker_url: str | None = None,
        result_backend: str | None = None,
        queue: str = "billing",
        admin_queue: str = "billing-admin",
        timeout: float = 30.0,
        delivery_limit: int = rabbitmq.DEFAULT_DELIVERY_LIMIT,
    ) -> None:
        """``delivery_limit``: on RabbitMQ, the workers' BILLING_DELIVERY_LIMIT (a queue
        declared with another one is refused by RabbitMQ)."""
        if app is None:
            app = Celery("billing-client", broker=broker_url, backend=result_backend)
            app.conf.task_serializer = "json"
            app.conf.result_serializer = "json"
            app.conf.accept_content = ["json"]
            if broker_url and rabbitmq.is_amqp(broker_url):
                # The queues declared as the workers declare them, and publisher confirms.
                rabbitmq.configure(app.conf, queue, admin_queue, delivery_limit)
        self.app = app
        self.queue = queue
        self.admin_queue = admin_queue
        self.timeout = timeout

    def queue_for(self, name: str) -> str:
        """Privileged tasks (grants, subscriptions, refunds, tier sync, audit) go to the admin
        queue, which only the back office may write to; the rest to the public queue."""
        return self.admin_queue if name in PRIVILEGED else self.queue

    def call(self, name: str, timeout: float | None = None, **kwargs: Any) -> BillingResult:
        """Send one task by name and wait for its answer."""
        return self._call(name, self.queue_for(name), timeout, kwargs)

    def _call(
        self, name: str, queue: str, timeout: float | None, kwargs: dict[str, Any]
    ) -> BillingResult:
        shown = masked(kwargs)
        try:
            pending = self.app.send_task(
                name,
                kwargs=kwargs,
                queue=queue,
                kwargsrepr=saferepr(shown),
                # When it was sent: the workers' queue-wait metric (worker.metrics).
                headers={SENT_AT_HEADER: time.time()},
            )
        except KombuOperationalError as exc:
            # Celery's publish retries are spent; on RabbitMQ a negative confirm lands here.
            raise NotConfirmed(f"{name} was not confirmed by the broker: {exc!r}") from exc
        try:
            answer = pending.get(timeout=timeout or self.timeout, propagate=False)
        except CeleryTimeoutError:
            raise BillingTimeout(f"{name} did not answer in {timeout or self.timeout}s") from None
        if pending.failed() or not isinstance(answer, dict):
            raise BillingFailed(f"{name} failed: {answer!r}")
        return BillingResult.from_dict(answer)

    def charge_generation(
        self,
        user_id: int,
        idempotency_key: str,
        cost: int | None = None,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
        include_state: bool = False,
    ) -> BillingResult:
        return self.call(
            names.CHARGE_GENERATION,
            timeout,
            user_id=user_id,
            idempotency_key=idempotency_key,
            cost=cost,
            meta=meta,
            **_state(include_state),
        )

    def charge_assistant(
        self,
        user_id: int,
        idempotency_key: str,
        cost: int | None = None,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
        include_state: bool = False,
    ) -> BillingResult:
        return self.call(
            names.CHARGE_ASSISTANT,
            timeout,
            user_id=user_id,
            idempotency_key=idempotency_key,
            cost=cost,
            meta=meta,
            **_state(include_state),
        )

    def reserve_generation(
        self,
        user_id: int,
        idempotency_key: str,
        cost: int | None = None,
        ttl_seconds: int | None = None,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
        include_state: bool = False,
    ) -> BillingResult:
        """Hold what the generation would be charged, before it runs; ``capture`` it when the
        image is delivered, ``release`` it when it is not. Unsettled, it expires after
        ``ttl_seconds`` (default BILLING_HOLD_TTL_SECONDS) and gives everything back."""
        return self._reserve(
            names.RESERVE_GENERATION, user_id, idempotency_key, cost, ttl_seconds, meta, timeout,
            include_state,
        )  # fmt: skip

    def reserve_assistant(
        self,
        user_id: int,
        idempotency_key: str,
        cost: int | None = None,
        ttl_seconds: int | None = None,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
        include_state: bool = False,
    ) -> BillingResult:
        return self._reserve(
            names.RESERVE_ASSISTANT, user_id, idempotency_key, cost, ttl_seconds, meta, timeout,
            include_state,
        )  # fmt: skip

    def _reserve(
        self,
        name: str,
        user_id: int,
        idempotency_key: str,
        cost: int | None,
        ttl_seconds: int | None,
        meta: dict[str, Any] | None,
        timeout: float | None,
        include_state: bool,
    ) -> BillingResult:
        return self.call(
            name,
            timeout,
            user_id=user_id,
            idempotency_key=idempotency_key,
            cost=cost,
            ttl_seconds=ttl_seconds,
            meta=meta,
            **_state(include_state),
        )

    def charge_batch(
        self,
        charges: Sequence[Mapping[str, Any]],
        include_state: bool = False,
        timeout: float | None = None,
    ) -> list[BillingResult]:
        """Up to 100 charges in one message, ``{user_id, idempotency_key, operation
        ("generation" or "assistant"), cost?, meta?}`` each; every item is answered as its
        own message would be (its 402, 404, 409 or 422 included), in item order. An item
        with ``retry`` set was not done (the batch kept to its time limit, or its account's
        lock was busy): send those items again, with the same keys."""
        return self._batch(names.CHARGE_BATCH, "charges", charges, include_state, timeout)

    def reserve_batch(
        self,
        reserves: Sequence[Mapping[str, Any]],
        include_state: bool = False,
        timeout: float | None = None,
    ) -> list[BillingResult]:
        """Up to 100 reserves in one message (a reserve's arguments and ``operation``)."""
        return self._batch(names.RESERVE_BATCH, "reserves", reserves, include_state, timeout)

    def _batch(
        self,
        name: str,
        field: str,
        items: Sequence[Mapping[str, Any]],
        include_state: bool,
        timeout: float | None,
    ) -> list[BillingResult]:
        answer = self.call(
            name, timeout, **{field: [dict(item) for item in items]}, **_state(include_state)
        )
        if not answer.ok:  # the batch itself is malformed (not a list, over 100 items, ...)
            raise ValueError(f"{name} refused the batch: {answer.message}")
        return [BillingResult.from_dict(item) for item in answer.raw["results"]]

    def capture(
        self, idempotency_key: str, amount: int | None = None, timeout: float | None = None
    ) -> BillingResult:
        """Keep the hold reserved under ``idempotency_key``: all of it, or for a credits hold
        ``amount`` of it (the rest goes back at once)."""
        return self.call(names.CAPTURE, timeout, idempotency_key=idempotency_key, amount=amount)

    def release(
        self, idempotency_key: str, reason: str | None = None, timeout: float | None = None
    ) -> BillingResult:
        """Give back everything the hold reserved under ``idempotency_key`` took."""
        return self.call(names.RELEASE, timeout, idempotency_key=idempotency_key, reason=reason)

    def refund(
        self, idempotency_key: str, reason: str | None = None, timeout: float | None = None
    ) -> BillingResult:
        return self.call(names.REFUND, timeout, idempotency_key=idempotency_key, reason=reason)

    def open_account(
        self, user_id: int, role: str = "user", timeout: float | None = None
    ) -> BillingResult:
        """Open the account (nothing charged or granted), or answer it as it is; ``opened``
        says which. An admin account is opened from the admin queue only: an admin passes
        free."""
        queue = self.admin_queue if role == "admin" else self.queue
        return self._call(names.OPEN_ACCOUNT, queue, timeout, {"user_id": user_id, "role": role})

    def grant_credits(
        self,
        user_id: int,
        amount: int,
        idempotency_key: str,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
        *,
        expires_at: datetime | str | None = None,
        priority: int | None = None,
        category: str | None = None,
    ) -> BillingResult:
        """A grant: ``expires_at`` (an aware datetime or ISO-8601 text with its offset; absent,
        never), ``priority`` (0-100, default 50, lower drawn first), ``category`` (``paid``,
        the default, or ``promotional``, drawn first among equals)."""
        if isinstance(expires_at, datetime):
            if expires_at.tzinfo is None:
                raise ValueError("expires_at must be timezone-aware")
            expires_at = expires_at.isoformat()
        return self.call(
            names.GRANT_CREDITS,
            timeout,
            user_id=user_id,
            amount=amount,
            idempotency_key=idempotency_key,
            meta=meta,
            expires_at=expires_at,
            priority=priority,
            category=category,
        )

    def void_grant(
        self, idempotency_key: str, reason: str | None = None, timeout: float | None = None
    ) -> BillingResult:
        """Remove what is left of the grant made under ``idempotency_key``."""
        return self.call(names.VOID_GRANT, timeout, idempotency_key=idempotency_key, reason=reason)

    def activate_subscription(
        self,
        user_id: int,
        tier: str,
        idempotency_key: str,
        days: int = 30,
        timeout: float | None = None,
    ) -> BillingResult:
        return self.call(
            names.ACTIVATE_SUBSCRIPTION,
            timeout,
            user_id=user_id,
            tier=tier,
            idempotency_key=idempotency_key,
            days=days,
        )

    def get_state(self, user_id: int, timeout: float | None = None) -> BillingResult:
        return self.call(names.GET_STATE, timeout, user_id=user_id)

    def get_ledger(
        self,
        user_id: int,
        limit: int = 50,
        cursor: str | None = None,
        timeout: float | None = None,
    ) -> BillingResult:
        return self.call(names.GET_LEDGER, timeout, user_id=user_id, limit=limit, cursor=cursor)

    def audit(self, user_id: int | None = None, timeout: float | None = None) -> BillingResult:
        return self.call(names.AUDIT, timeout, user_id=user_id)
