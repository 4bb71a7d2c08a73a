"""Concurrent charges of one user from several worker processes never overspend."""

from __future__ import annotations

from tests.conftest import RESULT_TIMEOUT, ledger_rows
from tests.procs import celery_worker_process
from worker import app

QUEUE = "billing-concurrency"


def test_200_concurrent_charges_against_a_balance_of_50(accounts, engine):
    user = accounts.no_funds(balance_credits=50)

    with celery_worker_process(QUEUE, concurrency=4):
        pending = [
            app.send_task(
                "billing.charge_generation",
                kwargs={"user_id": user, "idempotency_key": f"race-{i}", "cost": 1},
                queue=QUEUE,
            )
            for i in range(200)
        ]
        outcomes = [r.get(timeout=RESULT_TIMEOUT * 4) for r in pending]

    codes = [o["code"] for o in outcomes]
    assert codes.count(200) == 50
    assert codes.count(402) == 150
    assert accounts.get(user).balance_credits == 0
    rows = ledger_rows(engine, user)
    assert len(rows) == 50 and sum(r.amount for r in rows) == 50
    assert sorted(r.balance_credits_after for r in rows) == list(range(50))
    with engine.connect() as conn:
        remembered = conn.exec_driver_sql("SELECT count(*) FROM billing_requests").scalar_one()
    assert remembered == 200
