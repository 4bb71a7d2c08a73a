"""What an on-call engineer asks of the database first: open holds, unpublished events, the
last run of each periodic job and what the last full audit found (``billing status`` and the
workers' ``/metrics``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from billing.core.rules import as_utc
from billing.jobs import runs
from billing.storage.sqlalchemy_store import db_now
from models import EntryType, Event, Hold, HoldStatus, LedgerEntry

HOLDS = Hold.__table__
EVENTS = Event.__table__
LEDGER = LedgerEntry.__table__


def database_state(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        now = as_utc(db_now(conn))
        holds_open = conn.execute(
            select(func.count()).select_from(HOLDS).where(HOLDS.c.status == HoldStatus.HELD)
        ).scalar_one()
        pending, oldest = conn.execute(
            select(func.count(), func.min(EVENTS.c.occurred_at)).where(
                EVENTS.c.published_at.is_(None)
            )
        ).one()
        # Only ever grows (ledger rows are never deleted): the metrics' counters. Read from
        # the ledger's partial index on these two entry types.
        closed = dict(
            conn.execute(
                select(LEDGER.c.entry_type, func.sum(LEDGER.c.amount))
                .where(LEDGER.c.entry_type.in_([EntryType.EXPIRY, EntryType.VOID]))
                .group_by(LEDGER.c.entry_type)
            ).all()
        )
    last = runs.last_runs(engine)
    audit = last.get(runs.AUDIT)
    age = (now - as_utc(oldest)).total_seconds() if oldest is not None else 0.0
    return {
        "holds_open": holds_open,
        "events_pending": pending,
        "events_oldest_pending_age_seconds": max(age, 0.0),
        "credits_expired": int(closed.get(EntryType.EXPIRY) or 0),
        "credits_voided": int(closed.get(EntryType.VOID) or 0),
        "jobs": {job: last[job] for job in runs.JOBS if job in last},
        "audit_mismatches": audit["result"].get("mismatch_count") if audit else None,
        "now": now,
    }
