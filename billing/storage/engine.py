"""Engine construction for PostgreSQL (production) and SQLite (the embedded default)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and run them on psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def mask_url(url: str) -> str:
    """Any service URL (database, broker, backend) with its password replaced by ***."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        return "<unparseable url>"


def create_db_engine(url: str, *, pool_size: int = 2, session_options: str = "") -> Engine:
    """``session_options``: PostgreSQL settings for every connection (``-c name=value ...``)."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        _make_sqlite_transactions_serial(engine)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=2,
        # No ping on checkout: it would cost a round trip on every task. A connection that
        # died while pooled fails its task's first attempt, which is retried on a new one.
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args={
            "application_name": "billing-processor",
            "connect_timeout": 10,
            # psycopg's own automatic preparing would DEALLOCATE ALL on a rollback, the
            # charge's prepared statements with its own (see billing.storage.psycopg_store.prepare).
            "prepare_threshold": None,
            **({"options": session_options} if session_options else {}),
        },
    )


def _make_sqlite_transactions_serial(engine: Engine) -> None:
    # SQLite has no row locks: BEGIN IMMEDIATE takes the write lock up front, so two worker
    # processes on the embedded default serialise their charges instead of racing.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False, autoflush=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One session, one transaction: committed on success, rolled back on any exception."""
    with factory() as session, session.begin():
        yield session
