"""Migrations are reviewed code: reversible, and in agreement with the models."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from migrations import migrate
from models import Base
from tests.db import recreate_database
from tests.services import database_url

SCRATCH = "billing_migrations_test"
TABLES = {
    "users",
    "credits_ledger",
    "billing_requests",
    "allowance_resets",
    "billing_holds",
    "billing_events",
    "billing_job_runs",
    "credit_grants",
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ENUMS = {
    "user_role_enum",
    "ledger_entry_type_enum",
    "ledger_source_enum",
    "ledger_operation_enum",
    "hold_status_enum",
    "billing_event_type_enum",
    "credit_category_enum",
    "grant_status_enum",
}


@pytest.fixture
def scratch_url() -> Iterator[str]:
    recreate_database(SCRATCH)
    yield database_url(SCRATCH)


def _tables_and_enums(url: str) -> tuple[set[str], set[str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            enums = set(
                conn.execute(text("SELECT typname FROM pg_type WHERE typtype = 'e'")).scalars()
            )
            return set(inspect(conn).get_table_names()) - {"alembic_version"}, enums
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(scratch_url):
    migrate.upgrade(scratch_url)
    assert _tables_and_enums(scratch_url) == (TABLES, ENUMS)

    migrate.downgrade(scratch_url, "base")
    assert _tables_and_enums(scratch_url) == (set(), set())

    migrate.upgrade(scratch_url)
    assert _tables_and_enums(scratch_url) == (TABLES, ENUMS)


def test_models_and_migrations_agree(scratch_url):
    migrate.upgrade(scratch_url)
    engine = create_engine(scratch_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_embedded_sqlite_schema_round_trips(tmp_path):
    url = f"sqlite:///{tmp_path / 'billing.sqlite'}"
    migrate.upgrade(url)
    migrate.downgrade(url, "base")
    migrate.upgrade(url)
    engine = create_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) - {"alembic_version"} == TABLES
    finally:
        engine.dispose()


def test_a_bare_insert_makes_a_working_account_and_checks_hold(scratch_url):
    migrate.upgrade(scratch_url)
    engine = create_engine(scratch_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO users (id) VALUES (42)"))
            row = conn.execute(text("SELECT * FROM users WHERE id = 42")).one()
        assert (row.role, row.balance_credits, row.freemium_actions_used) == ("user", 0, 0)
        assert row.freemium_reset_at is not None and row.subscription_ops_reset_at is not None
        for column in (
            "balance_credits",
            "subscription_ops_used",
            "subscription_ops_limit",
            "freemium_actions_used",
        ):
            with pytest.raises(Exception, match="violates check constraint"), engine.begin() as c:
                c.execute(text(f"UPDATE users SET {column} = -1 WHERE id = 42"))
        with pytest.raises(Exception, match="invalid input value for enum"), engine.begin() as c:
            c.execute(text("UPDATE users SET role = 'owner' WHERE id = 42"))
    finally:
        engine.dispose()


# A reset as revision 0002 wrote it: a ledger row keyed by allowance, user and period start (µs).
PERIOD_START_US = 1_790_000_000_123_456
LEDGER_RESET = (
    "INSERT INTO credits_ledger (user_id, entry_type, source, amount, idempotency_key,"
    " balance_credits_after, subscription_ops_used_after, freemium_actions_used_after)"
    f" VALUES (7, 'reset', 'freemium', 3, 'billing:reset:freemium:7:{PERIOD_START_US}', 0, 0, 0)"
)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_0003_moves_resets_to_their_journal_and_refuses_to_drop_new_ones(
    backend, request, tmp_path
):
    if backend == "postgresql":
        url = request.getfixturevalue("scratch_url")
    else:
        url = f"sqlite:///{tmp_path / 'billing.sqlite'}"
    migrate.upgrade(url, "0002_refunds_and_internal_keys")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO users (id) VALUES (7)"))
            conn.execute(text(LEDGER_RESET))

        migrate.upgrade(url)
        with engine.connect() as conn:
            journal = conn.execute(
                text("SELECT user_id, source, period_start, restored FROM allowance_resets")
            ).one()
            ledger = conn.execute(text("SELECT count(*) FROM credits_ledger")).scalar_one()
        start = journal.period_start
        if isinstance(start, str):
            start = datetime.fromisoformat(start)
        micros = (start.replace(tzinfo=start.tzinfo or UTC) - EPOCH) // timedelta(microseconds=1)
        assert (journal.user_id, journal.source, journal.restored) == (7, "freemium", 3)
        assert micros == PERIOD_START_US
        assert ledger == 1  # the ledger is append-only: the old row stays

        # A copied reset can go back; one recorded after 0003 exists nowhere else.
        migrate.downgrade(url, "0002_refunds_and_internal_keys")
        migrate.upgrade(url)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO allowance_resets (user_id, source, period_start, restored)"
                    " VALUES (7, 'subscription', CURRENT_TIMESTAMP, 4)"
                )
            )
        with pytest.raises(RuntimeError, match="1 resets recorded after revision 0003"):
            migrate.downgrade(url, "0002_refunds_and_internal_keys")
        assert "allowance_resets" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def _migrated(backend: str, request: pytest.FixtureRequest, tmp_path) -> str:
    """A database of ``backend`` migrated to head; its URL."""
    if backend == "postgresql":
        url = request.getfixturevalue("scratch_url")
    else:
        url = f"sqlite:///{tmp_path / 'billing.sqlite'}"
    migrate.upgrade(url)
    return url


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_0004_downgrade_refuses_while_holds_exist(backend, request, tmp_path):
    url = _migrated(backend, request, tmp_path)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO users (id) VALUES (7)"))
            conn.execute(
                text(
                    "INSERT INTO billing_holds (idempotency_key, user_id, operation, source,"
                    " amount, created_at, expires_at) VALUES ('h', 7, 'generation', 'freemium',"
                    " 1, :at, :until)"
                ),
                {"at": datetime.now(UTC), "until": datetime.now(UTC) + timedelta(minutes=15)},
            )
            conn.execute(
                text(
                    "INSERT INTO credits_ledger (user_id, entry_type, source, operation, amount,"
                    " idempotency_key, balance_credits_after, subscription_ops_used_after,"
                    " freemium_actions_used_after, hold_key) VALUES (7, 'hold', 'freemium',"
                    " 'generation', 1, 'h', 0, 0, 1, 'h')"
                )
            )
            # A hold entry must name its hold, and only hold entries may.
            for entry_type, hold_key in (("hold", None), ("charge", "h")):
                with (
                    pytest.raises(Exception, match="hold_entry_links_its_hold"),
                    conn.begin_nested(),
                ):
                    conn.execute(
                        text(
                            "INSERT INTO credits_ledger (user_id, entry_type, source, amount,"
                            " idempotency_key, balance_credits_after,"
                            " subscription_ops_used_after, freemium_actions_used_after,"
                            " hold_key) VALUES (7, :t, 'freemium', 1, :k, 0, 0, 1, :h)"
                        ),
                        {"t": entry_type, "k": f"x-{entry_type}", "h": hold_key},
                    )

        migrate.downgrade(url, "0004_holds")  # no events: nothing to refuse
        with pytest.raises(RuntimeError, match="billing_holds holds 1 holds"):
            migrate.downgrade(url, "0003_allowance_resets")
        assert "billing_holds" in inspect(engine).get_table_names()

        with engine.begin() as conn:
            conn.execute(text("DELETE FROM credits_ledger"))
            conn.execute(text("DELETE FROM billing_holds"))
        migrate.downgrade(url, "0003_allowance_resets")
        assert "billing_holds" not in inspect(engine).get_table_names()
        migrate.upgrade(url)
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_0005_downgrade_refuses_while_events_are_unpublished(backend, request, tmp_path):
    url = _migrated(backend, request, tmp_path)
    engine = create_engine(url)
    insert = text(
        "INSERT INTO billing_events (event_id, type, user_id, occurred_at, data, published_at)"
        " VALUES (:id, 'credits.low', 7, :at, '{}', :published)"
    )
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO users (id) VALUES (7)"))
            now = datetime.now(UTC)
            conn.execute(insert, {"id": uuid.uuid4().hex, "at": now, "published": now})
            conn.execute(insert, {"id": uuid.uuid4().hex, "at": now, "published": None})
            # One row per event id: the database keeps a crossing to one event.
            with pytest.raises(Exception, match="event_id"), conn.begin_nested():
                row = conn.execute(text("SELECT event_id FROM billing_events")).first()
                conn.execute(insert, {"id": row[0], "at": now, "published": None})

        with pytest.raises(RuntimeError, match="1 unpublished events"):
            migrate.downgrade(url, "0004_holds")
        assert "billing_events" in inspect(engine).get_table_names()

        with engine.begin() as conn:
            conn.execute(text("UPDATE billing_events SET published_at = :at"), {"at": now})
        migrate.downgrade(url, "0004_holds")
        assert "billing_events" not in inspect(engine).get_table_names()
        assert "ix_users_subscription_end" not in {
            index["name"] for index in inspect(engine).get_indexes("users")
        }
        migrate.upgrade(url)
        assert "ix_users_subscription_end" in {
            index["name"] for index in inspect(engine).get_indexes("users")
        }
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_0008_forgets_the_404s_of_grants_and_activations_only(backend, request, tmp_path):
    if backend == "postgresql":
        url = request.getfixturevalue("scratch_url")
    else:
        url = f"sqlite:///{tmp_path / 'billing.sqlite'}"
    migrate.upgrade(url, "0007_credit_grants")
    not_found = '{"ok": false, "code": 404, "error": "user_not_found"}'
    paid = '{"ok": true, "code": 200}'
    rows = [  # key, operation, response
        ("pay-old", "grant", not_found),
        ("pay-terms", "grant:2026-12-31T00:00:00+00:00|50|paid", not_found),
        ("sub-old", "subscription:standard", not_found),
        ("job-old", "generation", not_found),  # a refused job stays refused
        ("pay-ok", "grant", paid),
    ]
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for key, operation, response in rows:
                conn.execute(
                    text(
                        "INSERT INTO billing_requests (idempotency_key, user_id, operation,"
                        " response) VALUES (:k, 990, :o, :r)"
                    ),
                    {"k": key, "o": operation, "r": response},
                )

        migrate.upgrade(url)
        with engine.connect() as conn:
            kept = conn.execute(
                text("SELECT idempotency_key FROM billing_requests ORDER BY idempotency_key")
            ).scalars()
            assert list(kept) == ["job-old", "pay-ok"]
        migrate.downgrade(url, "0007_credit_grants")  # restores nothing, refuses nothing
        migrate.upgrade(url)
    finally:
        engine.dispose()
