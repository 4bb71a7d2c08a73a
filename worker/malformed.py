"""Redis only: an item on a billing queue that is not a kombu message is set aside on the
dead-letter list ``billing.dead``, with one warning, instead of stopping the worker.

Anyone allowed to push onto a queue's list can push anything. kombu decodes what BRPOP
popped and builds its message before Celery sees it: text that is not JSON, JSON that is not
a message object, a message without a body or a content type each stop the worker
("Unrecoverable error") or make it reconnect, and the item, already popped, is gone. All of
it happens inside the channel's BRPOP reader, whose own locals still hold the raw item: the
reader is wrapped and the channel builds a checked message, on every (re)connection's
channel. The honest path pays one wrapped call and three checks of the message kombu built.

Each dead letter is a JSON object: the queue it was popped from, why it was set aside, when,
and the item as it was pushed (as text, undecodable bytes escaped). It can never run, so
nothing moves it back; ``billing dead-letters`` lists it and ``billing status`` counts it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from queue import Empty
from types import TracebackType
from typing import Any

from celery import bootsteps
from kombu.transport import redis as kombu_redis
from kombu.utils import json as kombu_json
from redis.exceptions import ResponseError

from billing_client.rabbitmq import DEAD_LETTER_QUEUE

logger = logging.getLogger(__name__)

_INSTALLED = "_billing_malformed"
_READ = kombu_redis.Channel._brpop_read.__code__
_LOADS = kombu_json.loads.__code__


class Malformed(Exception):
    """Raised where kombu builds a message from a popped item that is not one."""


class SetAsideMalformed(bootsteps.StartStopStep):
    """Started on every (re)connection, after the task consumer (a new one, new channel)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        consumer = c.task_consumer
        channel = consumer.channel if consumer is not None else None
        if isinstance(channel, kombu_redis.Channel) and not getattr(channel, _INSTALLED, False):
            _guard(channel)
            setattr(channel, _INSTALLED, True)


class _Checked(kombu_redis.Channel.Message):  # type: ignore[misc]
    """kombu's message, raising ``Malformed`` where the item it is built from is not one."""

    def __init__(self, payload: Any, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(payload, *args, **kwargs)
        except Exception as exc:
            raise Malformed(f"not a kombu message ({type(exc).__name__}: {exc})") from None
        # (Its delivery tag is the worker's own, written before it is built: worker.routes.)
        # Celery's task handler decodes a missing or empty body, or one of no content type,
        # outside its own guard.
        if not self.body:
            raise Malformed("not a kombu message (no body)")
        if not isinstance(self.content_type, str):
            raise Malformed("not a kombu message (no content-type)")


def _guard(channel: Any) -> None:
    read = channel.handlers["BRPOP"]

    def brpop_read(**options: Any) -> Any:
        try:
            return read(**options)
        except Malformed as exc:
            popped = _popped(exc.__traceback__)
            if popped is None:
                raise
            _set_aside(channel, *popped, str(exc))
        except (ValueError, RecursionError) as exc:
            popped = _popped(exc.__traceback__, raised_by=_LOADS)
            if popped is None:
                raise
            _set_aside(channel, *popped, f"not JSON ({type(exc).__name__})")
        # Nothing was delivered: the event loop goes on to the next BRPOP.
        raise Empty()

    channel.Message = _Checked
    channel.handlers["BRPOP"] = brpop_read


def _popped(tb: TracebackType | None, raised_by: Any = None) -> tuple[str, bytes] | None:
    """The queue and raw item of the BRPOP reader the error came through, if it came through
    one (and, given ``raised_by``, straight out of that call in the reader).

    Read from the reader's frame, which the traceback keeps: the raw item is in no
    attribute, and copying kombu's reader to keep it would fork kombu."""
    while tb is not None and tb.tb_frame.f_code is not _READ:
        tb = tb.tb_next
    if tb is None:
        return None
    if raised_by is not None:
        called = tb.tb_next
        if called is None or called.tb_frame.f_code is not raised_by:
            return None
    local = tb.tb_frame.f_locals
    queue, item = local.get("dest"), local.get("item")
    if not isinstance(queue, str) or not isinstance(item, bytes):
        return None
    return queue, item


def _set_aside(channel: Any, queue: str, item: bytes, reason: str) -> None:
    letter = {
        "queue": queue,
        "reason": reason,
        "died_at": datetime.now(UTC).isoformat(),
        "item": item.decode("utf-8", "backslashreplace"),
    }
    # Not the item in the log: whatever a producer pushed may carry payment references.
    try:
        with channel.conn_or_acquire() as client:
            client.lpush(DEAD_LETTER_QUEUE, json.dumps(letter))
    except ResponseError as exc:  # refused (an ACL without the list): the worker stays up
        logger.error(
            "dropped a malformed item from %s, %s refused it (%s): %s",
            queue, DEAD_LETTER_QUEUE, exc, reason,
        )  # fmt: skip
        return
    logger.warning("set aside a malformed item from %s on %s: %s", queue, DEAD_LETTER_QUEUE, reason)


def install(app: Any) -> None:
    app.steps["consumer"].add(SetAsideMalformed)
