"""The producer client, in a process that has only Celery (and redis) installed."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from amqp.exceptions import MessageNacked
from celery import Celery
from kombu import Connection
from kombu.exceptions import OperationalError as KombuOperationalError

import billing_client
from billing_client import (
    BillingClient,
    BillingFailed,
    BillingTimeout,
    NotConfirmed,
    OutcomeUnknown,
)
from tests import brokers
from tests.procs import celery_worker_process
from tests.services import REDIS_URL
from worker import app

CLIENT_PACKAGE = Path(billing_client.__file__).resolve().parent.parent  # clients/python
LOCK = CLIENT_PACKAGE.parent.parent / "requirements.lock"
# What the client must not bring: the worker's packages, by distribution and by module.
WORKER_ONLY = ("sqlalchemy", "psycopg", "alembic", "pydantic", "flower", "billing-processor")

PRODUCER = """
import json, sys
for forbidden in ("sqlalchemy", "psycopg", "pydantic", "alembic", "flower", "billing",
                  "models", "worker", "tasks"):
    try:
        __import__(forbidden)
    except ImportError:
        continue
    sys.exit(f"{forbidden} is importable: this is not a Celery-only process")

from billing_client import BillingClient, BillingFailed, BillingTimeout, OutcomeUnknown

client = BillingClient(broker_url=sys.argv[1], result_backend=sys.argv[3], timeout=30)
user, broke = int(sys.argv[2]), int(sys.argv[4])
opened = client.open_account(user)
granted = client.grant_credits(user, 100, "producer-pay-1", meta={"payment": "pi_1"})
paid = client.charge_generation(user, "producer-1", meta={"job": "j-1"})
again = client.charge_generation(user, "producer-1", meta={"job": "j-1"})
refunded = client.refund("producer-1", reason="generation failed")
held = client.reserve_generation(user, "producer-2", ttl_seconds=60, meta={"job": "j-2"})
captured = client.capture("producer-2", amount=4)
held_too = client.reserve_assistant(user, "producer-3", cost=3)
released = client.release("producer-3", reason="generation failed")
unpaid = client.charge_assistant(broke, "producer-402")
batch = client.charge_batch([
    {"user_id": user, "idempotency_key": "producer-b1", "operation": "assistant", "cost": 2},
    {"user_id": broke, "idempotency_key": "producer-b2", "operation": "assistant"},
])
state = client.get_state(user)
print(json.dumps({
    "opened": [opened.ok, opened.opened],
    "granted": [granted.ok, granted.amount],
    "paid": [paid.ok, paid.code, paid.source, paid.amount, paid.replayed],
    "again": [again.ok, again.replayed, again.ledger_id == paid.ledger_id],
    "refunded": [refunded.ok, refunded.amount],
    "held": [held.ok, held.source, held.amount, held.hold["status"], held_too.amount],
    "captured": [captured.ok, captured.amount, captured.hold["status"]],
    "released": [released.ok, released.amount, released.hold["status"]],
    "unpaid": [unpaid.code, unpaid.error, unpaid.payment_required],
    "batch": [[item.code, item.amount] for item in batch],
    "balance": state.state["credits"]["balance"],
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("sqlalchemy", "psycopg")),
}))
"""


@pytest.fixture(scope="module")
def producer_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv with the billing-client distribution installed from
    clients/python (through the lock) and nothing else."""
    root = tmp_path_factory.mktemp("producer")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = ["install", "-q", "--disable-pip-version-check", "-c", str(LOCK)]
    subprocess.run(
        [python, "-m", "pip", *install, str(CLIENT_PACKAGE)],
        check=True,
        timeout=600,
        cwd=root,  # not the checkout: nothing of ours on the path but what pip installed
    )
    return python


def test_the_client_package_installs_celery_and_nothing_of_the_worker(producer_python):
    listed = subprocess.run(
        [producer_python, "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}

    assert {"billing-client", "celery", "redis", "kombu", "amqp"} <= installed
    assert not {name for name in installed if name.startswith(WORKER_ONLY)}, installed


def test_client_charges_from_a_celery_only_process(worker, accounts, producer_python, tmp_path):
    user = accounts.credits_only(balance_credits=0)  # open: open_account answers it as it is
    broke = accounts.no_funds()
    run = subprocess.run(
        [producer_python, "-c", PRODUCER, REDIS_URL, str(user), REDIS_URL, str(broke)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _check_producer_report(run, producer_python)


def test_client_on_rabbitmq_from_a_celery_only_process(
    engine, accounts, producer_python, rabbitmq_url, tmp_path
):
    """The same producer on RabbitMQ: it declares the quorum queues as the worker does (a
    different declaration would be refused) and its publishes are confirmed."""
    user = accounts.credits_only(balance_credits=0)
    broke = accounts.no_funds()
    python = producer_python
    env = {
        "BILLING_BROKER_URL": rabbitmq_url,
        "BILLING_QUEUE": "billing",
        "BILLING_ADMIN_QUEUE": "billing-admin",
    }
    producer = Celery("control", broker=rabbitmq_url)
    with celery_worker_process("billing,billing-admin", 2, env=env, control_app=producer):
        run = subprocess.run(
            [python, "-c", PRODUCER, rabbitmq_url, str(user), REDIS_URL, str(broke)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    producer.close()
    _check_producer_report(run, python)
    queues = brokers.rabbitmqctl(
        "list_queues", "-p", Connection(rabbitmq_url).virtual_host, "name", "type"
    ).stdout.split("\n")
    assert "billing\tquorum" in queues and "billing-admin\tquorum" in queues


def test_a_message_rabbitmq_refuses_raises_not_confirmed(rabbitmq_url):
    """A queue at its length limit refuses a publish (reject-publish overflow): RabbitMQ
    answers with a negative confirm, and the producer is told the message was not taken."""
    queue = "billing-capped"
    vhost = Connection(rabbitmq_url).virtual_host
    capped = brokers.rabbitmqctl(
        "set_policy", "-p", vhost, "--apply-to", "queues", "cap", f"^{queue}$",
        '{"max-length": 1}',
    )  # fmt: skip
    assert capped.returncode == 0, capped.stderr
    client = BillingClient(
        broker_url=rabbitmq_url, result_backend=REDIS_URL, queue=queue, admin_queue=queue
    )
    try:
        # Fill it: a quorum queue takes one message past its limit before it refuses.
        for _ in range(3):
            try:
                client.app.send_task(
                    "billing.charge_generation", kwargs={"user_id": 1, "idempotency_key": "cap"},
                    queue=queue,
                )  # fmt: skip
            except KombuOperationalError:
                break
        full = brokers.queue_length(rabbitmq_url, queue)
        with pytest.raises(NotConfirmed) as refused:
            client.charge_generation(1, "cap-2")
    finally:
        client.app.close()
        brokers.rabbitmqctl("clear_policy", "-p", vhost, "cap")
    assert full >= 1
    assert isinstance(refused.value, OutcomeUnknown)  # resend with the same key
    assert isinstance(refused.value.__cause__.__cause__, MessageNacked)
    assert brokers.queue_length(rabbitmq_url, queue) == full  # nothing more was queued


def _check_producer_report(run: subprocess.CompletedProcess, python: Path) -> None:
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["opened"] == [True, False]
    assert report["granted"] == [True, 100]
    assert report["paid"] == [True, 200, "credits", 10, False]
    assert report["again"] == [True, True, True]
    assert report["refunded"] == [True, 10]
    assert report["held"] == [True, "credits", 10, "held", 3]
    assert report["captured"] == [True, 4, "captured"]
    assert report["released"] == [True, 3, "released"]
    assert report["unpaid"] == [402, "not_enough_credits", True]
    assert report["batch"] == [[200, 2], [402, None]]
    assert report["balance"] == 94
    assert report["modules"] == []
    assert sys.executable != str(python)


def test_client_result_object_and_rejections(worker, accounts):
    user = accounts.no_funds()
    client = BillingClient(app, timeout=30)

    rejected = client.charge_assistant(user, "cl-402")
    invalid = client.charge_generation(user, "cl-422", cost=-1)
    ledger = client.get_ledger(user)

    assert (rejected.ok, rejected.code, rejected.error, rejected.payment_required) == (
        False,
        402,
        "not_enough_credits",
        True,
    )
    assert (invalid.code, invalid.field) == (422, "cost")
    assert ledger.ok and ledger.raw["entries"] == []


def test_client_opens_accounts_on_the_queue_their_role_needs(worker):
    client = BillingClient(app, timeout=30)

    opened = client.open_account(882_001)
    again = client.open_account(882_001)
    admin = client.open_account(882_002, role="admin")
    paid = client.grant_credits(882_001, 25, "cl-open-pay")

    assert (opened.code, opened.opened, again.opened) == (200, True, False)
    assert (admin.code, admin.opened, admin.state["role"]) == (200, True, "admin")
    assert (paid.code, paid.state["credits"]["balance"]) == (200, 25)


def test_an_unknown_outcome_is_resolved_by_the_same_key_not_a_new_one(worker, accounts):
    # A worker charged the job, but the producer never heard: its wait timed out.
    user = accounts.credits_only()
    charged = worker.charge_generation(user, "cl-lost-answer")
    impatient = BillingClient(app, queue="billing-nobody-listens", timeout=0.5)
    with pytest.raises(OutcomeUnknown) as unknown:
        impatient.charge_generation(user, "cl-lost-answer")  # nobody consumes that queue
    assert isinstance(unknown.value, BillingTimeout)
    assert issubclass(BillingFailed, OutcomeUnknown)

    resent = BillingClient(app, timeout=30).charge_generation(user, "cl-lost-answer")

    assert (resent.replayed, resent.ledger_id) == (True, charged["ledger_id"])
    assert accounts.get(user).balance_credits == 100 - charged["amount"]


def test_the_client_declares_the_queues_as_the_workers_do_on_rabbitmq():
    client = BillingClient(
        broker_url="amqp://guest:guest@127.0.0.1:5672//", result_backend=REDIS_URL,
        delivery_limit=3,
    )  # fmt: skip
    declared = {q.name: q.queue_arguments for q in client.app.conf.task_queues}
    assert set(declared) == {"billing", "billing-admin"}
    assert all(args["x-queue-type"] == "quorum" for args in declared.values())
    assert all(args["x-delivery-limit"] == 3 for args in declared.values())
    assert client.app.conf.broker_transport_options == {"confirm_publish": True}
    # On Redis, nothing of RabbitMQ's.
    assert not BillingClient(broker_url=REDIS_URL, result_backend=REDIS_URL).app.conf.task_queues


def test_client_grants_with_terms_draws_and_voids(worker, accounts):
    user = accounts.freemium_only()
    client = BillingClient(broker_url=REDIS_URL, result_backend=REDIS_URL, timeout=30)
    expires = datetime.now(UTC) + timedelta(days=3)

    promo = client.grant_credits(
        user, 25, "client-promo", expires_at=expires, priority=5, category="promotional"
    )
    pack = client.grant_credits(user, 40, "client-pack", meta={"payment": "pi_1"})
    paid = client.charge_assistant(user, "client-job", cost=30)
    voided = client.void_grant("client-pack", reason="chargeback")

    assert promo.grant is not None and promo.grant["category"] == "promotional"
    assert datetime.fromisoformat(promo.grant["expires_at"]) == expires
    assert (pack.grant["priority"], pack.grant["expires_at"]) == (50, None)
    assert paid.credits_drawn == [
        {"grant": "client-promo", "amount": 25},
        {"grant": "client-pack", "amount": 5},
    ]
    assert (voided.ok, voided.amount, voided.grant["status"]) == (True, 35, "voided")
    with pytest.raises(ValueError, match="timezone-aware"):
        client.grant_credits(user, 1, "naive", expires_at=datetime(2030, 1, 1))
