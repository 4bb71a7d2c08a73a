"""The worker runs under a role with no DDL rights: only the grants the README documents."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import RESULT_TIMEOUT, days_ago
from tests.procs import celery_worker_process
from worker import app

ROLE = "billing_worker_test"
QUEUE = "billing-least-privilege"
GRANTS = [
    "GRANT SELECT, INSERT, UPDATE ON users, credits_ledger, billing_requests TO {role}",
    "GRANT SELECT, INSERT ON allowance_resets TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON billing_holds TO {role}",
    "GRANT USAGE ON SEQUENCE credits_ledger_id_seq TO {role}",
    # The outbox: the relay marks events published, retention removes old ones.
    "GRANT SELECT, INSERT, UPDATE, DELETE ON billing_events TO {role}",
    "GRANT USAGE ON SEQUENCE billing_events_id_seq TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON billing_job_runs TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON credit_grants TO {role}",
    "GRANT USAGE ON SEQUENCE credit_grants_id_seq TO {role}",
]


@pytest.fixture
def worker_role_url(engine, database) -> str:
    with engine.begin() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": ROLE})
        if not exists.first():
            conn.execute(text(f"CREATE ROLE {ROLE} LOGIN"))
        conn.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ROLE}"))
        for grant in GRANTS:
            conn.execute(text(grant.format(role=ROLE)))
    return make_url(database).set(username=ROLE).render_as_string(hide_password=False)


def test_every_task_works_without_ddl_rights(accounts, worker_role_url):
    user = accounts.create(freemium_actions_used=2, freemium_reset_at=days_ago(31))
    calls = [
        ("billing.grant_credits", {"user_id": user, "amount": 50, "idempotency_key": "lp-g"}),
        (
            "billing.activate_subscription",
            {"user_id": user, "tier": "basic", "idempotency_key": "lp-s"},
        ),
        ("billing.charge_generation", {"user_id": user, "idempotency_key": "lp-c"}),
        ("billing.charge_assistant", {"user_id": user, "idempotency_key": "lp-a"}),
        ("billing.refund", {"idempotency_key": "lp-a"}),
        ("billing.reserve_generation", {"user_id": user, "idempotency_key": "lp-h1"}),
        ("billing.capture", {"idempotency_key": "lp-h1"}),
        ("billing.reserve_assistant", {"user_id": user, "idempotency_key": "lp-h2"}),
        ("billing.release", {"idempotency_key": "lp-h2"}),
        ("billing.expire_holds", {}),
        ("billing.publish_events", {}),
        ("billing.announce_subscriptions", {}),
        ("billing.prune_events", {}),
        ("billing.get_state", {"user_id": user}),
        ("billing.get_ledger", {"user_id": user}),
        ("billing.reset_due_limits", {}),
        ("billing.sync_tier_limits", {}),
        ("billing.audit", {}),
    ]
    with celery_worker_process(QUEUE, concurrency=1, env={"BILLING_DATABASE_URL": worker_role_url}):
        answers = [
            app.send_task(name, kwargs=kwargs, queue=QUEUE).get(timeout=RESULT_TIMEOUT)
            for name, kwargs in calls
        ]

    assert [a["code"] for a in answers] == [200] * len(calls), answers
    assert answers[-1]["clean"] is True
    role = create_engine(worker_role_url)
    try:
        with pytest.raises(Exception, match="permission denied"), role.begin() as conn:
            conn.execute(text("CREATE TABLE sneaky (id int)"))
        with pytest.raises(Exception, match="permission denied"), role.begin() as conn:
            conn.execute(text("DELETE FROM credits_ledger"))
        with pytest.raises(Exception, match="permission denied"), role.begin() as conn:
            conn.execute(text("DELETE FROM billing_holds"))
        # The reset journal is append-only for the worker.
        with pytest.raises(Exception, match="permission denied"), role.begin() as conn:
            conn.execute(text("UPDATE allowance_resets SET restored = 1"))
    finally:
        role.dispose()
