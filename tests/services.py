"""Where the test suite finds PostgreSQL, Redis and RabbitMQ; never the production URLs."""

from __future__ import annotations

import os

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


def database_url(name: str) -> str:
    return make_url(ADMIN_DATABASE_URL).set(database=name).render_as_string(hide_password=False)


def configure_environment() -> None:
    """Point the BILLING_* settings at the test services before any app module is imported."""
    os.environ["BILLING_DATABASE_URL"] = database_url(TEST_DATABASE)
    os.environ["BILLING_BROKER_URL"] = REDIS_URL
    os.environ["BILLING_RESULT_BACKEND"] = REDIS_URL
    os.environ["BILLING_QUEUE"] = "billing"
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
