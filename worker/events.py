"""The relay's Celery side: events go out as task messages the product's own app receives.

Each event is a message for the task ``BILLING_EVENTS_TASK`` on ``BILLING_EVENTS_QUEUE``, its
fields as keyword arguments and its ``event_id`` as the message's task id, on the broker the
billing tasks use. A product defines one task with that name; it needs nothing of ours.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime

from billing.core.settings import get_settings
from billing.jobs import outbox
from billing.movements.store import Store
from billing.storage.factory import connect
from worker.app import app
from worker.db import get_engine
from worker.logs import json_lines

logger = json_lines("billing.events")


def publish(messages: Sequence[outbox.Message]) -> None:
    """Send the messages in order on one broker connection; raises if the broker refuses.

    Built with the app's own message protocol (``app.amqp``), as ``send_task`` builds it,
    less what an event needs none of: a ``task-sent`` event for Flower and a pending result
    (the product's task returns nothing to us). That halves the broker writes per event."""
    settings = get_settings()
    amqp = app.amqp
    name = settings.events_task
    options = amqp.router.route({"queue": settings.events_queue}, name, (), {}, None)
    with app.producer_or_acquire() as producer:
        for event in messages:
            message = amqp.create_task_message(
                event["event_id"],
                name,
                (),
                event,
                create_sent_event=False,
                ignore_result=True,
            )
            amqp.send_task_message(producer, name, message, **options)


def publish_after_commit(store: Store, user_ids: Collection[int]) -> int:
    """Publish the accounts' unpublished events right after the movement's commit, on the
    movement's own connection; the count published."""
    return outbox.publish_pending(store, publish, user_ids=user_ids)["published"]


def publish_all() -> dict[str, int]:
    """The relay's sweep: every unpublished event, on a connection of its own."""
    with connect(get_engine()) as store:
        return outbox.publish_pending(store, publish)


def unpublished(user_ids: Collection[int], exc: BaseException) -> None:
    """A publication that failed (the broker away): the movement committed and its events are
    safe in the outbox; the beat's relay sweep publishes them. One warning line."""
    line = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": "warning",
        "event": "billing.events.unpublished",
        "accounts": sorted(user_ids),
        "error": f"{type(exc).__name__}: {exc}"[:500],
    }
    logger.warning(json.dumps(line))
