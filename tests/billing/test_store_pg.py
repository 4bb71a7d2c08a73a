"""The PostgreSQL store's prepared statements: made once per connection, and made again when
something has dropped them, without a charge being lost or doubled."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine

from billing.core.settings import get_settings
from billing.core.validation import ChargeArgs
from billing.movements import charges, frame
from billing.storage import psycopg_store
from models import Operation
from tests.conftest import Accounts, ledger_rows

NAMES = sorted(s.name for s in psycopg_store.STATEMENTS)


@pytest.fixture
def conn(engine: Engine) -> Iterator[psycopg.Connection]:
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as connection:
        yield connection


def _charge(conn: psycopg.Connection, user_id: int, key: str) -> dict:
    args = ChargeArgs.parse((), {"user_id": user_id, "idempotency_key": key})
    movement = charges.Charge(Operation.GENERATION, args)
    return frame.run(psycopg_store.PgStore(conn), movement, get_settings())


def _prepared_here(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute("SELECT name FROM pg_prepared_statements WHERE name LIKE 'billing%'")
    return sorted(name for (name,) in rows)


def test_statements_are_prepared_on_a_connections_first_charge(conn, accounts: Accounts, engine):
    user = accounts.credits_only(balance_credits=100)
    assert _prepared_here(conn) == []
    first = _charge(conn, user, "pg-1")
    assert _prepared_here(conn) == NAMES
    second = _charge(conn, user, "pg-2")
    replay = _charge(conn, user, "pg-1")

    assert first["ok"] and second["ok"] and first["source"] == "credits"
    assert replay["replayed"] and replay["ledger_id"] == first["ledger_id"]
    assert [r.idempotency_key for r in ledger_rows(engine, user)] == ["pg-1", "pg-2"]
    assert accounts.get(user).balance_credits == 100 - first["amount"] - second["amount"]


def test_a_charge_after_its_statements_were_dropped_prepares_them_again(
    conn, accounts: Accounts, engine
):
    user = accounts.credits_only(balance_credits=100)
    _charge(conn, user, "pg-1")
    conn.execute("DEALLOCATE ALL")  # what DISCARD ALL or a careless pooler does to a session

    again = _charge(conn, user, "pg-2")

    assert again["ok"] and not again["replayed"]
    assert _prepared_here(conn) == NAMES
    assert [r.idempotency_key for r in ledger_rows(engine, user)] == ["pg-1", "pg-2"]
    assert accounts.get(user).balance_credits == 100 - 2 * again["amount"]


def test_statements_left_by_an_earlier_attempt_are_kept_not_prepared_twice(
    conn, accounts: Accounts, engine
):
    # PREPARE is not transactional: an attempt that failed half way leaves some behind.
    user = accounts.credits_only(balance_credits=100)
    conn.execute(psycopg_store.LOCK_ACCOUNT.prepare)
    conn.execute(psycopg_store.REMEMBER.prepare)

    outcome = _charge(conn, user, "pg-1")

    assert outcome["ok"]
    assert _prepared_here(conn) == NAMES
    assert len(ledger_rows(engine, user)) == 1
