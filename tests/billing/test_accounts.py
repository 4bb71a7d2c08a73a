"""billing.open_account: accounts opened without SQL, and what a grant or a subscription for
an account not opened yet does (a 404 that is not remembered)."""

from __future__ import annotations

from sqlalchemy import text

from billing.core.settings import get_settings
from tests.conftest import RESULT_TIMEOUT, count_rows, ledger_rows


def _open(user_id: int, queue: str = "billing", **kwargs):
    from worker import app

    kwargs = {"user_id": user_id, **kwargs}
    return app.send_task("billing.open_account", kwargs=kwargs, queue=queue).get(
        timeout=RESULT_TIMEOUT
    )


def _role(engine, user_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT CAST(role AS text) FROM users WHERE id = :u"), {"u": user_id}
        ).scalar()


def test_opening_an_account_answers_its_state_and_charges_nothing(worker, engine):
    opened = _open(880_001)

    assert (opened["ok"], opened["code"], opened["opened"]) == (True, 200, True)
    assert opened["state"]["credits"]["balance"] == 0
    assert opened["state"]["freemium"]["remaining"] > 0
    assert _role(engine, 880_001) == "user"
    assert ledger_rows(engine, 880_001) == []
    # It works as an account: the freemium allowance pays a generation.
    charged = worker.charge_generation(880_001, "first-job")
    assert (charged["code"], charged["source"]) == (200, "freemium")


def test_opening_an_open_account_answers_it_as_it_is(worker, engine):
    _open(880_002)
    worker.charge_generation(880_002, "job")

    again = _open(880_002)
    as_admin = _open(880_002, queue=get_settings().admin_queue, role="admin")

    assert (again["code"], again["opened"]) == (200, False)
    assert again["state"]["freemium"]["used"] == 1
    assert (as_admin["code"], as_admin["opened"]) == (200, False)
    assert _role(engine, 880_002) == "user"  # its role is the one it was opened with


def test_an_admin_is_opened_from_the_admin_queue_only(worker, engine):
    refused = _open(880_003, role="admin")

    assert (refused["code"], refused["error"]) == (403, "forbidden_queue")
    assert _role(engine, 880_003) is None

    opened = _open(880_003, queue=get_settings().admin_queue, role="admin")
    assert (opened["code"], opened["opened"]) == (200, True)
    assert _role(engine, 880_003) == "admin"
    free = worker.charge_generation(880_003, "admin-job")
    assert (free["code"], free["source"]) == (200, "admin")


def test_bad_arguments_are_422_and_open_nothing(worker, engine):
    users_before = count_rows(engine, "users")

    bad_user = _open(0)
    bad_role = _open(880_004, queue=get_settings().admin_queue, role="owner")
    unknown = _open(880_004, plan="gold")

    assert (bad_user["code"], bad_user["field"]) == (422, "user_id")
    assert (bad_role["code"], bad_role["field"]) == (422, "role")
    assert (unknown["code"], unknown["field"]) == (422, "plan")
    # A role that asks for more than "user" is refused on the public queue before parsing.
    assert _open(880_004, role="owner")["code"] == 403
    assert count_rows(engine, "users") == users_before


def test_a_grant_before_the_account_is_opened_is_not_remembered(worker, engine):
    early = worker.grant(880_005, 300, "payment-pi_1")
    assert (early["code"], early["error"]) == (404, "user_not_found")

    _open(880_005)
    granted = worker.grant(880_005, 300, "payment-pi_1")
    again = worker.grant(880_005, 300, "payment-pi_1")

    assert (granted["code"], granted["replayed"], granted["amount"]) == (200, False, 300)
    assert (again["code"], again["replayed"]) == (200, True)
    assert granted["state"]["credits"]["balance"] == 300
    assert len(ledger_rows(engine, 880_005)) == 1


def test_a_subscription_before_the_account_is_opened_is_not_remembered(worker):
    early = worker.subscribe(880_006, "standard", "sub-order-1")
    assert (early["code"], early["error"]) == (404, "user_not_found")

    _open(880_006)
    activated = worker.subscribe(880_006, "standard", "sub-order-1")

    assert (activated["code"], activated["replayed"]) == (200, False)
    assert activated["state"]["subscription"]["active"] is True


def test_a_charge_before_the_account_is_opened_stays_refused(worker):
    early = worker.charge_generation(880_007, "job-too-early")
    _open(880_007)

    again = worker.charge_generation(880_007, "job-too-early")

    assert (early["code"], again["code"], again["replayed"]) == (404, 404, True)
