"""The fault-injection harness: a fleet of accounts, a stream of charges, and the invariants.

Every scenario funds 200 accounts through the real domain code (so the ledger explains every
balance), sends 10 charges to each (2,000 in all: 7 generations and 3 assistant calls, every
credit charge at 10 credits), injects its fault while workers process the stream, waits until
every key has its outcome and then checks:

- every key sent has exactly one outcome, and the producer got an answer for every message;
- ``billing.audit`` is clean: credit balances equal the ledger, counters are explained by it;
- no counter exceeds its limit and no balance is negative;
- the successful charges are exactly what the starting balances and allowances allow.

The load is shaped so that last number does not depend on the order the workers run the
charges in: each account sends at least as many generations as it has allowances, and more
charges in all than allowances plus credit units (or fewer than it can pay for, all of which
then succeed).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from sqlalchemy import Engine, text

from billing.core.settings import Settings
from billing.core.validation import GrantArgs, SubscriptionArgs
from billing.movements import frame, grants, subscriptions
from billing.storage.engine import create_db_engine, session_factory, transaction
from billing.storage.factory import connect
from models import User, UserRole
from tests.brokers import Broker

ACCOUNTS = 200
CHARGES_PER_ACCOUNT = 10  # 7 generations, 3 assistant calls
GENERATIONS = 7
COST = 10
FIRST_ID = 700_000

# The workers' settings in every scenario; small allowances, so every source is exercised.
WORKER_ENV = {
    "BILLING_FREEMIUM_LIMIT": "2",
    "BILLING_TIERS": '{"basic": 3, "standard": 100, "premium": 300}',
    "BILLING_GENERATION_COST": str(COST),
    "BILLING_ASSISTANT_COST": str(COST),
    # Redis hands an unacknowledged message to another worker after this long: short, so a
    # killed worker's messages come back within the test.
    "BILLING_VISIBILITY_TIMEOUT": "5",
    "BILLING_TASK_MAX_RETRIES": "12",
}

# kind: (role, subscription tier, credits granted) -> charges that succeed out of 10
KINDS: dict[str, tuple[UserRole, str | None, int]] = {
    "subscriber": (UserRole.USER, "basic", 20),  # 3 ops + 2 actions + 2 credit charges = 7
    "freemium": (UserRole.USER, None, 0),  # 2 actions = 2
    "credits": (UserRole.USER, None, 50),  # 2 actions + 5 credit charges = 7
    "admin": (UserRole.ADMIN, None, 0),  # everything = 10
    "rich": (UserRole.USER, None, 1000),  # everything = 10
}


def worker_settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        freemium_limit=2,
        tiers={"basic": 3, "standard": 100, "premium": 300},
        generation_cost=COST,
        assistant_cost=COST,
    )


def capacity(kind: str, settings: Settings) -> int:
    role, tier, credits = KINDS[kind]
    if role == UserRole.ADMIN:
        return CHARGES_PER_ACCOUNT
    allowances = settings.freemium_limit + (settings.tiers[tier] if tier else 0)
    return min(CHARGES_PER_ACCOUNT, allowances + credits // COST)


@dataclass
class Fleet:
    user_ids: list[int]
    expected_successes: int

    @property
    def keys(self) -> list[str]:
        return [f"f-{u}-{i}" for u in self.user_ids for i in range(CHARGES_PER_ACCOUNT)]


def prepare_fleet(database_url: str) -> Fleet:
    """Create and fund the accounts through the domain code, as the tasks would."""
    settings = worker_settings(database_url)
    engine = create_db_engine(database_url, pool_size=1)
    factory = session_factory(engine)
    kinds = list(KINDS)
    users, expected = [], 0
    try:
        with transaction(factory) as session:
            for n in range(ACCOUNTS):
                role = KINDS[kinds[n % len(kinds)]][0]
                session.add(User(id=FIRST_ID + n, role=role, freemium_reset_at=datetime.now(UTC)))
        with connect(engine) as conn:
            for n in range(ACCOUNTS):
                kind = kinds[n % len(kinds)]
                _role, tier, credits = KINDS[kind]
                user_id = FIRST_ID + n
                if tier:
                    args = {"user_id": user_id, "tier": tier, "idempotency_key": f"sub-{user_id}"}
                    movement = subscriptions.Subscription(SubscriptionArgs.parse((), args))
                    assert frame.run(conn, movement, settings)["ok"]
                if credits:
                    args = {
                        "user_id": user_id,
                        "amount": credits,
                        "idempotency_key": f"fund-{user_id}",
                    }
                    assert frame.run(conn, grants.Grant(GrantArgs.parse((), args)), settings)["ok"]
                users.append(user_id)
                expected += capacity(kind, settings)
    finally:
        engine.dispose()
    return Fleet(users, expected)


def charge_messages(fleet: Fleet, hold_ttl: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The stream, interleaved across accounts so every worker sees every account: charges,
    or with ``hold_ttl`` reserves of holds that live that many seconds."""
    verb = "charge" if hold_ttl is None else "reserve"
    messages = []
    for i in range(CHARGES_PER_ACCOUNT):
        for user in fleet.user_ids:
            name = f"billing.{verb}_{'generation' if i < GENERATIONS else 'assistant'}"
            kwargs = {"user_id": user, "idempotency_key": f"f-{user}-{i}", "cost": COST}
            if hold_ttl is not None:
                kwargs["ttl_seconds"] = hold_ttl
            messages.append((name, kwargs))
    return messages


def send_stream(
    app: Celery, fleet: Fleet, queue: str, copies: int = 1, hold_ttl: int | None = None
) -> list[tuple[str, AsyncResult]]:
    sent = []
    for name, kwargs in charge_messages(fleet, hold_ttl):
        for _ in range(copies):
            sent.append(
                (kwargs["idempotency_key"], app.send_task(name, kwargs=kwargs, queue=queue))
            )
    return sent


def outcomes_stored(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM billing_requests WHERE idempotency_key LIKE 'f-%'")
        ).scalar_one()


def wait_for_outcomes(engine: Engine, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if outcomes_stored(engine) >= count:
            return
        time.sleep(0.25)
    raise AssertionError(f"only {outcomes_stored(engine)} of {count} outcomes after {timeout}s")


def missing_keys(engine: Engine, fleet: Fleet) -> list[str]:
    with engine.connect() as conn:
        stored = set(
            conn.execute(
                text(
                    "SELECT idempotency_key FROM billing_requests WHERE idempotency_key LIKE 'f-%'"
                )
            ).scalars()
        )
    return [k for k in fleet.keys if k not in stored]


def resend_missing(
    app: Celery,
    engine: Engine,
    fleet: Fleet,
    sent: list[tuple[str, AsyncResult]],
    queue: str,
    settle: float = 60,
    hold_ttl: int | None = None,
) -> list[str]:
    """What a producer does when an answer does not come: send the same key again.

    Only for keys that still have no outcome once the stream has settled; the answer to the
    resent message replaces the one that never came.
    """
    try:
        wait_for_outcomes(engine, len(fleet.keys), timeout=settle)
        return []
    except AssertionError:
        pass
    missing = set(missing_keys(engine, fleet))
    messages = dict(
        (kwargs["idempotency_key"], (name, kwargs))
        for name, kwargs in charge_messages(fleet, hold_ttl)
    )
    for i, (key, _result) in enumerate(sent):
        if key in missing:
            name, kwargs = messages[key]
            sent[i] = (key, app.send_task(name, kwargs=kwargs, queue=queue))
    return sorted(missing)


def wait_until_progress(engine: Engine, at_least: int, timeout: float = 120) -> None:
    """Block until the stream is under way: at least this many outcomes stored."""
    wait_for_outcomes(engine, at_least, timeout)


def collect(sent: list[tuple[str, AsyncResult]], timeout: float = 120) -> dict[str, list[dict]]:
    """Every answer the producer got, by key."""
    answers: dict[str, list[dict]] = {}
    for key, result in sent:
        answer = result.get(timeout=timeout)
        answers.setdefault(key, []).append(answer)
    return answers


@dataclass
class Report:
    sent: int
    keys: int
    resent: list[str]
    outcomes: dict[int, int]
    successes: int
    expected_successes: int
    ledger_charges: int

    def line(self) -> str:
        return (
            f"{self.sent} charges sent for {self.keys} keys, {len(self.resent)} resent by the"
            f" producer; outcomes by code "
            f"{dict(sorted(self.outcomes.items()))}; {self.successes} succeeded "
            f"(expected {self.expected_successes}), {self.ledger_charges} ledger charge rows; "
            "audit clean, no counter over its limit, no negative balance"
        )


def finish(
    engine: Engine,
    app: Celery,
    fleet: Fleet,
    sent: list[tuple[str, AsyncResult]],
    queue: str,
    broker: Broker,
    hold_ttl: int | None = None,
) -> tuple[Report, dict[str, list[dict]]]:
    """Let the stream settle, resend what has no outcome (as a producer whose answer did not
    come does), collect every answer and check the invariants; no more keys resent than the
    broker may need (none on RabbitMQ)."""
    resent = resend_missing(app, engine, fleet, sent, queue, hold_ttl=hold_ttl)
    wait_for_outcomes(engine, len(fleet.keys))
    answers = collect(sent)
    entry_type = "charge" if hold_ttl is None else "hold"
    report = check_invariants(engine, app, fleet, answers, len(sent), queue, resent, entry_type)
    # Redis: a message or two caught in kombu's window at the fault, never the stream.
    assert len(resent) <= broker.resends_allowed, resent
    return report, answers


def check_invariants(
    engine: Engine,
    app: Celery,
    fleet: Fleet,
    answers: dict[str, list[dict]],
    sent: int,
    queue: str,
    resent: list[str],
    entry_type: str = "charge",
) -> Report:
    keys = fleet.keys
    with engine.connect() as conn:
        stored = dict(
            conn.execute(
                text(
                    "SELECT idempotency_key, (response->>'code')::int FROM billing_requests"
                    " WHERE idempotency_key LIKE 'f-%'"
                )
            ).all()
        )
        ledger_keys = Counter(
            conn.execute(
                text("SELECT idempotency_key FROM credits_ledger WHERE entry_type = :t"),
                {"t": entry_type},
            ).scalars()
        )
        over_limit = conn.execute(
            text(
                "SELECT count(*) FROM users WHERE subscription_ops_used > subscription_ops_limit"
                " OR freemium_actions_used > 2 OR balance_credits < 0"
            )
        ).scalar_one()

    # Exactly one outcome per key: one remembered outcome, at most one charge (or hold) row.
    assert set(stored) == set(keys)
    assert all(count == 1 for count in ledger_keys.values())
    assert {k for k, code in stored.items() if code == 200} == set(ledger_keys)
    # The producer got an answer for every message, and every copy of a key the same one.
    assert set(answers) == set(keys)
    for key, copies in answers.items():
        assert all(copy["code"] == stored[key] for copy in copies), (key, copies)
        first = [{k: v for k, v in c.items() if k != "replayed"} for c in copies]
        assert all(c == first[0] for c in first), (key, copies)
    assert over_limit == 0
    successes = sum(1 for code in stored.values() if code == 200)
    assert successes == fleet.expected_successes
    audit = app.send_task("billing.audit", queue=queue).get(timeout=120)
    assert audit["clean"], audit["mismatches"][:5]
    return Report(
        sent=sent,
        keys=len(keys),
        resent=resent,
        outcomes=dict(Counter(stored.values())),
        successes=successes,
        expected_successes=fleet.expected_successes,
        ledger_charges=sum(ledger_keys.values()),
    )
