"""Fixtures: real PostgreSQL, real Redis, a real Celery worker; schema from the migrations."""

from __future__ import annotations

from tests.services import configure_environment

configure_environment()

# ruff: noqa: E402  (the environment must be set before the app reads its settings)
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from billing.core.settings import get_settings, reload_settings
from cli import processes
from migrations import migrate
from models import User, UserRole
from tests import brokers, db
from tests.procs import LOG_DIR, consumer_command
from tests.services import REDIS_URL, TEST_DATABASE, database_url
from worker import app
from worker import db as worker_db

RESULT_TIMEOUT = 30


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    db.recreate_database(TEST_DATABASE)
    url = database_url(TEST_DATABASE)
    migrate.upgrade(url)
    yield url


@pytest.fixture(scope="session")
def engine(database: str) -> Iterator[Engine]:
    eng = create_engine(database)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def celery_worker(database: str) -> Iterator[Any]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    settings = get_settings()
    with start_worker(
        app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30,
        queues=[settings.queue, settings.admin_queue],
    ) as worker:
        yield worker
    worker_db.reset_engine()


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The session's RabbitMQ vhost, empty at the start."""
    brokers.fresh_vhost()
    return brokers.RABBITMQ_URL


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> brokers.Broker:
    """Each broker the billing tasks run on, in turn."""
    if request.param == "rabbitmq":
        return brokers.rabbitmq_broker(request.getfixturevalue("rabbitmq_url"))
    return brokers.redis_broker()


RECEIVED_KEY = "billing-test:received"


class Consumer:
    """The product's consumer (``tests.consumer``), a real ``celery worker`` of its own on the
    events queue: what it received, in order, duplicates included."""

    def __init__(self, redis_url: str = REDIS_URL, key: str = RECEIVED_KEY) -> None:
        self.queue = get_settings().events_queue
        self.redis = redis.Redis.from_url(redis_url)
        self.key = key

    def received(self) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.redis.lrange(self.key, 0, -1)]

    def clear(self) -> None:
        self.redis.delete(self.key)

    def idle(self, quiet: float = 0.5, timeout: float = 30) -> list[dict[str, Any]]:
        """What was received, once the queue is empty and nothing came for ``quiet`` s."""
        deadline = time.monotonic() + timeout
        seen, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = self.redis.llen(self.key)
            if self.redis.llen(self.queue) or count != seen:
                seen, since = count, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return self.received()
            time.sleep(0.05)
        raise AssertionError(f"the events queue did not settle: {self.redis.llen(self.queue)}")

    def of(self, user_id: int) -> list[dict[str, Any]]:
        return [event for event in self.idle() if event["user_id"] == user_id]


@pytest.fixture(scope="session")
def _consumer_process(celery_worker: Any) -> Iterator[Consumer]:
    hostname = f"consumer-{uuid.uuid4().hex[:8]}@%h"
    cmd = consumer_command(hostname)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{hostname.split('@')[0]}.log"
    env = {"BILLING_TEST_RECEIVED_KEY": RECEIVED_KEY}
    with processes.running(cmd, log, env) as proc:
        processes.wait_for_worker(app, proc, processes.node_name(hostname))
        yield Consumer()


@pytest.fixture
def consumer(_consumer_process: Consumer) -> Consumer:
    """The product's consumer, with nothing received yet in this test."""
    _consumer_process.idle()
    _consumer_process.clear()
    return _consumer_process


@pytest.fixture(autouse=True)
def _clean_tables(request: pytest.FixtureRequest) -> Iterator[None]:
    # The worker writes through its own connections, so a rolled-back test transaction
    # would not undo its work: every test starts from empty tables instead.
    if "engine" in request.fixturenames or "worker" in request.fixturenames:
        db.truncate_all(request.getfixturevalue("engine"))
    yield


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Change BILLING_* settings for one test; the in-process worker reads them too."""

    def configure(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"BILLING_{name.upper()}", value)
        reload_settings()

    yield configure
    monkeypatch.undo()
    reload_settings()


class Worker:
    """Sends tasks by name, as a producer without our code would, and waits for the result."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def call(self, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # Routed by name, as a producer with the app's configuration sends it: privileged
        # tasks to the admin queue, the rest to the public one.
        result = app.send_task(name, args=args, kwargs=kwargs)
        return result.get(timeout=RESULT_TIMEOUT)

    def charge_generation(self, user_id: int, key: str, **kwargs: Any) -> dict[str, Any]:
        return self.call(
            "billing.charge_generation", user_id=user_id, idempotency_key=key, **kwargs
        )

    def charge_assistant(self, user_id: int, key: str, **kwargs: Any) -> dict[str, Any]:
        return self.call("billing.charge_assistant", user_id=user_id, idempotency_key=key, **kwargs)

    def state(self, user_id: int) -> dict[str, Any]:
        return self.call("billing.get_state", user_id=user_id)

    def ledger(self, user_id: int, **kwargs: Any) -> dict[str, Any]:
        return self.call("billing.get_ledger", user_id=user_id, **kwargs)

    def grant(self, user_id: int, amount: int, key: str, **kwargs: Any) -> dict[str, Any]:
        return self.call(
            "billing.grant_credits", user_id=user_id, amount=amount, idempotency_key=key, **kwargs
        )

    def subscribe(self, user_id: int, tier: str, key: str, **kwargs: Any) -> dict[str, Any]:
        return self.call(
            "billing.activate_subscription",
            user_id=user_id,
            tier=tier,
            idempotency_key=key,
            **kwargs,
        )

    def refund(self, key: str, **kwargs: Any) -> dict[str, Any]:
        return self.call("billing.refund", idempotency_key=key, **kwargs)

    def reserve_generation(self, user_id: int, key: str, **kwargs: Any) -> dict[str, Any]:
        return self.call(
            "billing.reserve_generation", user_id=user_id, idempotency_key=key, **kwargs
        )

    def reserve_assistant(self, user_id: int, key: str, **kwargs: Any) -> dict[str, Any]:
        return self.call(
            "billing.reserve_assistant", user_id=user_id, idempotency_key=key, **kwargs
        )

    def capture(self, key: str, **kwargs: Any) -> dict[str, Any]:
        return self.call("billing.capture", idempotency_key=key, **kwargs)

    def release(self, key: str, **kwargs: Any) -> dict[str, Any]:
        return self.call("billing.release", idempotency_key=key, **kwargs)

    def expire_holds(self) -> dict[str, Any]:
        return self.call("billing.expire_holds")

    def expire_grants(self) -> dict[str, Any]:
        return self.call("billing.expire_grants")

    def void_grant(self, key: str, **kwargs: Any) -> dict[str, Any]:
        return self.call("billing.void_grant", idempotency_key=key, **kwargs)

    def publish_events(self) -> dict[str, Any]:
        return self.call("billing.publish_events")

    def announce_subscriptions(self) -> dict[str, Any]:
        return self.call("billing.announce_subscriptions")

    def prune_events(self) -> dict[str, Any]:
        return self.call("billing.prune_events")

    def reset_due_limits(self) -> dict[str, Any]:
        return self.call("billing.reset_due_limits")

    def sync_tier_limits(self) -> dict[str, Any]:
        return self.call("billing.sync_tier_limits")

    def audit(self, user_id: int | None = None) -> dict[str, Any]:
        return self.call("billing.audit", user_id=user_id)


@pytest.fixture
def worker(celery_worker: Any, engine: Engine) -> Worker:
    return Worker(engine)


# --- accounts -------------------------------------------------------------------------------


def days_ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def _freemium() -> int:
    """The freemium limit in force: an account at it has no free actions left."""
    return get_settings().freemium_limit


class Accounts:
    """Builds real account rows the way other services would write them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._next_id = 1000

    def create(self, **columns: Any) -> int:
        user_id = columns.pop("id", None) or self._take_id()
        with Session(self.engine) as session, session.begin():
            session.add(User(id=user_id, **columns))
        return user_id

    def get(self, user_id: int) -> User:
        with Session(self.engine) as session:
            user = session.get(User, user_id)
            assert user is not None
            session.expunge(user)
            return user

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # The six kinds of account of the product's Billing v4 suite.
    def subscriber(self, **overrides: Any) -> int:
        return self.create(
            **{
                "subscription_type": "standard",
                "subscription_end": datetime.now(UTC) + timedelta(days=20),
                "subscription_ops_limit": 100,
                "balance_credits": 100,
                **overrides,
            }
        )

    def freemium_only(self, **overrides: Any) -> int:
        return self.create(**overrides)

    def credits_only(self, **overrides: Any) -> int:
        return self.create(
            **{"freemium_actions_used": _freemium(), "balance_credits": 100, **overrides}
        )

    def no_funds(self, **overrides: Any) -> int:
        return self.create(
            **{"freemium_actions_used": _freemium(), "balance_credits": 0, **overrides}
        )

    def admin(self, **overrides: Any) -> int:
        return self.create(
            **{"role": UserRole.ADMIN, "freemium_actions_used": _freemium(), **overrides}
        )

    def expired_subscription(self, **overrides: Any) -> int:
        return self.create(
            **{
                "subscription_type": "standard",
                "subscription_end": days_ago(1),
                "subscription_ops_limit": 100,
                "freemium_actions_used": _freemium(),
                "balance_credits": 100,
                **overrides,
            }
        )


@pytest.fixture
def accounts(engine: Engine) -> Accounts:
    return Accounts(engine)


def _rows(engine: Engine, table: str, order: str, user_id: int | None) -> list[Any]:
    where = "" if user_id is None else " WHERE user_id = :uid"
    with engine.connect() as conn:
        return list(
            conn.execute(text(f"SELECT * FROM {table}{where} ORDER BY {order}"), {"uid": user_id})
        )


def ledger_rows(engine: Engine, user_id: int | None = None) -> list[Any]:
    return _rows(engine, "credits_ledger", "id", user_id)


def event_rows(engine: Engine, user_id: int | None = None) -> list[Any]:
    """The outbox, in the order the events were recorded."""
    return _rows(engine, "billing_events", "id", user_id)


def grant_rows(engine: Engine, user_id: int | None = None) -> list[Any]:
    return _rows(engine, "credit_grants", "id", user_id)


def hold_rows(engine: Engine, user_id: int | None = None) -> list[Any]:
    return _rows(engine, "billing_holds", "created_at, idempotency_key", user_id)


def reset_rows(engine: Engine, user_id: int | None = None) -> list[Any]:
    """The reset journal, oldest first: what each reset restored, for which period."""
    return _rows(engine, "allowance_resets", "period_start, user_id, source", user_id)


def shift_clock(engine: Engine, days: float, user_ids: list[int] | None = None) -> None:
    """Move the accounts' stored times back by ``days``: for them, as if ``days`` had passed."""
    where_user = "" if user_ids is None else "WHERE id = ANY(:ids)"
    where_ledger = "" if user_ids is None else "WHERE user_id = ANY(:ids)"
    # In seconds: an interval of days is calendar days in the session's zone, and the tests'
    # database is in one with daylight saving time (tests.services.DB_TIMEZONE).
    d = "make_interval(secs => :secs)"
    params = {"secs": days * 86400.0, "ids": user_ids}
    with engine.begin() as conn:
        conn.execute(
            text(
                f"UPDATE users SET freemium_reset_at = freemium_reset_at - {d},"
                f" subscription_ops_reset_at = subscription_ops_reset_at - {d},"
                f" subscription_end = subscription_end - {d} {where_user}"
            ),
            params,
        )
        conn.execute(
            text(f"UPDATE credits_ledger SET created_at = created_at - {d} {where_ledger}"), params
        )
        conn.execute(
            text(
                f"UPDATE billing_holds SET created_at = created_at - {d},"
                f" expires_at = expires_at - {d}, settled_at = settled_at - {d}"
                f" {where_ledger}"
            ),
            params,
        )
        conn.execute(
            text(
                f"UPDATE credit_grants SET created_at = created_at - {d},"
                f" expires_at = expires_at - {d}, closed_at = closed_at - {d},"
                f" expiring_notified_at = expiring_notified_at - {d} {where_ledger}"
            ),
            params,
        )
        conn.execute(
            text(
                f"UPDATE allowance_resets SET period_start = period_start - {d},"
                f" recorded_at = recorded_at - {d} {where_ledger}"
            ),
            params,
        )
        conn.execute(
            text(
                f"UPDATE billing_events SET occurred_at = occurred_at - {d},"
                f" subject_at = subject_at - {d}, published_at = published_at - {d},"
                f" kept_until = kept_until - {d} {where_ledger}"
            ),
            params,
        )


def count_rows(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
