"""Privileged tasks on their own queue: a grant pushed onto the public queue is refused and
writes nothing, and real Redis ACL users (or RabbitMQ permissions) keep the pipeline off the
admin queue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from amqp.exceptions import AccessRefused
from celery import Celery
from celery.result import AsyncResult
from kombu import Connection
from redis.exceptions import NoPermissionError

from billing.core.settings import get_settings
from billing_client import BillingClient, rabbitmq
from billing_client.names import PRIVILEGED
from tasks.lifecycle import grant_credits
from tests import brokers, forge
from tests.conftest import count_rows, ledger_rows
from tests.procs import celery_worker_process
from tests.services import REDIS_URL
from worker import app

PIPELINE, BACK_OFFICE = "billing-test-pipeline", "billing-test-back-office"


def _acl_rules(queue: str) -> list[str]:
    """What a producer needs on Redis to enqueue on ``queue`` (kombu's list, its priority
    lists and its binding sets) and read results; nothing else writable."""
    return [
        f"~{queue}",
        f"~{queue}\x06\x16*",
        f"~_kombu.binding.{queue}",
        f"~_kombu.binding_permanent.{queue}",
        "%R~_kombu.binding*",
        "~celery-task-meta-*",
        "&*",
        "+@all",
        "-@dangerous",
        "-@admin",
    ]


@pytest.fixture
def acl_users() -> Iterator[dict[str, Celery]]:
    admin = redis.Redis.from_url(REDIS_URL)
    settings = get_settings()
    users = {PIPELINE: settings.queue, BACK_OFFICE: settings.admin_queue}
    apps = {}
    for user, queue in users.items():
        admin.execute_command(
            "ACL", "SETUSER", user, "reset", "on", ">pw-" + user, *_acl_rules(queue)
        )
        url = REDIS_URL.replace("redis://", f"redis://{user}:pw-{user}@")
        producer = Celery(user, broker=url, backend=url, set_as_current=False)
        producer.conf.task_routes = app.conf.task_routes  # as billing_client routes
        apps[user] = producer
    yield apps
    for user, producer in apps.items():
        producer.close()
        admin.execute_command("ACL", "DELUSER", user)


def test_every_privileged_task_is_routed_to_the_admin_queue():
    settings = get_settings()
    for name in PRIVILEGED:
        assert app.amqp.router.route({}, name)["queue"].name == settings.admin_queue
    for name in ("billing.charge_generation", "billing.capture", "billing.get_state"):
        assert app.amqp.router.route({}, name)["queue"].name == settings.queue
    client = BillingClient(app)
    assert client.queue_for("billing.grant_credits") == settings.admin_queue
    assert client.queue_for("billing.reserve_generation") == settings.queue


def test_a_grant_pushed_onto_the_public_queue_is_refused_and_not_remembered(worker, accounts):
    user = accounts.credits_only()
    pushed = app.send_task(
        "billing.grant_credits",
        kwargs={"user_id": user, "amount": 1_000, "idempotency_key": "by-hand"},
        queue=get_settings().queue,
    ).get(timeout=30)

    assert pushed["code"] == 403 and pushed["error"] == "forbidden_queue"
    assert ledger_rows(worker.engine, user) == []
    assert accounts.get(user).balance_credits == 100
    # Not remembered: the same key from the admin queue is a first grant.
    granted = worker.grant(user, 1_000, "by-hand")
    assert granted["ok"] and granted["replayed"] is False
    assert accounts.get(user).balance_credits == 1_100


# A privileged message LPUSHed onto the public Redis list, its delivery_info (which on Redis
# is part of the body the producer writes) naming the admin queue, or left out.
FORGED_ROUTES = {
    "admin-delivery-info": {"exchange": "billing-admin", "routing_key": "billing-admin"},
    "admin-routing-key": {"exchange": "", "routing_key": "billing-admin"},
    "no-delivery-info": forge.DROP,
}


def _privileged(task: str, user: int, key: str) -> dict[str, Any]:
    return {
        "billing.grant_credits": {"user_id": user, "amount": 1_000, "idempotency_key": key},
        "billing.activate_subscription": {"user_id": user, "tier": "basic", "idempotency_key": key},
        "billing.refund": {"idempotency_key": key},
    }[task]


@pytest.mark.parametrize("route", sorted(FORGED_ROUTES))
@pytest.mark.parametrize(
    "task", ["billing.grant_credits", "billing.refund", "billing.activate_subscription"]
)
def test_a_privileged_message_forged_onto_the_public_redis_list_is_refused(
    worker, accounts, engine, task, route
):
    """The worker consumes both queues: what it took from the public list is refused whatever
    the message says of its route, writes nothing, and the key is not remembered."""
    settings = get_settings()
    assert settings.admin_queue == "billing-admin"
    user = accounts.credits_only()
    key = f"forged-{route}"
    if task == "billing.refund":
        assert worker.charge_generation(user, key)["ok"]  # the charge the forger refunds
    before = (accounts.get(user), ledger_rows(engine, user), count_rows(engine, "billing_requests"))
    forged = forge.task_message(app, task, _privileged(task, user, key))
    forge.push_redis(REDIS_URL, settings.queue, forged, FORGED_ROUTES[route])

    answer = AsyncResult(forged.task_id, app=app).get(timeout=30)

    assert answer["code"] == 403 and answer["error"] == "forbidden_queue"
    after = accounts.get(user)
    assert (after.balance_credits, after.subscription_type) == (
        before[0].balance_credits,
        before[0].subscription_type,
    )
    assert ledger_rows(engine, user) == before[1]
    assert count_rows(engine, "billing_requests") == before[2]
    # Not remembered: the same key sent properly to the admin queue is a first one.
    sent = worker.call(task, **_privileged(task, user, key))
    assert sent["ok"] and sent["replayed"] is False


def test_redis_acl_users_keep_the_pipeline_off_the_admin_queue(worker, accounts, acl_users):
    user = accounts.credits_only()
    pipeline, back_office = acl_users[PIPELINE], acl_users[BACK_OFFICE]

    charged = pipeline.send_task(
        "billing.charge_generation", kwargs={"user_id": user, "idempotency_key": "acl-c"}
    ).get(timeout=30)
    with pytest.raises(Exception) as refused:
        pipeline.send_task(
            "billing.grant_credits",
            kwargs={"user_id": user, "amount": 500, "idempotency_key": "acl-g"},
        )
    # The pipeline may still push a grant onto its own queue by hand: the worker refuses it.
    by_hand = pipeline.send_task(
        "billing.grant_credits",
        kwargs={"user_id": user, "amount": 500, "idempotency_key": "acl-g"},
        queue=get_settings().queue,
    ).get(timeout=30)
    granted = back_office.send_task(
        "billing.grant_credits",
        kwargs={"user_id": user, "amount": 500, "idempotency_key": "acl-g"},
    ).get(timeout=30)

    assert charged["ok"] and charged["source"] == "credits"
    cause = refused.value
    while cause.__cause__ is not None or cause.__context__ is not None:
        if isinstance(cause, NoPermissionError) or "no permissions" in str(cause):
            break
        cause = cause.__cause__ or cause.__context__
    assert "no permissions" in str(cause), repr(refused.value)
    assert by_hand["code"] == 403
    assert granted["ok"] and granted["replayed"] is False
    assert accounts.get(user).balance_credits == 100 - get_settings().generation_cost + 500


@pytest.fixture
def rabbitmq_users(rabbitmq_url: str) -> Iterator[dict[str, str]]:
    """RabbitMQ users with what a producer needs on one queue: declare it and its exchange
    (configure), bind and publish to them (write, read); nothing else."""
    vhost = Connection(rabbitmq_url).virtual_host
    settings = get_settings()
    users = {PIPELINE: settings.queue, BACK_OFFICE: settings.admin_queue}
    urls = {}
    for user, queue in users.items():
        brokers.rabbitmqctl("delete_user", user)
        for args in (
            ("add_user", user, f"pw-{user}"),
            ("set_permissions", "-p", vhost, user, f"^{queue}$", f"^{queue}$", f"^{queue}$"),
        ):
            done = brokers.rabbitmqctl(*args)
            assert done.returncode == 0, done.stderr
        urls[user] = rabbitmq_url.replace("guest:guest@", f"{user}:pw-{user}@")
    yield urls
    for user in users:
        brokers.rabbitmqctl("delete_user", user)


def test_rabbitmq_permissions_keep_the_pipeline_off_the_admin_queue(
    engine, accounts, rabbitmq_url, rabbitmq_users
):
    user = accounts.credits_only()
    settings = get_settings()
    queues = f"{settings.queue},{settings.admin_queue}"
    env = {
        "BILLING_BROKER_URL": rabbitmq_url,
        "BILLING_QUEUE": settings.queue,
        "BILLING_ADMIN_QUEUE": settings.admin_queue,
    }
    pipeline, back_office = (
        BillingClient(broker_url=rabbitmq_users[name], result_backend=REDIS_URL)
        for name in (PIPELINE, BACK_OFFICE)
    )
    control = Celery("control", broker=rabbitmq_url, set_as_current=False)
    try:
        with celery_worker_process(queues, 2, env=env, control_app=control):
            charged = pipeline.charge_generation(user, "rmq-acl-c")
            with pytest.raises(AccessRefused):
                pipeline.grant_credits(user, 500, "rmq-acl-g")
            # Pushed onto its own queue by hand, the grant is refused by the worker.
            by_hand = pipeline.app.send_task(
                "billing.grant_credits",
                kwargs={"user_id": user, "amount": 500, "idempotency_key": "rmq-acl-g"},
                queue=settings.queue,
            ).get(timeout=30)
            # Its permissions let it bind its queue under the admin queue's routing key: the
            # grant arrives on `billing` with that key, and is refused all the same.
            rebound = forge.task_message(
                app,
                "billing.grant_credits",
                {"user_id": user, "amount": 500, "idempotency_key": "rmq-acl-g"},
            )
            forge.publish_amqp(
                rabbitmq_users[PIPELINE],
                rebound,
                settings.queue,
                settings.admin_queue,
                bind_queue=settings.queue,
            )
            by_key = AsyncResult(rebound.task_id, app=app).get(timeout=30)
            granted = back_office.grant_credits(user, 500, "rmq-acl-g")
    finally:
        for client in (pipeline, back_office):
            client.app.close()
        control.close()

    assert charged.ok and charged.source == "credits"
    assert by_hand["code"] == 403 and by_hand["error"] == "forbidden_queue"
    assert by_key["code"] == 403 and by_key["error"] == "forbidden_queue"
    assert granted.ok and not granted.replayed
    assert accounts.get(user).balance_credits == 100 - settings.generation_cost + 500


def test_a_privileged_task_retried_on_either_broker_comes_back_on_the_admin_queue(broker):
    """A retry is sent to the queue the message was consumed from: on the admin queue it runs
    again (and fails for good here, its database being unreachable); sent anywhere else, it
    would have answered 403."""
    public, admin = "billing-retry-public", "billing-retry-admin"
    env = {
        "BILLING_BROKER_URL": broker.url,
        "BILLING_QUEUE": public,
        "BILLING_ADMIN_QUEUE": admin,
        "BILLING_DATABASE_URL": "postgresql+psycopg://billing@127.0.0.1:1/billing",
        "BILLING_TASK_MAX_RETRIES": "2",
    }
    with broker.producer(admin) as producer:
        if broker.amqp:
            rabbitmq.configure(producer.conf, public, admin)
        with celery_worker_process(
            f"{public},{admin}", 1, env=env, loglevel="INFO", control_app=producer
        ) as proc:
            result = producer.send_task(
                "billing.grant_credits",
                kwargs={"user_id": 1, "amount": 5, "idempotency_key": "retried"},
                queue=admin,
            )
            result.get(timeout=60, propagate=False)
            log = proc.log_path.read_text()

    assert result.state == "FAILURE" and "OperationalError" in repr(result.result)
    assert log.count(f"billing.grant_credits[{result.id}] retry: Retry in") == 2


def test_a_privileged_task_run_in_process_is_not_refused(engine, accounts):
    """No message, no queue: Task.apply and a direct call run here, as the tests and tools
    that call a task in-process expect."""
    user = accounts.credits_only()
    applied = grant_credits.apply(
        kwargs={"user_id": user, "amount": 5, "idempotency_key": "in-process-apply"}
    ).get()
    called = grant_credits(user_id=user, amount=7, idempotency_key="in-process-call")

    assert applied["ok"] and called["ok"]
    assert accounts.get(user).balance_credits == 100 + 5 + 7
