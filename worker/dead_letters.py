"""The dead-letter queue, for an operator: what is in it, and (RabbitMQ) moving it back.

A message lands in ``billing.dead`` when it was redelivered more than the delivery limit,
each time because the worker process running it died (billing_client.rabbitmq). Reading
takes messages without acknowledging them and closes the channel, which puts them all back;
moving one back publishes it again, confirmed, to the queue it died on (its ``x-death``
record says which), and only then acknowledges the dead copy.

On Redis ``billing.dead`` is a list of the items a worker popped that were not task
messages at all (worker.malformed): listed, never moved back, since none can run.
"""

from __future__ import annotations

import json
from typing import Any

from billing_client import rabbitmq
from billing_client.masking import masked_kwargs


def _kwargs(message: Any) -> str:
    """The task's keyword arguments with ``meta`` hidden, whatever the producer sent."""
    try:
        body = message.decode()
        return masked_kwargs(body[1])
    except Exception as exc:  # not a Celery task message: say so, do not fail the listing
        return f"<undecodable: {type(exc).__name__}>"


def _describe(message: Any) -> dict[str, Any]:
    headers = message.headers or {}
    deaths = headers.get("x-death") or [{}]
    first = deaths[0]
    return {
        "task": headers.get("task"),
        "task_id": headers.get("id"),
        "kwargs": _kwargs(message),
        "queue": first.get("queue"),
        "reason": first.get("reason"),
        "died_at": first["time"].isoformat() if first.get("time") else None,
    }


def _channel(conn: Any) -> Any:
    channel = conn.channel()
    rabbitmq.dead_letter_queue()(channel).declare()
    return channel


def peek(app: Any, limit: int = 20) -> list[dict[str, Any]]:
    """The first ``limit`` dead letters, left where they are."""
    with app.connection_for_read() as conn:
        channel = _channel(conn)
        queue = rabbitmq.dead_letter_queue()(channel)
        seen = []
        try:
            while len(seen) < limit and (message := queue.get(no_ack=False)) is not None:
                seen.append(_describe(message))
        finally:
            channel.close()  # the unacknowledged messages go back to the queue
    return seen


def requeue(app: Any) -> list[dict[str, Any]]:
    """Publish every dead letter again to the queue it died on, then drop the dead copy.

    Through that queue's exchange (its own name), without declaring it: it exists, with
    whatever arguments it was declared with; if it was deleted since, the publish fails and
    the message stays where it is."""
    moved = []
    with app.connection_for_write() as conn:
        channel = _channel(conn)
        queue = rabbitmq.dead_letter_queue()(channel)
        producer = conn.Producer(channel=channel)
        try:
            while (message := queue.get(no_ack=False)) is not None:
                described = _describe(message)
                headers = {k: v for k, v in (message.headers or {}).items() if k != "x-death"}
                producer.publish(
                    message.body,
                    exchange=described["queue"],
                    routing_key=described["queue"],
                    headers=headers,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    correlation_id=message.properties.get("correlation_id"),
                    reply_to=message.properties.get("reply_to"),
                    delivery_mode=2,
                )
                message.ack()
                moved.append(described)
        finally:
            channel.close()
    return moved


def peek_redis(app: Any, limit: int = 20) -> list[dict[str, Any]]:
    """Redis: the ``limit`` oldest items set aside, oldest first, left where they are."""
    import redis

    client = redis.Redis.from_url(app.conf.broker_url, socket_timeout=5)
    try:
        # Set aside with LPUSH: the oldest are on the right.
        letters = client.lrange(rabbitmq.DEAD_LETTER_QUEUE, -limit, -1) if limit > 0 else []
    finally:
        client.close()
    return [_describe_set_aside(letter) for letter in reversed(letters)]


def _loaded(text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return None


def _describe_set_aside(raw: bytes) -> dict[str, Any]:
    letter = _loaded(raw)
    letter = letter if isinstance(letter, dict) else {"reason": "not written by a worker"}
    item = _loaded(letter.get("item"))
    headers = item.get("headers") if isinstance(item, dict) else None
    headers = headers if isinstance(headers, dict) else {}
    return {
        "task": headers.get("task"),
        "task_id": headers.get("id"),
        "kwargs": "<not run: malformed>",
        "queue": letter.get("queue"),
        "reason": letter.get("reason"),
        "died_at": letter.get("died_at"),
    }
