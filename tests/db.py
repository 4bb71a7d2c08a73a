"""Scratch databases for the tests, built by the Alembic migrations."""

from __future__ import annotations

from sqlalchemy import Connection, create_engine, text

from tests.services import ADMIN_DATABASE_URL, DB_TIMEZONE

TABLES = (
    "allowance_resets",
    "credit_grants",
    "billing_events",
    "billing_holds",
    "billing_job_runs",
    "billing_requests",
    "credits_ledger",
    "users",
)


def recreate_database(name: str) -> None:
    admin = create_engine(ADMIN_DATABASE_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            set_timezone(conn, name, DB_TIMEZONE)
    finally:
        admin.dispose()


def set_timezone(conn: Connection, name: str, zone: str) -> None:
    """The database's default TimeZone: every session started after it reads times in it."""
    conn.execute(text(f"ALTER DATABASE \"{name}\" SET timezone TO '{zone}'"))


def truncate_all(engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
