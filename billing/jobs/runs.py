"""The last successful run of each periodic job: what ``billing status`` and the metrics show.

A job that runs on any worker records its success here, in the database every worker reads,
so the freshness of the beat's jobs does not depend on which worker ran them or which one
Prometheus scrapes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite

from billing.core.rules import as_utc
from models import JobRun

RUNS = JobRun.__table__

# The jobs whose runs are recorded; their names are the metrics' `job` label values.
RESET_DUE_LIMITS = "reset_due_limits"
EXPIRE_HOLDS = "expire_holds"
EXPIRE_GRANTS = "expire_grants"
AUDIT = "audit"
PUBLISH_EVENTS = "publish_events"
ANNOUNCE_SUBSCRIPTIONS = "announce_subscriptions"
PRUNE_EVENTS = "prune_events"
SYNC_TIER_LIMITS = "sync_tier_limits"
JOBS = (
    RESET_DUE_LIMITS,
    EXPIRE_HOLDS,
    EXPIRE_GRANTS,
    AUDIT,
    PUBLISH_EVENTS,
    ANNOUNCE_SUBSCRIPTIONS,
    PRUNE_EVENTS,
    SYNC_TIER_LIMITS,
)


def record(engine: Engine, job: str, result: dict[str, Any]) -> None:
    """Remember that ``job`` succeeded now with ``result`` (its own short transaction)."""
    with engine.begin() as conn:
        postgres = conn.dialect.name == "postgresql"
        insert = (postgresql if postgres else sqlite).insert(RUNS)
        # The database's clock where there is one server: one clock for every worker.
        now = func.now() if postgres else datetime.now(UTC)
        conn.execute(
            insert.values(job=job, succeeded_at=now, result=result).on_conflict_do_update(
                index_elements=[RUNS.c.job],
                set_={
                    "succeeded_at": insert.excluded.succeeded_at,
                    "result": insert.excluded.result,
                },
            )
        )


def last_runs(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(RUNS)).all()
    return {
        row.job: {"succeeded_at": as_utc(row.succeeded_at), "result": row.result} for row in rows
    }
