"""What the broker says: queue lengths, the oldest waiting message's age, the workers up."""

from __future__ import annotations

import json
import time
from typing import Any

from billing.core.settings import get_settings
from billing_client import rabbitmq
from billing_client.names import SENT_AT_HEADER


def billing_queues() -> list[str]:
    """The queues an operator watches; on RabbitMQ and Redis, the dead-letter queue too."""
    settings = get_settings()
    queues = [settings.queue, settings.admin_queue, settings.events_queue]
    url = settings.effective_broker_url()
    if rabbitmq.is_amqp(url) or url.startswith(("redis://", "rediss://")):
        queues.append(rabbitmq.DEAD_LETTER_QUEUE)
    return queues


def queue_lengths(app: Any, queues: list[str] | None = None) -> dict[str, int]:
    """Messages waiting on each queue (a queue never declared has none)."""
    lengths: dict[str, int] = {}
    with app.connection_for_read() as conn:
        channel = conn.channel()
        try:
            for queue in queues or billing_queues():
                try:
                    lengths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except conn.channel_errors:
                    lengths[queue] = 0
                    channel.close()  # an AMQP channel is closed by the refusal: a new one
                    channel = conn.channel()
        finally:
            channel.close()
    return lengths


def oldest_waiting_seconds(app: Any, queue: str) -> float | None:
    """How long the next message of ``queue`` has waited, on Redis (the message's
    ``billing_sent_at`` header); None when the queue is empty, the message carries no such
    header, or the broker is not Redis."""
    url = app.conf.broker_url
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        raw = client.lindex(queue, -1)  # kombu pushes on the left and pops on the right
    finally:
        client.close()
    try:
        item = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):  # anyone allowed on the list can push anything
        return None
    headers = item.get("headers") if isinstance(item, dict) else None
    sent_at = headers.get(SENT_AT_HEADER) if isinstance(headers, dict) else None
    if not isinstance(sent_at, int | float):
        return None
    return max(time.time() - sent_at, 0.0)


def workers_up(app: Any, timeout: float = 1.0) -> list[str] | None:
    """The workers that answer and consume a billing queue (not, say, the product's event
    consumer on the same broker); None where the broker has no broadcast (the embedded
    default's SQL broker)."""
    if not app.conf.broker_url.startswith(("redis", "amqp", "pyamqp")):
        return None
    settings = get_settings()
    ours = {settings.queue, settings.admin_queue}
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return sorted(
        name
        for name, queues in replies.items()
        if any(queue.get("name") in ours for queue in queues or ())
    )
