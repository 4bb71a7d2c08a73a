"""The billing queues on RabbitMQ: quorum queues, publisher confirms, a delivery limit and a
dead-letter queue.

Every producer and every worker must declare a queue with the same arguments, or RabbitMQ
refuses the second declaration (PRECONDITION_FAILED); this module is where they are written
down, for the workers (``celeryconfig``), ``billing_client`` and any producer with an app of
its own (``configure(app.conf, ...)``).

- Quorum queues keep a confirmed message as long as a majority of the cluster's nodes do, and
  put back every delivery a consumer did not acknowledge when its channel closes (a worker
  SIGKILLed, a connection lost), at once and on every node.
- Publisher confirms: a publish returns once the broker has the message; one the broker
  refuses raises (``amqp.exceptions.MessageNacked``) after Celery's publish retries.
- A message that kills its worker again and again (each death puts it back with its delivery
  count raised) is moved to the dead-letter queue after ``delivery_limit`` redeliveries,
  instead of going round for ever; an operator looks at it there (docs/operations.md: Runbook).
- The exchanges are topic exchanges: Celery's native delayed delivery (a countdown or an ETA,
  as the retries use) routes through ``celery_delayed_*`` topic exchanges and back to the
  queue by a ``#.<queue>`` binding, which a direct exchange cannot take. A delayed message
  waits in the broker, not in a worker's prefetch.
"""

from __future__ import annotations

import re
from typing import Any

from kombu import Exchange, Queue

DEAD_LETTER_QUEUE = "billing.dead"
DEFAULT_DELIVERY_LIMIT = 10

# A message delayed by Celery's native delayed delivery carries its countdown in binary in
# front of its routing key ("0.1.1. ... .1.billing"): 28 digits (kombu's
# native_delayed_delivery.MAX_NUMBER_OF_BITS_TO_USE).
_DELAY_PREFIX = re.compile(r"^(?:[01]\.){28}")


def is_amqp(url: str) -> bool:
    return url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")


def queue_of(routing_key: str) -> str:
    """The queue a message was routed to, with a delayed delivery's countdown taken off."""
    return _DELAY_PREFIX.sub("", routing_key, count=1)


def billing_queue(name: str, delivery_limit: int = DEFAULT_DELIVERY_LIMIT) -> Queue:
    """A queue of billing tasks: quorum, topic exchange of its own name, dead-lettered."""
    return Queue(
        name,
        Exchange(name, type="topic", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": DEAD_LETTER_QUEUE,
            # At-least-once dead-lettering: the message leaves the queue only once the
            # dead-letter queue has confirmed it (it needs reject-publish overflow).
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


def dead_letter_queue() -> Queue:
    """Where a message that exceeded its delivery limit goes; nothing consumes it."""
    return Queue(
        DEAD_LETTER_QUEUE,
        Exchange(DEAD_LETTER_QUEUE, type="fanout", durable=True),
        routing_key=DEAD_LETTER_QUEUE,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def task_queues(
    queue: str, admin_queue: str, delivery_limit: int = DEFAULT_DELIVERY_LIMIT
) -> list[Queue]:
    """The public and the admin queue (once, when a test gives both one name)."""
    return [billing_queue(name, delivery_limit) for name in dict.fromkeys([queue, admin_queue])]


# Any other queue an app names (the events queue) is declared a quorum queue too.
MISSING_QUEUE_TYPE = "quorum"
# Every publish waits for the broker's confirm; a refused one raises.
TRANSPORT_OPTIONS = {"confirm_publish": True}


def configure(
    conf: Any, queue: str, admin_queue: str, delivery_limit: int = DEFAULT_DELIVERY_LIMIT
) -> None:
    """Give a producer's own Celery app what ``celeryconfig`` gives the workers on RabbitMQ."""
    conf.task_queues = task_queues(queue, admin_queue, delivery_limit)
    conf.task_create_missing_queue_type = MISSING_QUEUE_TYPE
    conf.broker_transport_options = dict(TRANSPORT_OPTIONS)
