"""The queue a task message was consumed from, as the worker knows it: every task message's
``delivery_info`` becomes the anonymous exchange and that queue, whatever its producer wrote.

Who may run a privileged task is decided from it (``tasks.base``), so it must not be anything
a producer writes. On Redis and the embedded SQL broker ``delivery_info`` is part of the
message the producer pushes; on RabbitMQ the routing key is the publisher's, and a user
allowed on the public queue alone may bind that queue with the admin queue's key. So:

- on kombu's virtual transports, the queue the transport popped the message from, written
  before the channel records the message as unacknowledged: a restore (visibility timeout,
  warm shutdown) then puts it back on that queue, not on the one its producer named;
- on RabbitMQ, the queue behind the consumer tag the broker delivered it to.

With the anonymous exchange, Celery's retry sends a task back to the queue it came from.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from kombu.transport import virtual

_INSTALLED = "_billing_routes"


class ConsumedQueue(bootsteps.StartStopStep):
    """Started on every (re)connection, after the task consumer."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        transport = c.connection.transport
        if isinstance(transport, virtual.Transport):
            _rewrite_deliveries(c, transport)
        elif not getattr(c, _INSTALLED, False):
            # The loop builds a new message handler on every (re)connection: wrap the
            # factory once.
            c.create_task_handler = _by_consumer_tag(c, c.create_task_handler)
            setattr(c, _INSTALLED, True)


def _task_queues(c: Any) -> set[str]:
    consumer = c.task_consumer
    return {queue.name for queue in consumer.queues} if consumer is not None else set()


def _rewrite_deliveries(c: Any, transport: Any) -> None:
    """A virtual transport hands every message it popped to ``_deliver(payload, queue)``."""
    if getattr(transport, _INSTALLED, False):
        return
    deliver = transport._deliver

    def _deliver(payload: Any, queue: str) -> Any:
        properties = payload.get("properties") if isinstance(payload, dict) else None
        # The task queues only: the broadcast mailbox and gossip read their own routes.
        if isinstance(properties, dict) and queue in _task_queues(c):
            info = properties.get("delivery_info")
            redelivered = isinstance(info, dict) and info.get("redelivered") is True
            properties["delivery_info"] = {
                "exchange": "",
                "routing_key": queue,
                "redelivered": redelivered,
            }
            # kombu files an unacknowledged message under its tag: a producer reusing another
            # message's tag would overwrite that record, and a crash would then lose it.
            properties["delivery_tag"] = str(uuid.uuid4())
        return deliver(payload, queue)

    transport._deliver = _deliver
    setattr(transport, _INSTALLED, True)


def _by_consumer_tag(c: Any, create_task_handler: Callable[..., Any]) -> Callable[..., Any]:
    def create(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        on_task_received = create_task_handler(*args, **kwargs)

        def on_message(message: Any) -> Any:
            # An unknown tag leaves no queue: a privileged task is then refused.
            tags = getattr(c.task_consumer, "_active_tags", None) or {}
            tag = message.delivery_info.get("consumer_tag")
            queue = next((name for name, known in tags.items() if known == tag), None)
            message.delivery_info.update(exchange="", routing_key=queue)
            return on_task_received(message)

        return on_message

    return create


# Celery's canvas tasks, registered on every app, run or send the signatures their arguments
# carry: taken from the public queue, ``celery.chord`` or ``celery.chord_unlock`` would have
# this worker send a privileged task to the admin queue, and ``celery.map`` would call one
# directly (``called_directly``, no queue to judge). No billing producer sends them; the
# results backend's own cleanup is kept (beat sends it for the embedded default).
KEPT_BUILTINS = frozenset({"celery.backend_cleanup"})


def drop_builtins(sender: Any, **_: Any) -> None:
    """Unregister Celery's built-in tasks but ``KEPT_BUILTINS`` from the app ``sender``: a
    message naming one is then refused as an unknown task, on every queue."""
    tasks = sender.tasks
    for name in [n for n in tasks if n.startswith("celery.") and n not in KEPT_BUILTINS]:
        tasks.unregister(name)


def install(app: Any) -> None:
    app.steps["consumer"].add(ConsumedQueue)
    app.on_after_finalize.connect(drop_builtins, weak=False)
