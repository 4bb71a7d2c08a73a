"""Redis against RabbitMQ as the broker, in one run: the floor (a no-op) and the charges on
each, a worker with the production configuration started afresh for each broker and round,
the brokers' order swapped every round. Results go to Redis either way (the result backend
the design asks for), so the difference is the broker alone: on RabbitMQ, quorum queues and
a publisher confirm for every message sent (tasks, retries, events, results' task events).

The RabbitMQ side runs on BILLING_BENCH_RABBITMQ_URL (default: the local node's default
vhost); its bench queue is deleted first, so every run starts from an empty quorum queue.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from kombu import Connection

from bench import throughput as tp
from billing_client import rabbitmq

RABBITMQ_URL = os.environ.get("BILLING_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")

Messages = Callable[[int], list[tuple[str, dict[str, Any]]]]


@contextmanager
def producer(url: str, result_backend: str) -> Iterator[Celery]:
    """A producer on ``url``, configured as the workers are (celeryconfig)."""
    from billing.core.settings import get_settings

    app = Celery("bench-producer")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = url
    app.conf.result_backend = result_backend
    if rabbitmq.is_amqp(url):
        settings = get_settings()
        rabbitmq.configure(app.conf, tp.QUEUE, settings.admin_queue, settings.delivery_limit)
    try:
        yield app
    finally:
        app.close()


def _fresh_queue(url: str) -> None:
    with Connection(url) as conn:
        conn.default_channel.queue_delete(tp.QUEUE)


def measure(
    redis_url: str,
    noops: Messages,
    charges: Messages,
    tasks: int,
    repeat: int,
    concurrency: int,
    log_dir,
) -> dict[str, Any]:
    brokers = {"redis": redis_url, "rabbitmq": RABBITMQ_URL}
    _fresh_queue(RABBITMQ_URL)
    floor: dict[str, list[tp.StreamResult]] = {name: [] for name in brokers}
    charge: dict[str, list[tp.StreamResult]] = {name: [] for name in brokers}
    for round_ in range(repeat):
        order = list(brokers) if round_ % 2 == 0 else list(reversed(brokers))
        for name in order:
            url = brokers[name]
            with (
                producer(url, redis_url) as app,
                tp.workers(app, {"BILLING_BROKER_URL": url}, concurrency, log_dir),
            ):
                tp.run_stream(app, noops(200))  # warm up: connections, prepared plans
                tp.run_stream(app, charges(200))
                floor[name].append(tp.run_stream(app, noops(tasks)))
                charge[name].append(tp.run_stream(app, charges(tasks)))
    out: dict[str, Any] = {}
    for name in brokers:
        out[name] = {"floor": tp.median_of(floor[name]), "charges": tp.median_of(charge[name])}
    return out


def _rate(r: dict[str, Any]) -> float:
    return r["tasks_per_s"]["median"]


def lines(r: dict[str, Any]) -> list[str]:
    out = [f"{'broker':<10} {'floor/s':>9} {'charges/s':>10} {'charges/floor':>14} {'p50 ms':>7}"]
    for name in ("redis", "rabbitmq"):
        floor, charges = r[name]["floor"], r[name]["charges"]
        out.append(
            f"{name:<10} {_rate(floor):>9.1f} {_rate(charges):>10.1f}"
            f" {_rate(charges) / _rate(floor):>14.2f} {charges['p50_ms']['median']:>7.0f}"
        )
    out.append(
        "rabbitmq / redis: floor"
        f" x{_rate(r['rabbitmq']['floor']) / _rate(r['redis']['floor']):.2f}, charges"
        f" x{_rate(r['rabbitmq']['charges']) / _rate(r['redis']['charges']):.2f}"
    )
    return out
