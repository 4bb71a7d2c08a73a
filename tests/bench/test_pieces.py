"""The bench's pieces and floors run the billing code they price: each piece's task, run on a
real database, does what the billing worker does (the bench's figures are only worth what
these do)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, text

from bench import bare, pieces
from bench.app import DURABLE_INSERT_TABLE, _charge_in_memory
from billing.core.settings import get_settings
from billing.core.validation import ChargeArgs

CONFIG_VALUES = {
    "track_started": {"task_track_started": True},
    "backend_retry": {"result_backend_always_retry": True},
    "result_extended": {"result_extended": True},
    "events_off": {"worker_send_task_events": False, "task_send_sent_event": False},
}


def _app(piece: str) -> Celery:
    app = Celery(f"bench-test-{piece}", set_as_current=False)
    app.conf.update(bare.CONFIG)
    pieces.install(app, piece)
    return app


def _run(app: Celery, **kwargs: Any) -> Any:
    return app.tasks["bare.noop"].apply(kwargs=kwargs).get()


def test_the_bare_floor_is_plain_celery_with_the_issues_settings():
    conf = bare.app.conf
    assert conf.task_acks_late and conf.worker_prefetch_multiplier == 1
    assert conf.worker_send_task_events and conf.task_send_sent_event
    assert conf.task_serializer == conf.result_serializer == "json"
    # None of the billing app's choices.
    assert not conf.task_track_started and not conf.result_backend_always_retry
    assert type(bare.app.tasks["bare.noop"]).Request == "celery.worker.request:Request"


@pytest.mark.parametrize("piece", sorted(pieces.CONFIG_PIECES))
def test_a_configuration_piece_sets_what_the_billing_app_sets(piece):
    app = _app(piece)
    for name, value in CONFIG_VALUES[piece].items():
        assert app.conf[name] == value, name
    if piece == "backend_retry":
        import celeryconfig

        assert app.conf.result_backend_max_retries == celeryconfig.result_backend_max_retries
    assert _run(app) == pieces.OK


def test_the_request_piece_runs_the_billing_request_class():
    app = _app("request")
    assert app.tasks["bare.noop"].Request == "tasks.request:BillingRequest"


def test_the_outcome_log_piece_writes_the_billing_outcome_line(capfd):
    assert _run(_app("outcome_log"), user_id=7, idempotency_key="k-1") == pieces.OK
    line = json.loads(capfd.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "billing.outcome" and line["user_id"] == 7 and line["code"] == 200


def test_the_result_size_piece_returns_a_real_charges_answer():
    result = _run(_app("result_size"))
    assert result["ok"] and result["source"] == "freemium" and "state" in result
    assert result["state"]["credits"]["balance"] == 1_000_000


def test_the_charge_frame_answers_as_a_charge_does():
    args = ChargeArgs.parse((), {"user_id": 3, "idempotency_key": "k", "include_state": False})
    answer = _charge_in_memory(args, get_settings())
    assert answer["code"] == 200 and answer["amount"] == 1 and "state" not in answer


def test_the_metric_and_check_pieces_answer():
    for piece in ("metrics", "events_check"):
        assert _run(_app(piece)) == pieces.OK


def test_the_database_pieces_check_out_a_connection_and_make_two_round_trips(
    engine: Engine, accounts
):
    user = accounts.credits_only()
    with engine.begin() as conn:
        conn.execute(text(DURABLE_INSERT_TABLE))
    try:
        assert _run(_app("pool_checkout"), user_id=user, idempotency_key="p-1") == pieces.OK
        assert _run(_app("round_trips"), user_id=user, idempotency_key="r-1") == pieces.OK
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT idempotency_key, user_id FROM bench_durable_insert"))
            assert [tuple(r) for r in rows] == [("r-1", user)]
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE bench_durable_insert"))


def test_an_unknown_piece_is_refused():
    with pytest.raises(ValueError, match="unknown piece"):
        pieces.install(Celery("x", set_as_current=False), "nothing")
