"""The relay's tasks: the sweep that publishes what a crash left, subscription notices and
retention. The publishing right after a movement's commit runs in the movement's own task
(``tasks.base``)."""

from __future__ import annotations

from typing import Any

from billing.core import results
from billing.core.settings import Settings
from billing.jobs import outbox, runs
from tasks import names
from tasks.base import SWEEP_TIME_LIMIT, BillingTask
from worker import events
from worker.app import app
from worker.db import get_engine


def publish_pending(_settings: Settings) -> dict[str, Any]:
    # A broker error fails this run (and is retried); the events stay in the outbox.
    return events.publish_all()


def announce_due_subscriptions(settings: Settings) -> dict[str, Any]:
    """Record the subscriptions that expire soon or have expired, then publish them."""
    totals: dict[str, Any] = outbox.announce_subscriptions(get_engine(), settings)
    if totals["expiring"] or totals["expired"]:
        totals["published"] = events.publish_all()["published"]
    return totals


def prune_published(settings: Settings) -> dict[str, Any]:
    return outbox.prune(get_engine(), settings)


@app.task(bind=True, base=BillingTask, name=names.PUBLISH_EVENTS, time_limit=SWEEP_TIME_LIMIT)
def publish_events(self: BillingTask, *args: Any, **unknown: Any) -> results.Result:
    return self.execute_sweep(args, unknown, publish_pending, runs.PUBLISH_EVENTS)


@app.task(
    bind=True, base=BillingTask, name=names.ANNOUNCE_SUBSCRIPTIONS, time_limit=SWEEP_TIME_LIMIT
)
def announce_subscriptions(self: BillingTask, *args: Any, **unknown: Any) -> results.Result:
    return self.execute_sweep(
        args, unknown, announce_due_subscriptions, runs.ANNOUNCE_SUBSCRIPTIONS
    )


@app.task(bind=True, base=BillingTask, name=names.PRUNE_EVENTS, time_limit=SWEEP_TIME_LIMIT)
def prune_events(self: BillingTask, *args: Any, **unknown: Any) -> results.Result:
    return self.execute_sweep(args, unknown, prune_published, runs.PRUNE_EVENTS)
