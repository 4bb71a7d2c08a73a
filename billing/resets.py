"""Allowance resets: lazily inside a charge or read, and in bulk from Celery beat.

Every reset that gives something back leaves a record in ``allowance_resets``: the allowance,
the period it opened and how much it restored. The record's primary key is (account,
allowance, period start), which makes a reset idempotent per period: the beat firing twice,
or racing a lazy reset, can only record it once. Under the account's row lock the anchored
UPDATE itself also moves a period forward only once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from billing import rules
from billing.db import transaction
from billing.dml import insert_unless_exists
from billing.settings import Settings
from models import AllowanceReset, LedgerSource, User

logger = logging.getLogger(__name__)

# (allowance, its *_used column, its *_reset_at column)
ALLOWANCES = (
    (LedgerSource.FREEMIUM, "freemium_actions_used", "freemium_reset_at"),
    (LedgerSource.SUBSCRIPTION, "subscription_ops_used", "subscription_ops_reset_at"),
)


@dataclass(frozen=True)
class Restored:
    """One allowance given back by a lazy reset: which, the period it opened, how much."""

    source: LedgerSource
    period_start: datetime
    amount: int


def refresh(account: rules.Account, now: datetime, settings: Settings) -> list[Restored]:
    """Bring a locked account up to date in memory; the resets that restored something."""
    used_before = {source: getattr(account, used) for source, used, _ in ALLOWANCES}
    changes = rules.refresh_changes(account, now, settings)
    rules.apply(account, changes)
    return [
        Restored(source, changes[reset_at], used_before[source])
        for source, _used, reset_at in ALLOWANCES
        if reset_at in changes and used_before[source] > 0
    ]


def refresh_and_record(session: Session, user: User, now: datetime, settings: Settings) -> None:
    """Bring a locked account up to date; record each reset that restores something."""
    for reset in refresh(user, now, settings):
        session.execute(
            insert_unless_exists(session, AllowanceReset.__table__).values(
                user_id=user.id,
                source=reset.source,
                period_start=reset.period_start,
                restored=reset.amount,
                recorded_at=now,
            )
        )


# One batch: lock up to :batch due accounts past :after (skipping any a charge holds: that
# charge resets them lazily), move each elapsed period forward by whole periods, and record
# each allowance that gave something back. All CTEs see one snapshot, so `due` still holds the
# counters as they were before the UPDATE. NO KEY UPDATE is the lock the UPDATE takes anyway
# (the id does not change), and it leaves ledger inserts' foreign-key checks unblocked.
# The record has no ON CONFLICT: under the row lock a period is opened once, so a record that
# already exists means an anchor went backwards, and the batch should fail loudly rather than
# hide it (the speculative insertion also cost 15% of the whole reset).
_RESET_BATCH_SQL = text(
    """
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
), recorded AS (
    INSERT INTO allowance_resets (user_id, source, period_start, restored)
    SELECT id, 'freemium'::ledger_source_enum, freemium_reset_at, f_used
    FROM reset WHERE f_k >= 1 AND f_used > 0
    UNION ALL
    SELECT id, 'subscription'::ledger_source_enum, subscription_ops_reset_at, s_used
    FROM reset WHERE s_k >= 1 AND s_used > 0
    RETURNING 1
)
SELECT (SELECT count(*) FROM reset) AS reset,
       (SELECT count(*) FROM recorded) AS recorded,
       (SELECT count(*) FROM due) AS locked,
       (SELECT max(id) FROM due) AS last_id
"""
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
    totals = {"reset": 0, "recorded": 0, "batches": 0, "slowest_batch_ms": 0.0}
    after = 0
    size = first_batch
    while True:
        started = time.perf_counter()
        with transaction(factory) as session:
            if session.get_bind().dialect.name != "postgresql":
                return _reset_embedded(session, settings, totals)
            # The batch need not wait for its WAL to reach disk before releasing its locks: a
            # batch lost in a crash is redone by the next run or a lazy reset, and any later
            # transaction that commits durably flushes the batch's commit record with its own.
            session.execute(text("SET LOCAL synchronous_commit = off"))
            row = session.execute(
                _RESET_BATCH_SQL,
                {"period": settings.reset_period_days * 86400, "after": after, "batch": size},
            ).one()
        # The batch's row locks are held from its statement until this commit.
        elapsed_ms = (time.perf_counter() - started) * 1000
        totals["slowest_batch_ms"] = round(max(totals["slowest_batch_ms"], elapsed_ms), 1)
        totals["batches"] += 1
        totals["reset"] += row.reset
        totals["recorded"] += row.recorded
        if row.locked < size:
            return totals
        after = row.last_id
        size = next_batch_size(size, elapsed_ms, target_ms)


def _reset_embedded(session: Session, settings: Settings, totals: dict[str, Any]) -> dict[str, Any]:
    # The embedded SQLite default has a single writer and demo-sized tables: the same rules
    # as the lazy reset, one account at a time, are enough there.
    now = datetime.now(UTC)
    period = timedelta(days=settings.reset_period_days)
    for user in session.scalars(select(User).order_by(User.id)):
        due = any(
            rules.next_period_start(getattr(user, reset_at), now, period) is not None
            for _, _, reset_at in ALLOWANCES
        )
        if due:
            refresh_and_record(session, user, now, settings)
            totals["reset"] += 1
    totals["batches"] += 1
    return totals
