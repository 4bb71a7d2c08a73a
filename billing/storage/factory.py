"""The store for an engine: ``PgStore`` on PostgreSQL, else ``SqlStore``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

from billing.movements.store import Store


@contextmanager
def connect(engine: Engine) -> Iterator[Store]:
    """A store on one pooled connection: PgStore on PostgreSQL, else SqlStore."""
    if engine.dialect.name == "postgresql":
        import psycopg

        from billing.storage.psycopg_store import PgStore

        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            raw: psycopg.Connection = conn.connection.driver_connection
            try:
                yield PgStore(raw)
            except BaseException:
                if raw.broken or raw.closed:
                    conn.invalidate()  # SQLAlchemy did not see the error: drop the connection
                raise
    else:
        from billing.storage.sqlalchemy_store import SqlStore

        with engine.connect() as conn:
            store = SqlStore(conn)
            try:
                yield store
            finally:
                store.rollback()
