"""Holds under concurrency, from several worker processes: no hold is taken beyond the
balance, settled twice, or given back twice."""

from __future__ import annotations

import time
from collections import Counter

from tests.conftest import RESULT_TIMEOUT, hold_rows, ledger_rows
from tests.procs import celery_worker_process
from worker import app

QUEUE = "billing-hold-races"


def _send(name: str, **kwargs) -> object:
    return app.send_task(name, kwargs=kwargs, queue=QUEUE)


def _answers(pending: list) -> list[dict]:
    return [r.get(timeout=RESULT_TIMEOUT * 4) for r in pending]


def _funded(worker, accounts, credits: int) -> int:
    user = accounts.freemium_only()
    worker.grant(user, credits, f"fund-{user}")
    return user


def test_200_concurrent_reserves_hold_exactly_what_the_balance_allows(accounts, engine):
    user = accounts.no_funds(balance_credits=50)

    with celery_worker_process(QUEUE, concurrency=4):
        answers = _answers(
            [
                _send("billing.reserve_assistant", user_id=user, idempotency_key=f"r-{i}", cost=5)
                for i in range(200)
            ]
        )

    codes = Counter(a["code"] for a in answers)
    assert codes == {200: 10, 402: 190}
    assert accounts.get(user).balance_credits == 0
    holds = hold_rows(engine, user)
    assert len(holds) == 10 and {h.status for h in holds} == {"held"}
    assert sorted(r.balance_credits_after for r in ledger_rows(engine, user)) == list(
        range(0, 50, 5)
    )


def test_capture_and_release_racing_on_one_hold_exactly_one_wins(worker, accounts, engine):
    user = _funded(worker, accounts, 300)
    keys = [f"job-{i}" for i in range(30)]
    for key in keys:
        worker.reserve_assistant(user, key, cost=10)

    with celery_worker_process(QUEUE, concurrency=4):
        pending = []
        for n, key in enumerate(keys):  # the two in either order, sent back to back
            pair = [
                ("capture", _send("billing.capture", idempotency_key=key)),
                ("release", _send("billing.release", idempotency_key=key)),
            ]
            pending.extend(pair if n % 2 else pair[::-1])
        answers = [(verb, result.get(timeout=RESULT_TIMEOUT * 4)) for verb, result in pending]

    by_key: dict[str, list[tuple[str, dict]]] = {}
    for verb, answer in answers:
        by_key.setdefault(answer["idempotency_key"], []).append((verb, answer))
    captured = 0
    for key in keys:
        outcomes = sorted(answer["code"] for _verb, answer in by_key[key])
        assert outcomes == [200, 409], (key, by_key[key])
        winner = next(verb for verb, answer in by_key[key] if answer["code"] == 200)
        loser = next(answer for _verb, answer in by_key[key] if answer["code"] == 409)
        assert loser["error"] == "hold_closed"
        assert loser["status"] == {"capture": "captured", "release": "released"}[winner]
        captured += winner == "capture"
    assert accounts.get(user).balance_credits == 300 - 10 * captured
    statuses = Counter(h.status for h in hold_rows(engine, user))
    assert statuses == {"captured": captured, "released": 30 - captured}
    assert worker.audit(user)["clean"] is True


def test_expiry_sweeps_racing_each_other_and_lazy_expiry_return_each_hold_once(
    worker, accounts, engine
):
    users = [_funded(worker, accounts, 100) for _ in range(20)]
    for user in users:
        for n in range(3):
            worker.reserve_assistant(user, f"h-{user}-{n}", cost=10, ttl_seconds=1)
    time.sleep(1.2)

    with celery_worker_process(QUEUE, concurrency=4):
        sweeps = [_send("billing.expire_holds"), _send("billing.expire_holds")]
        reads = [_send("billing.get_state", user_id=user) for user in users]
        more = [_send("billing.expire_holds")]
        swept = _answers(sweeps + more)
        states = _answers(reads)

    assert all(s["code"] == 200 for s in swept)
    assert sum(s["expired"] for s in swept) <= 60  # the rest expired lazily, by the reads
    assert all(s["state"]["credits"]["balance"] == 100 for s in states)
    assert all(s["state"]["held"]["credits"] == 0 for s in states)
    expiries = [r for r in ledger_rows(engine) if r.entry_type == "expire"]
    assert len(expiries) == 60 and len({r.hold_key for r in expiries}) == 60
    assert {h.status for h in hold_rows(engine)} == {"expired"}
    assert [accounts.get(u).balance_credits for u in users] == [100] * 20
    assert worker.audit()["clean"] is True
