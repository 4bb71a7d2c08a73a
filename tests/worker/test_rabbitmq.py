"""RabbitMQ end to end: countdowns wait in the broker (Celery's native delayed delivery on
quorum queues), a delayed privileged task still runs from the admin queue, and balance events
reach the product's consumer."""

from __future__ import annotations

import json
import time
import uuid

import redis

from billing.core.settings import get_settings
from cli import processes
from tests import brokers
from tests.brokers import rabbitmq_broker
from tests.procs import LOG_DIR, celery_worker_process, consumer_command, wait_until
from tests.services import REDIS_URL

QUEUE = "billing-rmq"


def test_a_countdown_waits_in_the_broker_not_in_the_worker(accounts, rabbitmq_url):
    """One pool process with a prefetch of one: were the delayed message held by the worker
    until due (as on a direct exchange), the charge sent after it would wait behind it."""
    broker = rabbitmq_broker(rabbitmq_url)
    user = accounts.credits_only()
    with (
        broker.producer(QUEUE) as app,
        celery_worker_process(QUEUE, 1, env=broker.worker_env(QUEUE), control_app=app) as proc,
    ):
        sent_at = time.monotonic()
        delayed = app.send_task(
            "billing.get_state", kwargs={"user_id": user}, queue=QUEUE, countdown=4
        )
        charged = app.send_task(
            "billing.charge_generation",
            kwargs={"user_id": user, "idempotency_key": "cd-1"},
            queue=QUEUE,
        ).get(timeout=30)
        charged_after = time.monotonic() - sent_at
        node = processes.node_name(proc.args[proc.args.index("-n") + 1])
        held = app.control.inspect(destination=[node], timeout=5).scheduled() or {}
        # A privileged task delayed the same way comes back with its countdown in front of
        # its routing key; the worker still sees the admin queue (here the same queue).
        granted = app.send_task(
            "billing.grant_credits",
            kwargs={"user_id": user, "amount": 5, "idempotency_key": "cd-g"},
            queue=QUEUE,
            countdown=1,
        ).get(timeout=30)
        state = delayed.get(timeout=30)
        answered_after = time.monotonic() - sent_at

    assert charged["ok"] and charged_after < 3.0
    assert held.get(node) == []  # nothing waits for its ETA inside the worker
    assert state["ok"] and answered_after >= 4.0
    assert granted["ok"] and granted["code"] == 200


def test_balance_events_reach_the_consumer_on_rabbitmq(accounts, rabbitmq_url):
    broker = rabbitmq_broker(rabbitmq_url)
    cost = 10
    user = accounts.credits_only(balance_credits=cost)
    received_key = f"billing-test:received-rmq-{uuid.uuid4().hex[:6]}"
    store = redis.Redis.from_url(REDIS_URL)
    hostname = f"consumer-rmq-{uuid.uuid4().hex[:6]}@%h"
    consumer = consumer_command(hostname)
    consumer_env = {
        "BILLING_BROKER_URL": rabbitmq_url,
        "BILLING_TEST_RECEIVED_URL": REDIS_URL,
        "BILLING_TEST_RECEIVED_KEY": received_key,
    }
    env = broker.worker_env(QUEUE, BILLING_GENERATION_COST=str(cost))
    # The vhost's events queue holds what the other RabbitMQ tests' workers published.
    brokers.purge(rabbitmq_url, get_settings().events_queue)
    with (
        broker.producer(QUEUE) as app,
        celery_worker_process(QUEUE, 2, env=env, control_app=app),
        processes.running(consumer, LOG_DIR / "consumer-rmq.log", consumer_env) as proc,
    ):
        processes.wait_for_worker(app, proc, processes.node_name(hostname))
        charged = app.send_task(
            "billing.charge_generation",
            kwargs={"user_id": user, "idempotency_key": "ev-rmq"},
            queue=QUEUE,
        ).get(timeout=30)
        wait_until(lambda: store.llen(received_key) >= 2, "both events are received", 30)
        time.sleep(0.5)  # and nothing more comes
        received = [json.loads(item) for item in store.lrange(received_key, 0, -1)]
    store.delete(received_key)

    assert charged["ok"]
    assert [(e["type"], e["user_id"]) for e in received] == [
        ("credits.low", user),
        ("credits.depleted", user),
    ]
    assert received[1]["data"]["state"]["credits"]["balance"] == 0
