"""The floor a user compares us with: a plain Celery app, not the billing app.

It has what any Celery deployment of a billing-like task would have, and nothing of ours:
broker and result backend (the bench's Redis), JSON, ``acks_late``, prefetch 1 and task events
on (Flower). Its one task returns a small dict. It imports nothing of the processor, so none
of the billing app's signals, settings or request class are loaded where it runs.

    celery -A bench.bare worker -Q bare ...

``BENCH_BARE_PIECE`` names one piece of the billing worker to add to it (``bench.pieces``):
the bench prices each piece alone as that worker's rate against this one's.
"""

from __future__ import annotations

import os

from celery import Celery

QUEUE = "bare"
REDIS_URL = os.environ.get("BILLING_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")

CONFIG = {
    "broker_url": REDIS_URL,
    "result_backend": REDIS_URL,
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "task_acks_late": True,
    "worker_prefetch_multiplier": 1,
    "worker_send_task_events": True,
    "task_send_sent_event": True,
    "broker_connection_retry_on_startup": True,
    "worker_hijack_root_logger": False,
}

app = Celery("bare")
app.conf.update(CONFIG)

PIECE = os.environ.get("BENCH_BARE_PIECE") or None

if PIECE is None:

    @app.task(name="bare.noop", shared=False)
    def noop(**_kwargs: object) -> dict[str, object]:
        return {"ok": True, "code": 200}

else:
    from bench import pieces

    pieces.install(app, PIECE)


def noops(n: int) -> list[tuple[str, dict[str, object]]]:
    """``n`` messages for the plain floor's task."""
    return [("bare.noop", {}) for _ in range(n)]
