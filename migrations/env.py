"""Alembic environment: the URL comes from the caller's connection or the billing settings."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import text

from billing.core.settings import get_settings
from billing.storage.engine import create_db_engine
from models import Base

target_metadata = Base.metadata

# Migrations wait at most this long for a table lock, so a migration queued behind a long
# transaction fails fast instead of blocking every charge queued behind it.
LOCK_TIMEOUT = os.environ.get("BILLING_MIGRATION_LOCK_TIMEOUT", "5s")


def _run(connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT set_config('lock_timeout', :t, false)"), {"t": LOCK_TIMEOUT}
        )
        # A session setting: it outlives this commit, which leaves the transactions to
        # Alembic (a migration's autocommit block needs Alembic to have begun them).
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = (
        context.config.get_main_option("sqlalchemy.url") or get_settings().effective_database_url()
    )
    engine = create_db_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
