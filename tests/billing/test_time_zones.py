"""Time is exact UTC seconds, whatever the database's TimeZone and the worker's TZ.

psycopg hands ``timestamptz`` values back in the session's zone, and Python's arithmetic on two
datetimes of one zone is wall-clock arithmetic: across a clock change it is an hour off. Each
test here moves the tests' database to a zone chosen at run time, one whose clocks changed
inside the span the test computes over, so it bites on any date; the worker runs in the
suite's own zone (``tests.services.WORKER_TZ``), a third one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, text

from billing.core.settings import get_settings
from tests import db
from tests.conftest import event_rows, hold_rows, ledger_rows, reset_rows
from tests.services import DB_TIMEZONE, TEST_DATABASE, WORKER_TZ
from worker import db as worker_db

PERIOD = timedelta(days=30)
REGION = re.compile(r"(Africa|America|Antarctica|Asia|Atlantic|Australia|Europe|Indian|Pacific)/")


def _zone_whose_clocks_moved(
    engine: Engine, start: datetime, end: datetime, *, back: bool = False
) -> str | None:
    """A zone PostgreSQL and zoneinfo both know, not one of the suite's own, whose clocks show
    another UTC offset at ``end`` than at ``start``: at least an hour less when ``back``."""
    with engine.connect() as conn:
        names = (
            conn.execute(text("SELECT name FROM pg_timezone_names ORDER BY name")).scalars().all()
        )
        for name in names:
            if not REGION.match(name) or name in (DB_TIMEZONE, WORKER_TZ):
                continue
            try:
                zone = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
            moved = end.astimezone(zone).utcoffset() - start.astimezone(zone).utcoffset()
            if not (moved <= -timedelta(hours=1) if back else moved):
                continue
            # PostgreSQL's own time zone data must agree: it writes the offsets psycopg reads.
            in_postgres = conn.execute(
                text(
                    "SELECT (CAST(:end AS timestamptz) AT TIME ZONE :zone)"
                    " - (CAST(:start AS timestamptz) AT TIME ZONE :zone)"
                    " - (CAST(:end AS timestamptz) - CAST(:start AS timestamptz))"
                ),
                {"start": start, "end": end, "zone": name},
            ).scalar_one()
            if in_postgres == moved:
                return name
    return None


@contextmanager
def _database_in(engine: Engine, zone: str) -> Iterator[None]:
    """The tests' database in ``zone`` for the block: every connection, the worker's and the
    test's own, starts afresh and reads its times in it; the suite's zone again afterwards."""

    def move_to(name: str) -> None:
        with engine.begin() as conn:
            db.set_timezone(conn, TEST_DATABASE, name)
        worker_db.reset_engine()
        engine.dispose()

    move_to(zone)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW timezone")).scalar_one() == zone
        yield
    finally:
        move_to(DB_TIMEZONE)


def test_the_database_and_the_workers_keep_zones_of_their_own(celery_worker):
    # What makes the whole suite hostile (tests.services): the worker's own sessions read
    # their times in the database's zone, not one pinned for them, and the worker process's
    # local time is another zone's. Both have daylight saving time; neither is UTC.
    with worker_db.get_engine().connect() as conn:
        assert conn.execute(text("SHOW timezone")).scalar_one() == DB_TIMEZONE
    now = datetime.now(UTC)
    assert now.astimezone().utcoffset() == now.astimezone(ZoneInfo(WORKER_TZ)).utcoffset()
    assert os.environ["TZ"] == WORKER_TZ != DB_TIMEZONE


def _seconds(later: datetime, earlier: datetime) -> float:
    return later.timestamp() - earlier.timestamp()


def test_one_reset_per_period_across_a_fall_back_lazily_and_by_the_sweep(worker, accounts, engine):
    limit = get_settings().freemium_limit
    now = datetime.now(UTC)
    # Whole periods and 59 minutes back, in a zone whose clocks were set back an hour since:
    # counted on its wall clock, a period fewer has elapsed than in seconds.
    for periods in range(1, 13):
        anchor = now - periods * PERIOD - timedelta(minutes=59)
        zone = _zone_whose_clocks_moved(engine, anchor, now, back=True)
        if zone is not None:
            break
    assert zone is not None, "no zone set its clocks back in the last year"
    opened = anchor + periods * PERIOD
    lazy = accounts.no_funds(freemium_reset_at=anchor)
    swept = accounts.no_funds(freemium_reset_at=anchor)
    held = accounts.credits_only()

    with _database_in(engine, zone):
        # Lazily: the first charge opens the period; the next ones, seconds later, do not.
        lazily = [worker.charge_generation(lazy, f"tz-lazy-{n}") for n in range(limit + 1)]
        first_sweep = worker.reset_due_limits()
        # By the sweep first; the charges then find the period it opened.
        by_sweep = [worker.charge_generation(swept, f"tz-swept-{n}") for n in range(limit + 1)]
        second_sweep = worker.reset_due_limits()
        state = worker.state(lazy)
        hold = worker.reserve_generation(held, "tz-hold", ttl_seconds=3600)

    for charges in (lazily, by_sweep):
        assert [(c["code"], c.get("source")) for c in charges] == [(200, "freemium")] * limit + [
            (402, None)
        ]
    assert (first_sweep["reset"], second_sweep["reset"]) == (1, 0)
    recorded = sorted(
        (r.user_id, r.restored, r.period_start.astimezone(UTC)) for r in reset_rows(engine)
    )
    assert recorded == [(lazy, limit, opened), (swept, limit, opened)]
    assert datetime.fromisoformat(state["state"]["freemium"]["resets_at"]) == opened + PERIOD
    for user in (lazy, swept):
        (exhausted,) = [e for e in event_rows(engine, user) if e.type == "freemium.exhausted"]
        assert exhausted.subject_at.astimezone(UTC) == opened
        assert _seconds(exhausted.kept_until, exhausted.subject_at) == PERIOD.total_seconds()
    # A 3,600 s hold expires 3,600 s after it was taken.
    (row,) = hold_rows(engine, held)
    assert _seconds(row.expires_at, row.created_at) == 3600
    assert datetime.fromisoformat(hold["hold"]["expires_at"]) == row.expires_at


def test_a_subscription_runs_its_days_in_seconds_across_a_clock_change(worker, accounts, engine):
    now = datetime.now(UTC)
    for days in range(30, 366, 30):
        zone = _zone_whose_clocks_moved(engine, now, now + timedelta(days=days))
        if zone is not None:
            break
    assert zone is not None, "no zone changes its clocks in the coming year"
    user = accounts.freemium_only()

    with _database_in(engine, zone):
        new = worker.subscribe(user, "standard", "tz-new", days=days)
        renewal = worker.subscribe(user, "standard", "tz-renewal", days=days)
        changed = worker.subscribe(user, "premium", "tz-change", days=3 * days)

    assert (new["change"], renewal["change"], changed["change"]) == (
        "new",
        "renewal",
        "tier_change",
    )
    row = accounts.get(user)
    started = row.subscription_ops_reset_at
    ends = [datetime.fromisoformat(r["state"]["subscription"]["ends_at"]) for r in (new, renewal)]
    assert [_seconds(end, started) for end in ends] == [days * 86400, 2 * days * 86400]
    # The tier change runs its days from its own moment: its ledger row's.
    changed_at = ledger_rows(engine, user)[-1].created_at
    assert _seconds(row.subscription_end, changed_at) == 3 * days * 86400
    resets_at = datetime.fromisoformat(new["state"]["subscription"]["resets_at"])
    assert _seconds(resets_at, started) == PERIOD.total_seconds()
