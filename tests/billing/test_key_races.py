"""Keys racing in concurrent transactions, driven step by step on the PostgreSQL store (the
production path of every keyed movement) against the real database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from billing.core.settings import get_settings
from billing.core.validation import ChargeArgs, GrantArgs, RefundArgs, SubscriptionArgs
from billing.movements import charges, frame, grants, refunds, subscriptions
from billing.movements.store import KeyRaced
from billing.storage.psycopg_store import PgStore
from models import Operation
from tests.conftest import ledger_rows
from worker import app

MakeMovement = Callable[[int, str], frame.Movement]

KEYED: dict[str, MakeMovement] = {
    "charge": lambda user, key: charges.Charge(
        Operation.GENERATION, ChargeArgs.parse((), {"user_id": user, "idempotency_key": key})
    ),
    "grant": lambda user, key: grants.Grant(
        GrantArgs.parse((), {"user_id": user, "amount": 50, "idempotency_key": key})
    ),
    "subscription": lambda user, key: subscriptions.Subscription(
        SubscriptionArgs.parse((), {"user_id": user, "tier": "premium", "idempotency_key": key})
    ),
}


def dsn(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def connect(engine: Engine) -> Iterator[Callable[..., psycopg.Connection]]:
    opened: list[psycopg.Connection] = []

    def open_one(**kwargs: Any) -> psycopg.Connection:
        conn = psycopg.connect(dsn(engine), prepare_threshold=None, **kwargs)
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        conn.close()


class Racer(threading.Thread):
    """One movement through the frame on its own PostgreSQL connection."""

    def __init__(self, conn: psycopg.Connection, run: Callable[[PgStore], dict]) -> None:
        super().__init__(daemon=True)
        self.conn, self.run_on = conn, run
        self.pid = conn.info.backend_pid
        self.outcome: dict | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.outcome = self.run_on(PgStore(self.conn))
        except BaseException as exc:
            self.error = exc


def wait_until_waiting(observer: psycopg.Connection, pids: list[int]) -> None:
    """Until every one of ``pids`` waits for a lock held by another transaction."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        waiting = {
            pid
            for (pid,) in observer.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            )
        }
        if set(pids) <= waiting:
            return
        time.sleep(0.02)
    raise AssertionError(f"sessions {pids} never waited for a lock")


@pytest.mark.parametrize("kind", sorted(KEYED))
def test_one_key_for_two_users_commits_once_and_the_loser_writes_nothing(
    kind, engine, accounts, connect
):
    make = KEYED[kind]
    first, second, holder = (accounts.credits_only(balance_credits=100) for _ in range(3))
    settings = get_settings()
    observer = connect(autocommit=True)
    # A transaction that wrote the key and has not committed: every movement that reaches the
    # unique index with the same key waits for it, after it locked its own account and found
    # the key free.
    blocker = connect()
    blocker.execute(
        "INSERT INTO credits_ledger (user_id, entry_type, source, amount, idempotency_key,"
        " balance_credits_after, subscription_ops_used_after, freemium_actions_used_after)"
        " VALUES (%s, 'grant', 'credits', 1, 'shared', 0, 0, 0)",
        (holder,),
    )
    racers = [
        Racer(
            connect(autocommit=True),
            lambda store, u=user: frame.run(store, make(u, "shared"), settings),
        )
        for user in (first, second)
    ]
    for racer in racers:
        racer.start()
    wait_until_waiting(observer, [r.pid for r in racers])

    blocker.rollback()  # the key is free again: the two movements meet at the unique index
    for racer in racers:
        racer.join(timeout=10)

    winners = [r for r in racers if r.error is None]
    losers = [r for r in racers if r.error is not None]
    assert len(winners) == 1 and len(losers) == 1
    assert isinstance(losers[0].error, KeyRaced)
    assert winners[0].outcome["ok"] is True
    loser_user = first if losers[0] is racers[0] else second
    winner_user = second if loser_user == first else first
    # Nothing of the loser's transaction stayed: no ledger row, its account as it was.
    assert [r.user_id for r in ledger_rows(engine) if r.idempotency_key == "shared"] == [
        winner_user
    ]
    loser = accounts.get(loser_user)
    assert (loser.balance_credits, loser.subscription_type) == (100, None)
    # Run again (as the task does after KeyRaced), the loser answers the winner's key: 409.
    again = frame.run(PgStore(connect(autocommit=True)), make(loser_user, "shared"), settings)
    assert (again["code"], again["error"]) == (409, "idempotency_conflict")


def _refund(user: int, key: str) -> Callable[[PgStore], dict]:
    return lambda store: refunds.refund(
        store, RefundArgs.parse((), {"idempotency_key": key}), get_settings()
    )


@pytest.mark.parametrize("kind", [*sorted(KEYED), "refund"])
def test_one_key_twice_for_one_user_queues_on_the_lock_and_replays(kind, engine, accounts, connect):
    user = accounts.credits_only(balance_credits=100)
    settings = get_settings()
    if kind == "refund":
        charged = frame.run(
            PgStore(connect(autocommit=True)), KEYED["charge"](user, "job"), settings
        )
        assert charged["source"] == "credits"
        run = _refund(user, "job")
    else:
        run = lambda store: frame.run(store, KEYED[kind](user, "twice"), settings)  # noqa: E731
    observer = connect(autocommit=True)
    holder = connect()
    holder.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user,))
    racers = [Racer(connect(autocommit=True), run) for _ in range(2)]
    for racer in racers:
        racer.start()
    wait_until_waiting(observer, [r.pid for r in racers])

    holder.commit()
    for racer in racers:
        racer.join(timeout=10)

    assert [r.error for r in racers] == [None, None]
    outcomes = sorted((r.outcome for r in racers), key=lambda o: o["replayed"])
    assert [o["replayed"] for o in outcomes] == [False, True]
    assert outcomes[0]["ledger_id"] == outcomes[1]["ledger_id"]
    key = refunds.refund_key("job") if kind == "refund" else "twice"
    assert [r.idempotency_key for r in ledger_rows(engine, user)].count(key) == 1
    after = accounts.get(user)
    expected = {"charge": 90, "grant": 150, "subscription": 100, "refund": 100}[kind]
    assert after.balance_credits == expected


def test_worker_answers_a_raced_key_with_the_replay(worker, accounts):
    # Through the worker the KeyRaced path ends in a replay or a 409, never in a failure.
    user = accounts.credits_only(balance_credits=1000)
    other = accounts.credits_only(balance_credits=1000)

    pending = [
        app.send_task(
            "billing.charge_generation",
            kwargs={"user_id": u, "idempotency_key": f"twin-{i}"},
        )
        for i in range(30)
        for u in (user, other)
    ]
    outcomes = [p.get(timeout=30) for p in pending]

    by_key: dict[str, list[int]] = {}
    for i, o in enumerate(outcomes):
        by_key.setdefault(f"twin-{i // 2}", []).append(o["code"])
    assert all(sorted(codes) == [200, 409] for codes in by_key.values())
    spent = 2000 - accounts.get(user).balance_credits - accounts.get(other).balance_credits
    assert spent == 30 * get_settings().generation_cost
