"""The relay: publish the outbox's events in each account's order, then mark them; remove the
published ones after the retention; record the clock's events (subscriptions ending).

Publishing happens in the transaction that locks the events (``FOR UPDATE``, in account then
id order) and marks them published: a relay that dies after publishing and before its commit
has marked nothing, so the events go out again, with the same ``event_id``. Delivery is at
least once; consumers de-duplicate by ``event_id``.

Order: an account's events get rising ids (they are written under its row lock). Every
relay, the one right after a movement's commit and the beat's sweep alike, locks an account's
unpublished events in id order and waits for one that another relay holds, then skips it as
published: so one account's events reach the queue in the order they happened.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, exists, func, or_, select

from billing.core import events, rules
from billing.core.records import ACCOUNT_COLUMNS, AccountRow, Writes
from billing.core.settings import Settings
from billing.movements.store import Store
from billing.storage.sqlalchemy_store import SqlStore, db_now
from models import Event, EventType, User

EVENTS = Event.__table__
USERS = User.__table__
BATCH = 500

Message = dict[str, Any]
Publish = Callable[[Sequence[Message]], None]


def message(row: Any) -> Message:
    """An event as the product's task receives it: its keyword arguments."""
    return {
        "event_id": str(row.event_id),
        "type": str(row.type),
        "user_id": row.user_id,
        "occurred_at": events.stamp(row.occurred_at),
        # The outbox's id: rises with each event of an account, in the order they happened.
        "data": {**row.data, "sequence": row.id},
    }


def publish_pending(
    store: Store,
    publish: Publish,
    *,
    user_ids: Collection[int] | None = None,
    batch: int = BATCH,
) -> dict[str, int]:
    """Publish every unpublished event (of ``user_ids`` only, if given), ``batch`` at a time,
    each batch in one transaction of ``store``: lock, publish, mark, commit."""
    totals = {"published": 0, "batches": 0}
    try:
        while True:
            rows = store.lock_unpublished(user_ids, batch)
            if rows:
                publish([message(row) for row in rows])
                store.mark_published([row.id for row in rows])
                totals["published"] += len(rows)
                totals["batches"] += 1
            else:
                store.rollback()
            if len(rows) < batch:
                return totals
    finally:
        store.rollback()  # nothing after a commit; a failed publish leaves the rows unmarked


def prune(engine: Engine, settings: Settings, *, batch: int = 1000) -> dict[str, int]:
    """Remove events published more than the retention ago, ``batch`` per transaction; a
    period's ``exhausted`` event stays until its period ends (``kept_until``)."""
    totals = {"removed": 0, "batches": 0}
    retention = timedelta(days=settings.events_retention_days)
    with engine.connect() as conn:
        while True:
            with conn.begin():
                now = db_now(conn)
                old = (
                    select(EVENTS.c.id)
                    .where(
                        EVENTS.c.published_at.is_not(None),
                        EVENTS.c.published_at < now - retention,
                        or_(EVENTS.c.kept_until.is_(None), EVENTS.c.kept_until < now),
                    )
                    .order_by(EVENTS.c.published_at)
                    .limit(batch)
                )
                ids = list(conn.execute(old).scalars())
                if ids:
                    conn.execute(delete(EVENTS).where(EVENTS.c.id.in_(ids)))
            if ids:
                totals["removed"] += len(ids)
                totals["batches"] += 1
            if len(ids) < batch:
                return totals


def announce_subscriptions(
    engine: Engine, settings: Settings, *, batch: int = BATCH
) -> dict[str, int]:
    """Record ``subscription.expiring`` for subscriptions that end within the notice and
    ``subscription.expired`` for those that ended, once per subscription end.

    Set-based and safe to run twice or late: each batch locks the accounts that lack the
    event (in id order, as a movement locks one), reads them under the lock and records the
    event with the movement's own insert; the event's id is derived from the account and the
    end, so a second run records nothing. An ended subscription is looked for as far back as
    the retention: its event is kept at least that long, so it is never announced twice.
    """
    totals = {"expiring": 0, "expired": 0}
    notice = timedelta(days=settings.expiry_notice_days)
    lookback = timedelta(days=settings.events_retention_days)
    with engine.connect() as conn:
        store = SqlStore(conn)
        for event_type, window in (
            (EventType.SUBSCRIPTION_EXPIRING, lambda now: (now, now + notice)),
            (EventType.SUBSCRIPTION_EXPIRED, lambda now: (now - lookback, now)),
        ):
            after = 0
            while True:
                with conn.begin():
                    now = rules.as_utc(db_now(conn))
                    start, end = window(now)
                    locked, accounts = _lock_unannounced(conn, event_type, start, end, after, batch)
                    for account in accounts:
                        announced = events.subscription_notice(account, now, settings, event_type)
                        store.write_rows(Writes(account.id, None, now, events=[announced]))
                totals[str(event_type).rsplit(".", 1)[1]] += len(accounts)
                if len(locked) < batch:
                    break
                after = locked[-1]
    return totals


def _lock_unannounced(
    conn: Connection,
    event_type: EventType,
    start: datetime,
    end: datetime,
    after: int,
    batch: int,
) -> tuple[list[int], list[AccountRow]]:
    """Lock up to ``batch`` accounts past ``after`` whose subscription ends in the window
    and has no ``event_type`` yet; their ids, and those that still qualify read under the
    lock."""
    announced = exists().where(
        EVENTS.c.user_id == USERS.c.id,
        EVENTS.c.type == event_type,
        EVENTS.c.subject_at == USERS.c.subscription_end,
    )
    rows = conn.execute(
        select(*(USERS.c[name] for name in ACCOUNT_COLUMNS))
        .where(
            USERS.c.id > after,
            USERS.c.subscription_type.is_not(None),
            USERS.c.subscription_end > start,
            USERS.c.subscription_end <= end,
            ~announced,
        )
        .order_by(USERS.c.id)
        .limit(batch)
        .with_for_update(of=USERS)
    ).all()
    # Read under the lock: an end moved meanwhile (a renewal) is outside the window now.
    found = [AccountRow(*row) for row in rows]
    return [account.id for account in found], [
        account
        for account in found
        if account.subscription_end is not None
        and rules.as_utc(start) < rules.as_utc(account.subscription_end) <= rules.as_utc(end)
    ]


def listing(engine: Engine, user_id: int | None, *, pending: bool, limit: int) -> dict[str, Any]:
    """The newest events (of one account; only the unpublished ones), and how far the relay
    is behind: what operators look at (``billing events``)."""
    query = select(EVENTS).order_by(EVENTS.c.id.desc()).limit(limit)
    backlog = select(func.count(), func.min(EVENTS.c.occurred_at)).where(
        EVENTS.c.published_at.is_(None)
    )
    if user_id is not None:
        query = query.where(EVENTS.c.user_id == user_id)
        backlog = backlog.where(EVENTS.c.user_id == user_id)
    if pending:
        query = query.where(EVENTS.c.published_at.is_(None))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        unpublished, oldest = conn.execute(backlog).one()
    return {
        "ok": True,
        "code": 200,
        "events": [
            {
                **message(row),
                "published_at": events.stamp(row.published_at) if row.published_at else None,
            }
            for row in rows
        ],
        "unpublished": unpublished,
        "oldest_unpublished": events.stamp(oldest) if oldest is not None else None,
    }
