"""RabbitMQ only: the dead-letter queue is declared by every worker as its consumer starts.

The billing queues name ``billing.dead`` as their dead-letter exchange; RabbitMQ keeps a
message whose dead-letter target does not exist yet in its queue (at-least-once
dead-lettering), so the queue must exist before the first message outlives its delivery
limit. Declaring is idempotent: every worker, on every (re)connection, declares it again.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from billing_client import rabbitmq


class DeclareDeadLetterQueue(bootsteps.StartStopStep):
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def include_if(self, c: Any) -> bool:
        return rabbitmq.is_amqp(c.app.conf.broker_url)

    def start(self, c: Any) -> None:
        with c.app.connection_for_write() as conn:
            rabbitmq.dead_letter_queue()(conn.default_channel).declare()


def install(app: Any) -> None:
    app.steps["consumer"].add(DeclareDeadLetterQueue)
