"""RabbitMQ: a message that kills its worker every time ends in the dead-letter queue after
the delivery limit, while every other charge is served; operators see it in `billing status`."""

from __future__ import annotations

import json

import pytest
import redis
from kombu import Connection

from billing_client import rabbitmq
from tests.brokers import queue_length, rabbitmq_broker
from tests.cli.test_commands import billing
from tests.faults import harness
from tests.faults.poison import POISON_TASK, RUNS_KEY
from tests.procs import celery_worker_process, wait_until
from tests.services import REDIS_URL

pytestmark = pytest.mark.faults

LIMIT = 3
SECRET = "pay_ref_dead_777"


def _dead_letters(url: str) -> list:
    """Take every message off the dead-letter queue (it exists once a worker has started)."""
    taken = []
    with Connection(url) as conn:
        queue = rabbitmq.dead_letter_queue()(conn.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            taken.append(message)
    return taken


def test_a_poison_message_ends_in_the_dead_letter_queue(engine, database, rabbitmq_url):
    broker = rabbitmq_broker(rabbitmq_url)
    queue = "faults-poison"
    env = {
        **harness.WORKER_ENV,
        **broker.worker_env(queue, BILLING_DELIVERY_LIMIT=str(LIMIT)),
    }
    runs = redis.Redis.from_url(REDIS_URL)
    runs.delete(RUNS_KEY)
    fleet = harness.prepare_fleet(database)
    with (
        broker.producer(queue, delivery_limit=LIMIT) as app,
        celery_worker_process(
            queue, 4, env=env, control_app=app, include="tests.faults.poison"
        ) as worker,
    ):
        _dead_letters(rabbitmq_url)  # nothing left from an earlier run
        poisoned = app.send_task(POISON_TASK, kwargs={"meta": {"ref": SECRET}}, queue=queue)
        sent = harness.send_stream(app, fleet, queue)
        report, _answers = harness.finish(engine, app, fleet, sent, queue, broker)
        wait_until(
            lambda: (
                int(runs.get(RUNS_KEY) or 0) > LIMIT
                and queue_length(rabbitmq_url, rabbitmq.DEAD_LETTER_QUEUE) == 1
            ),
            "the poison message is dead-lettered",
            timeout=60,
        )
        status_env = {
            "BILLING_BROKER_URL": rabbitmq_url,
            "BILLING_QUEUE": queue,
            "BILLING_ADMIN_QUEUE": queue,
        }
        shown = billing("status", env=status_env)
        status = json.loads(billing("status", "--json", env=status_env).stdout)
        first_runs = int(runs.get(RUNS_KEY))
        listing = billing("dead-letters", env=status_env).stdout
        listed = json.loads(billing("dead-letters", "--json", env=status_env).stdout)
        # Moved back to its queue (as an operator does once the cause is fixed), it is
        # delivered afresh: LIMIT + 1 more runs, and it is back in the dead-letter queue.
        moved = json.loads(billing("dead-letters", "--requeue", "--json", env=status_env).stdout)
        wait_until(
            lambda: (
                int(runs.get(RUNS_KEY)) == 2 * (LIMIT + 1)
                and queue_length(rabbitmq_url, rabbitmq.DEAD_LETTER_QUEUE) == 1
            ),
            "the requeued poison message is dead-lettered again",
            timeout=60,
        )
        log = worker.log_path.read_text()

    # Delivered once and redelivered LIMIT times, each run killing its pool process.
    assert first_runs == LIMIT + 1
    assert log.count("WorkerLostError") >= 2 * (LIMIT + 1)
    assert status["dead_letters"] == 1
    assert status["queues"][rabbitmq.DEAD_LETTER_QUEUE]["length"] == 1
    assert f"dead:     1 in {rabbitmq.DEAD_LETTER_QUEUE}" in shown.stdout, shown.stdout
    [entry] = listed["dead_letters"]
    assert entry["task"] == POISON_TASK and entry["task_id"] == poisoned.id
    assert entry["queue"] == queue and entry["reason"] == "delivery_limit"
    assert entry["kwargs"] == "{'meta': '<hidden>'}"
    assert f"{POISON_TASK} [{poisoned.id}] from {queue}" in listing and SECRET not in listing
    assert [m["task_id"] for m in moved["requeued"]] == [poisoned.id]
    [message] = _dead_letters(rabbitmq_url)
    assert message.headers["id"] == poisoned.id and message.headers["task"] == POISON_TASK
    death = message.headers["x-death"][0]
    assert death["queue"] == queue and death["reason"] == "delivery_limit"
    assert not poisoned.ready()  # it never answered
    print(
        f"\n[rabbitmq: poison message] ran {LIMIT + 1} times, then {rabbitmq.DEAD_LETTER_QUEUE};"
        f" {report.line()}"
    )
