"""Allowance resets: lazily inside a charge or read, and in bulk from Celery beat.

Every reset that gives something back leaves a record in ``allowance_resets``: the allowance,
the period it opened and how much it restored. The record's primary key is (account,
allowance, period start), which makes a reset idempotent per period: the beat firing twice,
or racing a lazy reset, can only record it once. Under the account's row lock the anchored
UPDATE itself also moves a period forward only once.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from billing.core import rules
from billing.core.settings import Settings
from billing.movements import frame
from billing.movements.accounts import BringUpToDate
from billing.storage.engine import session_factory, transaction
from billing.storage.factory import connect
from models import User

# Pinned: operators filter on this name, which predates the module's move to billing.jobs.
logger = logging.getLogger("billing.resets")

# One batch: lock up to :batch due accounts past :after (skipping any a charge holds: that
# charge resets them lazily), move each elapsed period forward by whole periods, and record
# each allowance that gave something back. All CTEs see one snapshot, so `due` still holds the
# counters as they were before the UPDATE. NO KEY UPDATE is the lock the UPDATE takes anyway
# (the id does not change), and it leaves ledger inserts' foreign-key checks unblocked.
# Under the row lock a period is opened once, so the record is inserted without ON CONFLICT:
# the speculative insertion cost 15% of the whole reset. A record that exists anyway (written
# by hand, or an anchor moved backwards) fails the batch, which is then done again with
# ON CONFLICT DO NOTHING and reports what it could not record (_SKIPPING).
_RESET_BATCH = """
WITH due AS (
    SELECT id,
           freemium_actions_used AS f_used,
           subscription_ops_used AS s_used,
           floor(extract(epoch FROM now() - freemium_reset_at) / :period) AS f_k,
           floor(extract(epoch FROM now() - subscription_ops_reset_at) / :period) AS s_k
    FROM users
    WHERE id > :after
      AND (freemium_reset_at <= now() - make_interval(secs => :period)
           OR subscription_ops_reset_at <= now() - make_interval(secs => :period))
    ORDER BY id
    LIMIT :batch
    FOR NO KEY UPDATE SKIP LOCKED
), reset AS (
    UPDATE users AS u SET
        freemium_actions_used = CASE WHEN d.f_k >= 1 THEN 0 ELSE u.freemium_actions_used END,
        freemium_reset_at = CASE WHEN d.f_k >= 1
            THEN u.freemium_reset_at + make_interval(secs => (d.f_k * :period)::float8)
            ELSE u.freemium_reset_at END,
        subscription_ops_used = CASE WHEN d.s_k >= 1 THEN 0 ELSE u.subscription_ops_used END,
        subscription_ops_reset_at = CASE WHEN d.s_k >= 1
            THEN u.subscription_ops_reset_at + make_interval(secs => (d.s_k * :period)::float8)
            ELSE u.subscription_ops_reset_at END
    FROM due AS d
    WHERE u.id = d.id
    RETURNING u.id, u.freemium_reset_at, u.subscription_ops_reset_at,
              d.f_used, d.s_used, d.f_k, d.s_k
), to_record (user_id, source, period_start, restored) AS (
    SELECT id, 'freemium'::ledger_source_enum, freemium_reset_at, f_used
    FROM reset WHERE f_k >= 1 AND f_used > 0
    UNION ALL
    SELECT id, 'subscription'::ledger_source_enum, subscription_ops_reset_at, s_used
    FROM reset WHERE s_k >= 1 AND s_used > 0
), recorded AS (
    INSERT INTO allowance_resets (user_id, source, period_start, restored)
    SELECT user_id, source, period_start, restored FROM to_record {conflict}
    RETURNING user_id, source, period_start
)
SELECT (SELECT count(*) FROM reset) AS reset,
       (SELECT count(*) FROM recorded) AS recorded,
       (SELECT count(*) FROM due) AS locked,
       (SELECT max(id) FROM due) AS last_id{skipped}
"""
_RESET_BATCH_SQL = text(_RESET_BATCH.format(conflict="", skipped=""))
_SKIPPING = text(
    _RESET_BATCH.format(
        conflict="ON CONFLICT DO NOTHING",
        skipped=""",
       (SELECT json_agg(json_build_object('user_id', user_id, 'source', source,
                                          'period_start', period_start))
        FROM (SELECT user_id, source, period_start FROM to_record
              EXCEPT SELECT user_id, source, period_start FROM recorded) AS s) AS skipped""",
    )
)


# A batch holds its rows' locks for as long as it takes, and a charge for one of those accounts
# waits that long, so batches are sized by time, not by a count fixed for one machine: batches
# of 3,000 rows, whose slowest took 73-96 ms on one day on 2 cores, took 107 ms on a slower
# one. Measured on that slower day (1,000,000 accounts, each run starting from a checkpoint,
# so every page pays its full-page WAL image as it would in production): a row costs about
# 25 us, the slowest batch of a run takes about 1.5x the median, and the whole reset took the
# same time within 5% with batches of 1,500 rows (median 38 ms) as with 3,000. Aiming at 40 ms
# keeps every batch well inside a 100 ms budget.
BATCH_TARGET_MS = 40.0
FIRST_BATCH = 1000
MIN_BATCH = 100
MAX_BATCH = 20_000


def next_batch_size(size: int, elapsed_ms: float, target_ms: float = BATCH_TARGET_MS) -> int:
    """The next batch's size: scaled to what the last one took, shrinking at once when it was
    slow but at most doubling when it was fast, so one lucky batch cannot overshoot."""
    scaled = int(size * target_ms / max(elapsed_ms, 0.001))
    return max(MIN_BATCH, min(MAX_BATCH, 2 * size, scaled))


def reset_due_limits(
    factory: sessionmaker[Session],
    settings: Settings,
    target_ms: float = BATCH_TARGET_MS,
    first_batch: int = FIRST_BATCH,
) -> dict[str, Any]:
    """Reset every account whose allowance period has elapsed, batch by batch.

    Each batch is its own short transaction, so no account's row stays locked for longer
    than one batch takes; it takes a session factory rather than a session for that reason.
    """
    totals = {"reset": 0, "recorded": 0, "skipped": 0, "batches": 0, "slowest_batch_ms": 0.0}
    with factory() as session:
        engine = session.get_bind()
    if engine.dialect.name != "postgresql":
        return _reset_embedded(engine, settings, totals)
    after = 0
    size = first_batch
    while True:
        started = time.perf_counter()
        params = {"period": settings.reset_period_days * 86400, "after": after, "batch": size}
        try:
            row = _run_batch(factory, _RESET_BATCH_SQL, params)
        except IntegrityError:
            row = _run_batch(factory, _SKIPPING, params)
            totals["skipped"] += len(row.skipped)
            logger.warning(
                "reset journal already had %d record(s) this batch opened; the accounts were"
                " reset, the records skipped: %s",
                len(row.skipped),
                json.dumps(row.skipped[:20], default=str),
            )
        # The batch's row locks are held from its statement until its commit.
        elapsed_ms = (time.perf_counter() - started) * 1000
        totals["slowest_batch_ms"] = round(max(totals["slowest_batch_ms"], elapsed_ms), 1)
        totals["batches"] += 1
        totals["reset"] += row.reset
        totals["recorded"] += row.recorded
        if row.locked < size:
            return totals
        after = row.last_id
        size = next_batch_size(size, elapsed_ms, target_ms)


def _run_batch(factory: sessionmaker[Session], sql: Any, params: dict[str, Any]) -> Any:
    with transaction(factory) as session:
        # The batch need not wait for its WAL to reach disk before releasing its locks: a
        # batch lost in a crash is redone by the next run or a lazy reset, and any later
        # transaction that commits durably flushes the batch's commit record with its own.
        session.execute(text("SET LOCAL synchronous_commit = off"))
        return session.execute(sql, params).one()


def _reset_embedded(engine: Engine, settings: Settings, totals: dict[str, Any]) -> dict[str, Any]:
    # The embedded SQLite default has a single writer and demo-sized tables: each due account
    # goes through the frame, as a lazy reset does.
    now = datetime.now(UTC)
    period = timedelta(days=settings.reset_period_days)
    with transaction(session_factory(engine)) as session:
        accounts = session.execute(
            select(User.id, User.freemium_reset_at, User.subscription_ops_reset_at)
        ).all()
    due = [
        user_id
        for user_id, *anchors in accounts
        if any(rules.next_period_start(anchor, now, period) is not None for anchor in anchors)
    ]
    with connect(engine) as conn:
        for user_id in due:
            frame.run(conn, BringUpToDate(user_id), settings)
    totals["reset"] += len(due)
    totals["batches"] += 1
    return totals
