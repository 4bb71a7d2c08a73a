"""The relay's tasks: the sweep that publishes what a crash left, subscription notices and
retention. The publishing right after a movement's commit runs in the movement's own task
(``tasks.base``)."""

from __future__ import annotations

from typing import Any

from billing import jobs, outbox, results
from tasks import names
from tasks.base import BillingTask
from tasks.lifecycle import SWEEP_TIME_LIMIT, NoArgs
from worker import events
from worker.app import app


@app.task(bind=True, base=BillingTask, name=names.PUBLISH_EVENTS, time_limit=SWEEP_TIME_LIMIT)
def publish_events(self: BillingTask, *args: Any, **unknown: Any) -> results.Result:
    # A broker error fails this run (and is retried); the events stay in the outbox.
    return self.execute_batched(
        NoArgs,
        args,
        unknown,
        lambda _factory, _parsed, _settings: events.publish_all(),
        job=jobs.PUBLISH_EVENTS,
    )


@app.task(
    bind=True, base=BillingTask, name=names.ANNOUNCE_SUBSCRIPTIONS, time_limit=SWEEP_TIME_LIMIT
)
def announce_subscriptions(self: BillingTask, *args: Any, **unknown: Any) -> results.Result:
    def announce(factory: Any, _parsed: Any, settings: Any) -> dict[str, Any]:
        totals: dict[str, Any] = outbox.announce_subscriptions(factory.kw["bind"], settings)
        if totals["expiring"] or totals["expired"]:
            totals["published"] = events.publish_all()["published"]
        return totals

    return self.execute_batched(NoArgs, args, unknown, announce, job=jobs.ANNOUNCE_SUBSCRIPTIONS)


@app.task(bind=True, base=BillingTask, name=names.PRUNE_EVENTS, time_limit=SWEEP_TIME_LIMIT)
def prune_events(self: BillingTask, *args: Any, **unknown: Any) -> results.Result:
    return self.execute_batched(
        NoArgs,
        args,
        unknown,
        lambda factory, _parsed, settings: outbox.prune(factory.kw["bind"], settings),
        job=jobs.PRUNE_EVENTS,
    )
