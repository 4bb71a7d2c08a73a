"""The product's side of the events: a Celery app of its own that imports nothing of ours, as
the README shows one. It keeps each delivery, in the order received, on a Redis list the
tests read (``BILLING_TEST_RECEIVED_KEY``), so a test sees duplicates as well as events."""

from __future__ import annotations

import json
import os

import redis
from celery import Celery

BROKER_URL = os.environ["BILLING_BROKER_URL"]
QUEUE = os.environ.get("BILLING_EVENTS_QUEUE", "billing-events")
RECEIVED_KEY = os.environ.get("BILLING_TEST_RECEIVED_KEY", "billing-test:received")

app = Celery("product", broker=BROKER_URL)
app.conf.task_default_queue = QUEUE
if BROKER_URL.startswith("amqp"):
    app.conf.task_default_queue_type = "quorum"  # as the billing workers declare it
app.conf.accept_content = ["json"]
app.conf.worker_prefetch_multiplier = 1
app.conf.worker_hijack_root_logger = False

_store = redis.Redis.from_url(os.environ.get("BILLING_TEST_RECEIVED_URL", BROKER_URL))


@app.task(name=os.environ.get("BILLING_EVENTS_TASK", "billing_events.account_event"))
def account_event(event_id: str, type: str, user_id: int, occurred_at: str, data: dict) -> None:
    event = {
        "event_id": event_id,
        "type": type,
        "user_id": user_id,
        "occurred_at": occurred_at,
        "data": data,
    }
    _store.rpush(RECEIVED_KEY, json.dumps(event))
