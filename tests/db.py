"""Scratch databases for the tests, built by the Alembic migrations."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from tests.services import ADMIN_DATABASE_URL

TABLES = (
    "allowance_resets",
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
    finally:
        admin.dispose()


def truncate_all(engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
