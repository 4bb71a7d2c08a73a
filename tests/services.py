"""Where the test suite finds PostgreSQL, Redis and RabbitMQ; never the production URLs."""

from __future__ import annotations

import os
import time

from sqlalchemy.engine import make_url

ADMIN_DATABASE_URL = os.environ.get(
    "BILLING_TEST_ADMIN_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BILLING_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# A vhost of its own on the machine's RabbitMQ; the session fixture creates it afresh.
RABBITMQ_URL = os.environ.get(
    "BILLING_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/billing-test"
)
# Another name (and Redis database and RabbitMQ vhost) lets two runs share the machine.
TEST_DATABASE = os.environ.get("BILLING_TEST_DATABASE", "billing_test")
# The suite runs where time zones bite: the tests' databases in a zone with daylight saving
# time (their sessions' TimeZone, which psycopg hands timestamps back in), and the worker
# processes, this one included, in another, with a half-hour offset and DST of its own. A
# test, or a line of the processor, that only holds in UTC fails here.
DB_TIMEZONE = os.environ.get("BILLING_TEST_DB_TIMEZONE", "Europe/Berlin")
WORKER_TZ = os.environ.get("BILLING_TEST_WORKER_TZ", "America/St_Johns")


def database_url(name: str) -> str:
    return make_url(ADMIN_DATABASE_URL).set(database=name).render_as_string(hide_password=False)


def configure_environment() -> None:
    """Point the BILLING_* settings at the test services before any app module is imported."""
    os.environ["BILLING_DATABASE_URL"] = database_url(TEST_DATABASE)
    os.environ["BILLING_BROKER_URL"] = REDIS_URL
    os.environ["BILLING_RESULT_BACKEND"] = REDIS_URL
    os.environ["BILLING_QUEUE"] = "billing"
    # Every worker process inherits it; tzset() moves this one (the in-process worker's).
    os.environ["TZ"] = WORKER_TZ
    time.tzset()
    # libpq would send PGTZ as the session's TimeZone, hiding the database's own setting.
    os.environ.pop("PGTZ", None)
    for name in list(os.environ):
        if (
            name.startswith("BILLING_")
            and name
            not in (
                "BILLING_DATABASE_URL",
                "BILLING_BROKER_URL",
                "BILLING_RESULT_BACKEND",
                "BILLING_QUEUE",
            )
            and not name.startswith("BILLING_TEST_")
        ):
            del os.environ[name]
