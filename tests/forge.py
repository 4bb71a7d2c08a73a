"""A hostile producer: billing task messages built as Celery builds them, then changed in any
field a producer writes, and put on a queue by hand (Redis) or published with any route
(RabbitMQ)."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from kombu import Connection

# What a producer can leave out of a Redis message: a message forged without its delivery_info.
DROP = object()


@dataclass
class Forged:
    """A task message's three parts as a producer sends them (Celery's protocol 2)."""

    task_id: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    body: list[Any]  # [args, kwargs, embed]
    priority: int = 0

    def encoded_body(self) -> bytes:
        return json.dumps(self.body).encode()


def task_message(app: Celery, name: str, kwargs: dict[str, Any], **options: Any) -> Forged:
    """The message ``app.send_task(name, kwargs=kwargs, **options)`` would publish."""
    task_id = str(uuid.uuid4())
    message = app.amqp.create_task_message(task_id, name, (), kwargs, **options)
    args, kw, embed = message.body
    return Forged(task_id, dict(message.headers), dict(message.properties), [args, kw, embed])


def push_redis(
    url: str,
    queue: str,
    forged: Forged,
    delivery_info: Any = None,
    list_key: str | None = None,
) -> None:
    """LPUSH the message onto ``queue``'s list as kombu writes it, with the ``delivery_info``
    the producer chose (default: the honest one, the anonymous exchange and the queue)."""
    payload = redis_item(queue, forged, delivery_info)
    redis.Redis.from_url(url).lpush(list_key or queue, json.dumps(payload))


def redis_item(queue: str, forged: Forged, delivery_info: Any = None) -> dict[str, Any]:
    """The message as kombu writes it on ``queue``'s Redis list (see ``push_redis``)."""
    if delivery_info is None:
        delivery_info = {"exchange": "", "routing_key": queue}
    properties = {
        **forged.properties,
        "delivery_mode": 2,
        "priority": forged.priority,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    if delivery_info is not DROP:
        properties["delivery_info"] = delivery_info
    return {
        "body": base64.b64encode(forged.encoded_body()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": forged.headers,
        "properties": properties,
    }


def publish_amqp(
    url: str,
    forged: Forged,
    exchange: str,
    routing_key: str,
    headers: dict[str, Any] | None = None,
    bind_queue: str | None = None,
) -> None:
    """Publish the message to ``exchange`` with any routing key, as any AMQP client can;
    ``bind_queue`` is bound to that route first (a user allowed on a queue may bind it to any
    exchange it may read), and unbound once the message is routed."""
    with Connection(url) as conn:
        channel = conn.default_channel
        if bind_queue:
            channel.queue_bind(bind_queue, exchange, routing_key)
        channel.basic_publish(
            channel.prepare_message(
                forged.encoded_body(),
                priority=forged.priority,
                content_type="application/json",
                content_encoding="utf-8",
                headers={**forged.headers, **(headers or {})},
                properties={**forged.properties, "delivery_mode": 2},
            ),
            exchange=exchange,
            routing_key=routing_key,
        )
        if bind_queue:
            # On the same channel, after the publish: the broker routed the message first.
            channel.queue_unbind(bind_queue, exchange, routing_key)
