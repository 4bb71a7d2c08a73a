"""The producer client, in a process that has only Celery (and redis) installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import billing_client
from billing_client import BillingClient, BillingFailed, BillingTimeout, OutcomeUnknown
from tests.services import REDIS_URL
from worker import app

ROOT = Path(billing_client.__file__).resolve().parent

PRODUCER = """
import json, sys
for forbidden in ("sqlalchemy", "psycopg", "pydantic", "billing", "models", "worker", "tasks"):
    try:
        __import__(forbidden)
    except ImportError:
        continue
    sys.exit(f"{forbidden} is importable: this is not a Celery-only process")

from billing_client import BillingClient, BillingFailed, BillingTimeout, OutcomeUnknown

client = BillingClient(broker_url=sys.argv[1], result_backend=sys.argv[1], timeout=30)
user = int(sys.argv[2])
paid = client.charge_generation(user, "producer-1", meta={"job": "j-1"})
again = client.charge_generation(user, "producer-1", meta={"job": "j-1"})
refunded = client.refund("producer-1", reason="generation failed")
held = client.reserve_generation(user, "producer-2", ttl_seconds=60, meta={"job": "j-2"})
captured = client.capture("producer-2", amount=4)
held_too = client.reserve_assistant(user, "producer-3", cost=3)
released = client.release("producer-3", reason="generation failed")
state = client.get_state(user)
print(json.dumps({
    "paid": [paid.ok, paid.code, paid.source, paid.amount, paid.replayed],
    "again": [again.ok, again.replayed, again.ledger_id == paid.ledger_id],
    "refunded": [refunded.ok, refunded.amount],
    "held": [held.ok, held.source, held.amount, held.hold["status"], held_too.amount],
    "captured": [captured.ok, captured.amount, captured.hold["status"]],
    "released": [released.ok, released.amount, released.hold["status"]],
    "balance": state.state["credits"]["balance"],
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("sqlalchemy", "psycopg")),
}))
"""


def test_client_charges_from_a_celery_only_process(worker, accounts, tmp_path):
    user = accounts.credits_only()
    env_dir = tmp_path / "producer-venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "celery[redis]"],
        check=True,
        timeout=600,
    )
    src = tmp_path / "src"
    shutil.copytree(ROOT, src / "billing_client")

    run = subprocess.run(
        [python, "-c", PRODUCER, REDIS_URL, str(user)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["paid"] == [True, 200, "credits", 10, False]
    assert report["again"] == [True, True, True]
    assert report["refunded"] == [True, 10]
    assert report["held"] == [True, "credits", 10, "held", 3]
    assert report["captured"] == [True, 4, "captured"]
    assert report["released"] == [True, 3, "released"]
    assert report["balance"] == 96
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
