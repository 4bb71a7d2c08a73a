"""Allowance resets: lazily inside a charge or read, and in bulk from Celery beat.

Every reset that gives something back leaves a ledger row (entry type ``reset``, amount = what
was restored) under a key derived from the account, the allowance and the new period's start.
That key makes a reset idempotent per period: the beat firing twice, or racing a lazy reset,
can only write it once.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from billing import ledger, rules
from billing.db import transaction
from billing.settings import Settings
from billing.validation import RESERVED_KEY_PREFIX
from models import EntryType, LedgerSource, User

logger = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# (allowance, its *_used column, its *_reset_at column)
ALLOWANCES = (
    (LedgerSource.FREEMIUM, "freemium_actions_used", "freemium_reset_at"),
    (LedgerSource.SUBSCRIPTION, "subscription_ops_used", "subscription_ops_reset_at"),
)


def reset_key(source: LedgerSource, user_id: int, period_start: datetime) -> str:
    micros = (rules.as_utc(period_start) - EPOCH) // timedelta(microseconds=1)
    return f"{RESERVED_KEY_PREFIX}reset:{source}:{user_id}:{micros}"


def refresh_and_record(session: Session, user: User, now: datetime, settings: Settings) -> None:
    """Bring a locked account up to date; record each reset that restores something."""
    used_before = {source: getattr(user, used) for source, used, _ in ALLOWANCES}
    changes = rules.refresh_changes(user, now, settings)
    rules.apply(user, changes)
    for source, _used, reset_at in ALLOWANCES:
        if reset_at in changes and used_before[source] > 0:
            ledger.record(
                session,
                user,
                at=now,
                key=reset_key(source, user.id, changes[reset_at]),
                entry_type=EntryType.RESET,
                source=source,
                amount=used_before[source],
                meta={"by": "lazy"},
                key_may_exist=True,
            )


# One batch: lock up to :batch due accounts past :after (skipping any a charge holds: that
# charge resets them lazily), move each elapsed period forward by whole periods, and write a
# ledger row for each allowance that gave something back. All CTEs see one snapshot, so `due`
# still holds the counters as they were before the UPDATE.
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
    FOR UPDATE SKIP LOCKED
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
    RETURNING u.id, u.balance_credits, u.freemium_actions_used, u.subscription_ops_used,
              u.freemium_reset_at, u.subscription_ops_reset_at, d.f_used, d.s_used, d.f_k, d.s_k
), restored AS (
    SELECT id, 'freemium'::ledger_source_enum AS source, f_used AS amount,
           freemium_reset_at AS period_start,
           balance_credits, subscription_ops_used, freemium_actions_used
    FROM reset WHERE f_k >= 1 AND f_used > 0
    UNION ALL
    SELECT id, 'subscription'::ledger_source_enum, s_used, subscription_ops_reset_at,
           balance_credits, subscription_ops_used, freemium_actions_used
    FROM reset WHERE s_k >= 1 AND s_used > 0
), recorded AS (
    INSERT INTO credits_ledger (
        user_id, entry_type, source, amount, idempotency_key, balance_credits_after,
        subscription_ops_used_after, freemium_actions_used_after, meta)
    SELECT r.id, 'reset', r.source, r.amount,
           :prefix || r.source::text || ':' || r.id || ':'
               || (extract(epoch FROM r.period_start) * 1000000)::bigint,
           r.balance_credits, r.subscription_ops_used, r.freemium_actions_used,
           '{"by": "beat"}'::jsonb
    FROM restored AS r
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM reset) AS reset,
       (SELECT count(*) FROM recorded) AS recorded,
       (SELECT count(*) FROM due) AS locked,
       (SELECT max(id) FROM due) AS last_id
"""
)


def reset_due_limits(
    factory: sessionmaker[Session], settings: Settings, batch_size: int = 2000
) -> dict[str, Any]:
    """Reset every account whose allowance period has elapsed, batch by batch.

    Each batch is its own short transaction, so no account's row stays locked for longer
    than one batch takes; it takes a session factory rather than a session for that reason.
    """
    totals = {"reset": 0, "recorded": 0, "batches": 0, "slowest_batch_ms": 0.0}
    after = 0
    while True:
        started = time.perf_counter()
        with transaction(factory) as session:
            if session.get_bind().dialect.name != "postgresql":
                return _reset_embedded(session, settings, totals)
            row = session.execute(
                _RESET_BATCH_SQL,
                {
                    "period": settings.reset_period_days * 86400,
                    "after": after,
                    "batch": batch_size,
                    "prefix": f"{RESERVED_KEY_PREFIX}reset:",
                },
            ).one()
        # The batch's row locks are held from its statement until this commit.
        elapsed_ms = (time.perf_counter() - started) * 1000
        totals["slowest_batch_ms"] = round(max(totals["slowest_batch_ms"], elapsed_ms), 1)
        totals["batches"] += 1
        totals["reset"] += row.reset
        totals["recorded"] += row.recorded
        if row.locked < batch_size:
            return totals
        after = row.last_id


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
