"""Hostile producers, on both brokers: every field of a task message that a producer writes,
forged. Whatever the message says, a privileged task taken from the public queue runs
nothing, a public charge is written once per key, no task the worker sends on a producer's
behalf runs privileged, and the worker goes on serving.

One worker process per broker serves the whole module; it consumes the public and the admin
queue, as the default ``billing worker`` does."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery, states
from celery.result import AsyncResult
from kombu.transport.native_delayed_delivery import calculate_routing_key
from sqlalchemy import Engine

from billing.core.settings import get_settings
from billing_client import rabbitmq
from billing_client.names import PRIVILEGED
from tests import brokers, forge
from tests.conftest import Accounts, count_rows, ledger_rows
from tests.procs import celery_worker_process, wait_until
from tests.services import REDIS_URL

PUBLIC, ADMIN = "billing-hostile", "billing-hostile-admin"
GRANT = 1_000
RESULT_TIMEOUT = 30
# Kombu's Redis priority lists: the queue's name, a separator, the priority step.
PRIORITY_SEP = "\x06\x16"
REDIS_STEPS = (3, 6, 9)
# RabbitMQ takes a message's headers in one frame (128 KiB by default); Redis takes more.
OVERSIZED = {"redis": 1_000_000, "rabbitmq": 50_000}


def _in(seconds: float) -> Callable[[], str]:
    return lambda: (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _linked(task: str, kwargs: dict[str, Any], task_id: str) -> dict[str, Any]:
    """A signature as Celery embeds it: the worker would send it when the task ends."""
    return {
        "task": task,
        "args": [],
        "kwargs": kwargs,
        "options": {"task_id": task_id},
        "subtask_type": None,
        "immutable": True,
        "chord_size": 1,
    }


@dataclass(frozen=True)
class Forgery:
    """What the producer changes in the message Celery would have sent."""

    headers: dict[str, Any] = field(default_factory=dict)  # a callable value is made at send
    properties: dict[str, Any] = field(default_factory=dict)
    embed: dict[str, Any] = field(default_factory=dict)  # the body's third part
    priority: int = 0
    # Redis: the delivery_info the message carries (None: the honest one; forge.DROP: none).
    # RabbitMQ: sent as a header, the nearest a producer gets.
    delivery_info: Any = None
    # RabbitMQ: the exchange and routing key it is published with, after the producer bound
    # the public queue to them (None: the public queue's own route).
    route: tuple[str, str] | None = None
    # The name it is sent under, from the real one.
    name: Callable[[str], str] = lambda name: name
    # Links to a grant the worker would send when the task ends: body keys.
    links: tuple[str, ...] = ()
    # runs (a privileged task answers 403), unregistered, expired (revoked), or rejected
    # (no answer: the worker drops the message).
    outcome: str = "runs"


ADMIN_ROUTE = {"exchange": ADMIN, "routing_key": ADMIN}
CASES: dict[str, Forgery] = {
    "delivery_info-admin": Forgery(delivery_info=ADMIN_ROUTE),
    "delivery_info-dropped": Forgery(delivery_info=forge.DROP),
    "delivery_info-not-a-dict": Forgery(delivery_info=[ADMIN, ADMIN]),
    "delivery_info-in-the-body": Forgery(embed={"delivery_info": ADMIN_ROUTE}),
    "in-process-flags": Forgery(
        headers={"is_eager": True, "called_directly": True},
        embed={"is_eager": True, "called_directly": True, "delivery_info": {"is_eager": True}},
    ),
    "routing_key": Forgery(
        delivery_info={"exchange": "", "routing_key": ADMIN}, route=(PUBLIC, ADMIN)
    ),
    "routing_key-delayed": Forgery(
        delivery_info={"exchange": "", "routing_key": calculate_routing_key(1, ADMIN)},
        route=(PUBLIC, calculate_routing_key(1, ADMIN)),
    ),
    "exchange": Forgery(delivery_info={"exchange": ADMIN}, route=("amq.topic", ADMIN)),
    "priority": Forgery(
        priority=9, delivery_info={"exchange": "", "routing_key": PUBLIC, "priority": 9}
    ),
    "priority-out-of-range": Forgery(priority=255),
    "reply_to": Forgery(properties={"reply_to": ADMIN, "correlation_id": str(uuid.uuid4())}),
    "eta-soon": Forgery(headers={"eta": _in(1)}),
    "eta-past": Forgery(headers={"eta": "2000-01-01T00:00:00+00:00"}),
    "eta-garbage": Forgery(headers={"eta": "tomorrow"}, outcome="rejected"),
    # Celery turns a countdown into an ETA (on RabbitMQ, into the delayed routing key above):
    # as a header of its own it is a field nothing reads.
    "countdown": Forgery(headers={"countdown": 3600}),
    "expires-past": Forgery(headers={"expires": "2000-01-01T00:00:00+00:00"}, outcome="expired"),
    "expires-later": Forgery(headers={"expires": _in(3600)}),
    "retries-huge": Forgery(headers={"retries": 10**9}),
    "retries-garbage": Forgery(headers={"retries": "many"}),
    "parent_id-root_id": Forgery(
        headers={"parent_id": str(uuid.uuid4()), "root_id": ADMIN, "group": str(uuid.uuid4())}
    ),
    "kwargsrepr": Forgery(
        headers={"kwargsrepr": "{'user_id': 1, 'amount': 1}", "argsrepr": "('admin',)"}
    ),
    "kwargsrepr-not-text": Forgery(headers={"kwargsrepr": {"queue": ADMIN}, "argsrepr": [1]}),
    "shadow": Forgery(headers={"shadow": "billing.get_state"}),
    "name-upper-case": Forgery(name=str.upper, outcome="unregistered"),
    "name-title-case": Forgery(name=str.title, outcome="unregistered"),
    "name-padded": Forgery(name=lambda name: f" {name}", outcome="unregistered"),
    "oversized-headers": Forgery(headers={"x-pad": "oversized", "kwargsrepr": "oversized"}),
    "many-headers": Forgery(headers={f"x-{i}": i for i in range(2_000)}),
    "links": Forgery(links=("callbacks", "errbacks")),
    "chain": Forgery(links=("chain",)),
    "chord": Forgery(links=("chord",), headers={"group": str(uuid.uuid4()), "group_index": 0}),
}


@dataclass
class Hostile:
    broker: brokers.Broker
    app: Celery  # an honest producer's, both queues declared as the workers declare them
    worker: Any  # the worker's process, with its log_path

    def send(self, name: str, kwargs: dict[str, Any], forgery: Forgery) -> forge.Forged:
        forged = forge.task_message(self.app, forgery.name(name), kwargs)
        size = OVERSIZED[self.broker.name]
        for header, value in forgery.headers.items():
            value = value() if callable(value) else value
            forged.headers[header] = "x" * size if value == "oversized" else value
        forged.properties.update(forgery.properties)
        forged.body[2] = {**(forged.body[2] or {}), **forgery.embed}
        forged.priority = forgery.priority
        if not self.broker.amqp:
            # On the list of its priority step, where kombu would have put it.
            step = forgery.priority if forgery.priority in REDIS_STEPS else 0
            on = f"{PUBLIC}{PRIORITY_SEP}{step}" if step else PUBLIC
            forge.push_redis(self.broker.url, PUBLIC, forged, forgery.delivery_info, on)
            return forged
        exchange, routing_key = forgery.route or (PUBLIC, PUBLIC)
        info = forgery.delivery_info
        headers = {"delivery_info": info} if isinstance(info, dict | list) else {}
        bind = PUBLIC if forgery.route else None
        forge.publish_amqp(self.broker.url, forged, exchange, routing_key, headers, bind)
        return forged

    def outcome(self, forged: forge.Forged, expected: str) -> Any:
        """The forged message's answer once the worker is done with it."""
        if expected == "rejected":
            wait_until(lambda: self._pending() == 0, "the worker took the message", 30)
            return None
        result = AsyncResult(forged.task_id, app=self.app)
        wait_until(lambda: result.state in states.READY_STATES, "an answer", RESULT_TIMEOUT)
        return result.state, result.result

    def _pending(self) -> int:
        if self.broker.amqp:
            return brokers.queue_length(self.broker.url, PUBLIC)
        client = redis.Redis.from_url(self.broker.url)
        return sum(client.llen(key) for key in _redis_lists(PUBLIC))

    def call(self, name: str, queue: str = PUBLIC, **kwargs: Any) -> dict[str, Any]:
        return self.app.send_task(name, kwargs=kwargs, queue=queue).get(timeout=RESULT_TIMEOUT)


def _redis_lists(queue: str) -> list[str]:
    return [queue, *(f"{queue}{PRIORITY_SEP}{step}" for step in REDIS_STEPS)]


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def hostile(request: pytest.FixtureRequest, database: str) -> Iterator[Hostile]:
    if request.param == "rabbitmq":
        broker = brokers.rabbitmq_broker(request.getfixturevalue("rabbitmq_url"))
        for queue in (PUBLIC, ADMIN):
            brokers.purge(broker.url, queue)
    else:
        broker = brokers.redis_broker()
        redis.Redis.from_url(broker.url).delete(*_redis_lists(PUBLIC), *_redis_lists(ADMIN))
    env = {"BILLING_BROKER_URL": broker.url, "BILLING_QUEUE": PUBLIC, "BILLING_ADMIN_QUEUE": ADMIN}
    with broker.producer(PUBLIC) as app:
        if broker.amqp:
            rabbitmq.configure(app.conf, PUBLIC, ADMIN)
        app.conf.task_routes = {
            **{name: {"queue": ADMIN} for name in PRIVILEGED},
            "billing.*": {"queue": PUBLIC},
        }
        with celery_worker_process(f"{PUBLIC},{ADMIN}", 2, env=env, control_app=app) as proc:
            yield Hostile(broker, app, proc)


def _check_outcome(answer: Any, forgery: Forgery, ran: Callable[[dict[str, Any]], bool]) -> None:
    if forgery.outcome == "rejected":
        assert answer is None
    elif forgery.outcome == "unregistered":
        assert answer[0] == states.FAILURE and type(answer[1]).__name__ == "NotRegistered"
    elif forgery.outcome == "expired":
        assert answer[0] == states.REVOKED
    else:
        assert answer[0] == states.SUCCESS and ran(answer[1]), answer


def _assert_never_sent(hostile: Hostile, task_ids: list[str]) -> None:
    """The tasks a forged body linked were not sent: an admin-queue round trip sent after
    the forged task answered finds none of them answered."""
    if not task_ids:
        return
    assert hostile.call("billing.get_state", ADMIN, user_id=1)["code"] in (200, 404)
    time.sleep(0.5)  # one linked after the probe would have had time to answer
    assert [AsyncResult(t, app=hostile.app).state for t in task_ids] == ["PENDING"] * len(task_ids)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_forged_privileged_message_on_the_public_queue_runs_nothing(
    hostile: Hostile, accounts: Accounts, engine: Engine, case: str
):
    forgery = CASES[case]
    user = accounts.credits_only()
    grant = {"user_id": user, "amount": GRANT, "idempotency_key": f"hostile-{case}"}
    linked = [str(uuid.uuid4()) for _ in forgery.links]
    forgery = _with_links(forgery, user, linked)

    forged = hostile.send("billing.grant_credits", grant, forgery)
    answer = hostile.outcome(forged, forgery.outcome)

    _check_outcome(answer, forgery, lambda r: r["code"] == 403 and r["error"] == "forbidden_queue")
    _assert_never_sent(hostile, linked)
    assert accounts.get(user).balance_credits == 100
    assert ledger_rows(engine, user) == []
    assert count_rows(engine, "billing_requests") == 0
    # The worker still serves, and the key was not remembered: sent properly, it is granted.
    granted = hostile.call("billing.grant_credits", ADMIN, **grant)
    assert granted["ok"] and granted["replayed"] is False
    assert accounts.get(user).balance_credits == 100 + GRANT


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_forged_public_charge_is_written_once_and_links_nothing(
    hostile: Hostile, accounts: Accounts, engine: Engine, case: str
):
    forgery = CASES[case]
    cost = get_settings().generation_cost
    user = accounts.credits_only()
    charge = {"user_id": user, "idempotency_key": f"hostile-{case}"}
    linked = [str(uuid.uuid4()) for _ in forgery.links]
    forgery = _with_links(forgery, user, linked)

    sent = [hostile.send("billing.charge_generation", charge, forgery) for _ in range(2)]
    answers = [hostile.outcome(forged, forgery.outcome) for forged in sent]
    honest = hostile.call("billing.charge_generation", **charge)

    for answer in answers:
        _check_outcome(answer, forgery, lambda r: r["ok"] and r["source"] == "credits")
    _assert_never_sent(hostile, linked)
    assert honest["ok"] and honest["amount"] == cost
    rows = ledger_rows(engine, user)
    assert [(row.entry_type, row.amount) for row in rows] == [("charge", cost)], rows
    assert accounts.get(user).balance_credits == 100 - cost


def _with_links(forgery: Forgery, user: int, task_ids: list[str]) -> Forgery:
    """The forgery with its links: each a grant to ``user`` under its own key and task id."""
    embed = dict(forgery.embed)
    for link, task_id in zip(forgery.links, task_ids, strict=True):
        grant = {"user_id": user, "amount": GRANT, "idempotency_key": f"linked-{task_id}"}
        signature = _linked("billing.grant_credits", grant, task_id)
        embed[link] = signature if link == "chord" else [signature]
    return dataclasses.replace(forgery, embed=embed)


RESTORE_PUBLIC, RESTORE_ADMIN = "billing-hostile-restore", "billing-hostile-restore-admin"


def test_a_forged_message_restored_by_redis_goes_back_to_the_public_queue(accounts, database):
    """A warm shutdown puts back what the worker held unacknowledged, on the queue kombu
    recorded for it: the one the worker took it from, not the admin queue its delivery_info
    named (where the next worker would run it as a privileged task)."""
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(*_redis_lists(RESTORE_PUBLIC), *_redis_lists(RESTORE_ADMIN))
    user = accounts.credits_only()
    env = {"BILLING_QUEUE": RESTORE_PUBLIC, "BILLING_ADMIN_QUEUE": RESTORE_ADMIN}
    app = Celery("restore-producer", broker=REDIS_URL, backend=REDIS_URL, set_as_current=False)
    grant = {"user_id": user, "amount": GRANT, "idempotency_key": "hostile-restore"}
    # Held by the worker until its ETA, so still unacknowledged when the worker stops.
    forged = forge.task_message(app, "billing.grant_credits", grant)
    forged.headers["eta"] = _in(3600)()
    admin_route = {"exchange": RESTORE_ADMIN, "routing_key": RESTORE_ADMIN}
    try:
        with celery_worker_process(f"{RESTORE_PUBLIC},{RESTORE_ADMIN}", 1, env=env):
            forge.push_redis(REDIS_URL, RESTORE_PUBLIC, forged, admin_route)
            wait_until(lambda: client.llen(RESTORE_PUBLIC) == 0, "the worker holds the message")
            held = AsyncResult(forged.task_id, app=app)
            assert held.state == states.PENDING
    finally:
        app.close()

    assert client.llen(RESTORE_ADMIN) == 0
    restored = [json.loads(item) for item in client.lrange(RESTORE_PUBLIC, 0, -1)]
    assert [message["headers"]["id"] for message in restored] == [forged.task_id]
    assert restored[0]["properties"]["delivery_info"]["routing_key"] == RESTORE_PUBLIC
    assert accounts.get(user).balance_credits == 100
    client.delete(*_redis_lists(RESTORE_PUBLIC))


def test_two_messages_with_one_delivery_tag_are_both_restored(accounts, database):
    """kombu files an unacknowledged Redis message under its delivery tag. A producer that
    reuses another message's tag must not overwrite that record: after a warm shutdown both
    charges it held are back on the queue, so neither is lost."""
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(*_redis_lists(RESTORE_PUBLIC), *_redis_lists(RESTORE_ADMIN))
    user = accounts.credits_only()
    env = {"BILLING_QUEUE": RESTORE_PUBLIC, "BILLING_ADMIN_QUEUE": RESTORE_ADMIN}
    app = Celery("tag-producer", broker=REDIS_URL, backend=REDIS_URL, set_as_current=False)
    charges = []
    for n in range(2):
        charge = {"user_id": user, "idempotency_key": f"hostile-tag-{n}"}
        forged = forge.task_message(app, "billing.charge_generation", charge)
        forged.headers["eta"] = _in(3600)()  # held unacknowledged until the worker stops
        charges.append(forged)
    try:
        with celery_worker_process(f"{RESTORE_PUBLIC},{RESTORE_ADMIN}", 1, env=env):
            for forged in charges:
                item = forge.redis_item(RESTORE_PUBLIC, forged)
                item["properties"]["delivery_tag"] = "one-tag-for-both"
                client.lpush(RESTORE_PUBLIC, json.dumps(item))
            wait_until(lambda: client.llen(RESTORE_PUBLIC) == 0, "the worker holds both")
            time.sleep(0.5)
    finally:
        app.close()

    restored = [json.loads(item) for item in client.lrange(RESTORE_PUBLIC, 0, -1)]
    assert sorted(m["headers"]["id"] for m in restored) == sorted(f.task_id for f in charges)
    assert accounts.get(user).balance_credits == 100
    client.delete(*_redis_lists(RESTORE_PUBLIC))


def _to_admin(user: int, task_id: str) -> dict[str, Any]:
    """A grant's signature routed to the admin queue: sent by the worker, it would run there."""
    grant = {"user_id": user, "amount": GRANT, "idempotency_key": f"builtin-{task_id}"}
    return {
        **_linked("billing.grant_credits", grant, task_id),
        "options": {"task_id": task_id, "queue": ADMIN},
    }


# Celery's canvas tasks, each with arguments that send or call a grant.
BUILTINS: dict[str, Callable[[int, list[str]], dict[str, Any]]] = {
    "celery.chord": lambda user, ids: {
        "header": [_to_admin(user, ids[0])],
        "body": _to_admin(user, ids[1]),
    },
    "celery.group": lambda user, ids: {"tasks": [_to_admin(user, ids[0])], "result": [[ids[0]]]},
    "celery.chord_unlock": lambda user, ids: {
        "group_id": ids[0],
        "callback": _to_admin(user, ids[1]),
        "result": [],
    },
    "celery.map": lambda user, ids: {"task": _to_admin(user, ids[0]), "it": [[]]},
    "celery.starmap": lambda user, ids: {"task": _to_admin(user, ids[0]), "it": [[]]},
    "celery.chunks": lambda user, ids: {"task": _to_admin(user, ids[0]), "it": [[]], "n": 1},
}


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_celerys_canvas_tasks_on_the_public_queue_send_and_call_nothing(
    hostile: Hostile, accounts: Accounts, engine: Engine, name: str
):
    """Run, ``celery.chord`` sent its grants to the admin queue, where they ran privileged."""
    user = accounts.credits_only()
    linked = [str(uuid.uuid4()) for _ in range(2)]
    forgery = Forgery(outcome="unregistered")

    forged = hostile.send(name, BUILTINS[name](user, linked), forgery)

    _check_outcome(hostile.outcome(forged, forgery.outcome), forgery, lambda r: False)
    _assert_never_sent(hostile, linked)
    assert accounts.get(user).balance_credits == 100
    assert ledger_rows(engine, user) == []


def _garbage(app: Celery, grant: dict[str, Any]) -> dict[str, bytes]:
    """Items no kombu producer writes; the message-like ones are a grant's message, broken."""

    def broken(change: Callable[[dict[str, Any]], Any]) -> bytes:
        forged = forge.task_message(app, "billing.grant_credits", grant)
        return json.dumps(change(forge.redis_item(PUBLIC, forged))).encode()

    def without(*path: str) -> Callable[[dict[str, Any]], Any]:
        def change(item: dict[str, Any]) -> Any:
            *parents, key = path
            target = item
            for parent in parents:
                target = target[parent]
            del target[key]
            return item

        return change

    def with_(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
        return lambda item: {**item, key: value}

    return {
        "not-json": b"garbage{",
        "not-utf-8": b"\xff\xfe{",
        "nested-too-deep": b"[" * 100_000,
        "json-list": json.dumps([{"properties": {}}]).encode(),
        "json-string": b'"billing.grant_credits"',
        "json-null": b"null",
        "no-properties": broken(without("properties")),
        "properties-not-a-dict": broken(with_("properties", [1])),
        "no-body": broken(without("body")),
        "body-not-base64": broken(with_("body", "!")),
        "body-empty": broken(with_("body", "")),
        "no-content-type": broken(without("content-type")),
        # A missing or odd delivery tag is no longer malformed: the worker gives every task
        # message a tag of its own (worker.routes), so such a message is judged as any other.
    }


@pytest.mark.parametrize("hostile", ["redis"], indirect=True)
def test_malformed_items_on_redis_are_set_aside_and_the_worker_serves_on(
    hostile: Hostile, accounts: Accounts, engine: Engine
):
    """Anything pushed onto a billing list that is not a kombu message goes to the
    dead-letter list as it was pushed, with the queue it came from; the worker neither
    stops nor reconnects, and answers the honest charge sent after each item."""
    client = redis.Redis.from_url(hostile.broker.url)
    client.delete(rabbitmq.DEAD_LETTER_QUEUE)
    user = accounts.credits_only(balance_credits=1_000)
    cost = get_settings().generation_cost
    grant = {"user_id": user, "amount": GRANT, "idempotency_key": "hostile-garbage"}
    garbage = sorted(_garbage(hostile.app, grant).items())
    log_before = hostile.worker.log_path.read_text()

    answers, pushed = [], []
    for i, (name, item) in enumerate(garbage):
        queue = ADMIN if i % 3 == 0 else PUBLIC
        client.lpush(queue, item)
        pushed.append((queue, item))
        key = f"garbage-{name}"
        answers.append(hostile.call("billing.charge_generation", user_id=user, idempotency_key=key))

    assert all(answer["ok"] and answer["amount"] == cost for answer in answers), answers
    assert [row.entry_type for row in ledger_rows(engine, user)] == ["charge"] * len(garbage)
    assert count_rows(engine, "billing_requests") == len(garbage)
    assert accounts.get(user).balance_credits == 1_000 - cost * len(garbage)
    dead = [json.loads(item) for item in client.lrange(rabbitmq.DEAD_LETTER_QUEUE, 0, -1)]
    assert sorted((d["queue"], d["item"]) for d in dead) == sorted(
        (queue, item.decode("utf-8", "backslashreplace")) for queue, item in pushed
    )
    assert hostile.worker.poll() is None
    log = hostile.worker.log_path.read_text()[len(log_before) :]
    assert log.count("set aside a malformed item") == len(garbage), log
    assert "Connection to broker lost" not in log and "Unrecoverable" not in log, log
    # What an operator sees.
    env = {"BILLING_BROKER_URL": hostile.broker.url, "BILLING_QUEUE": PUBLIC}
    status = json.loads(_billing("status", "--json", env={**env, "BILLING_ADMIN_QUEUE": ADMIN}))
    listed = json.loads(_billing("dead-letters", "--limit", "100", "--json", env=env))
    assert status["dead_letters"] == len(garbage)
    assert [(letter["queue"], letter["reason"]) for letter in listed["dead_letters"]] == [
        (letter["queue"], letter["reason"]) for letter in reversed(dead)
    ]
    client.delete(rabbitmq.DEAD_LETTER_QUEUE)


def _billing(*args: str, env: dict[str, str]) -> str:
    command = [sys.executable, "-m", "cli.main", *args]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("hostile", ["redis"], indirect=True)
def test_a_malformed_item_is_set_aside_after_the_worker_reconnected(
    hostile: Hostile, accounts: Accounts
):
    """The guard is put on every new connection's channel, not only on the first one's."""
    client = redis.Redis.from_url(hostile.broker.url)
    client.delete(rabbitmq.DEAD_LETTER_QUEUE)
    user = accounts.credits_only()
    log_before = len(hostile.worker.log_path.read_text())
    db = str(client.connection_pool.connection_kwargs.get("db", 0))

    def waiting() -> list[str]:
        """The worker's blocked BRPOP: the only client of this test db blocked meanwhile
        (this process's own connections last ran BRPOP too, but idle now)."""
        return [
            c["id"]
            for c in client.client_list()
            if c["db"] == db and c["cmd"] == "brpop" and "b" in c["flags"]
        ]

    wait_until(lambda: bool(waiting()), "the worker waits on its queues")
    for connection in waiting():
        client.client_kill_filter(_id=connection)
    wait_until(
        lambda: "Connection to broker lost" in hostile.worker.log_path.read_text()[log_before:],
        "the worker noticed",
    )
    client.lpush(PUBLIC, b"garbage{")
    answer = hostile.call("billing.charge_generation", user_id=user, idempotency_key="reconnected")

    assert answer["ok"], answer
    assert client.llen(rabbitmq.DEAD_LETTER_QUEUE) == 1
    assert hostile.worker.poll() is None
    client.delete(rabbitmq.DEAD_LETTER_QUEUE)
