"""Balance events through real movements, a real worker and a real consumer app: each type,
once per crossing, none for what rolled back, in each account's order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import text

from billing.core.settings import get_settings
from billing.core.validation import ChargeArgs
from billing.movements import charges, frame
from billing.storage.factory import connect
from models import Operation
from tests.conftest import event_rows, ledger_rows, shift_clock
from tests.procs import wait_until
from tests.services import REDIS_URL
from worker import app


def _types(events):
    return [event["type"] for event in events]


def test_credits_low_and_depleted_fire_on_each_downward_crossing(worker, accounts, consumer):
    cost = get_settings().generation_cost  # the default threshold: one generation
    user = accounts.credits_only(balance_credits=2 * cost + cost // 2)
    assert worker.charge_generation(user, "c1")["ok"]  # 1.5 generations left: above
    assert worker.charge_generation(user, "c2")["ok"]  # half a generation left: low
    assert worker.charge_generation(user, "c3")["code"] == 402  # nothing taken, no crossing
    assert worker.charge_generation(user, "c2")["replayed"]  # a redelivery: nothing new
    assert worker.grant(user, cost - cost // 2, "top-up")["ok"]  # back to one generation
    assert worker.charge_generation(user, "c4")["ok"]  # to 0: low again, and depleted

    events = consumer.of(user)
    assert _types(events) == ["credits.low", "credits.low", "credits.depleted"]
    low, low_again, depleted = events
    assert low["data"]["idempotency_key"] == "c2"
    assert low["data"]["balance"] == cost // 2
    assert low["data"]["threshold"] == cost
    assert low["data"]["state"]["credits"]["balance"] == cost // 2
    assert low_again["data"]["idempotency_key"] == depleted["data"]["idempotency_key"] == "c4"
    assert depleted["data"]["state"]["credits"]["balance"] == 0
    # The contract's fields, as keyword arguments of the product's task.
    for event in events:
        assert set(event) == {"event_id", "type", "user_id", "occurred_at", "data"}
        assert uuid.UUID(event["event_id"])
        assert datetime.fromisoformat(event["occurred_at"]).tzinfo is not None
    assert len({event["event_id"] for event in events}) == 3
    # Published right after each commit, by the movement's own task: no sweep ran.
    assert all(row.published_at is not None for row in event_rows(worker.engine, user))


def test_a_threshold_setting_and_the_off_switch(worker, accounts, consumer, settings_env):
    settings_env(low_credits_threshold="50")
    user = accounts.credits_only(balance_credits=60)
    assert worker.charge_assistant(user, "a1", cost=5)["ok"]  # 55
    assert worker.charge_assistant(user, "a2", cost=10)["ok"]  # 45: below 50
    assert _types(consumer.of(user)) == ["credits.low"]

    settings_env(low_credits_threshold="50", events_enabled="false")
    quiet = accounts.credits_only(balance_credits=60)
    assert worker.charge_assistant(quiet, "q1", cost=60)["ok"]  # low and depleted, unrecorded
    assert event_rows(worker.engine, quiet) == []
    assert consumer.of(quiet) == []


def test_freemium_exhausted_once_per_period(worker, accounts, consumer):
    limit = get_settings().freemium_limit
    user = accounts.freemium_only()
    for n in range(limit):
        assert worker.charge_generation(user, f"f{n}")["source"] == "freemium"
    assert _types(consumer.of(user)) == ["freemium.exhausted"]
    # The last free action given back and taken again: the same period, no second event.
    assert worker.refund(f"f{limit - 1}")["ok"]
    assert worker.charge_generation(user, "again")["source"] == "freemium"
    assert worker.reserve_generation(user, "held")["code"] == 402
    assert _types(consumer.of(user)) == ["freemium.exhausted"]

    # The next period. (31, not 30: shifting by exactly one period would make its start the
    # first one's start again, the same period to the event's id.)
    shift_clock(worker.engine, 31, [user])
    for n in range(limit):
        assert worker.charge_generation(user, f"next{n}")["source"] == "freemium"
    events = consumer.of(user)
    assert _types(events) == ["freemium.exhausted", "freemium.exhausted"]
    assert events[0]["event_id"] != events[1]["event_id"]
    assert events[0]["data"]["period_start"] != events[1]["data"]["period_start"]
    assert events[1]["data"]["idempotency_key"] == f"next{limit - 1}"
    assert events[1]["data"]["state"]["freemium"]["remaining"] == 0


def test_subscription_exhausted_by_a_charge_and_by_a_reserve(worker, accounts, consumer):
    user = accounts.subscriber(subscription_ops_used=98)
    assert worker.charge_generation(user, "s1")["source"] == "subscription"
    assert consumer.of(user) == []
    held = worker.reserve_generation(user, "s2")
    assert held["source"] == "subscription"
    events = consumer.of(user)
    assert _types(events) == ["subscription.exhausted"]
    assert events[0]["data"]["idempotency_key"] == "s2"
    assert events[0]["data"]["state"]["subscription"]["ops_remaining"] == 0
    # Released and taken again in the same period: still one.
    assert worker.release("s2")["ok"]
    assert worker.charge_generation(user, "s3")["source"] == "subscription"
    assert _types(consumer.of(user)) == ["subscription.exhausted"]


def test_hold_expired_from_the_sweep_and_from_a_movement(worker, accounts, consumer):
    swept = accounts.credits_only()
    touched = accounts.credits_only()
    assert worker.reserve_generation(swept, "h-swept", ttl_seconds=1)["ok"]
    assert worker.reserve_generation(touched, "h-touched", ttl_seconds=1)["ok"]
    shift_clock(worker.engine, 1 / 24, [swept, touched])
    assert worker.charge_assistant(touched, "after")["ok"]  # expires the hold first
    assert worker.expire_holds()["expired"] == 1

    for user, key in ((swept, "h-swept"), (touched, "h-touched")):
        (event,) = consumer.of(user)
        assert event["type"] == "hold.expired"
        assert event["data"]["hold_key"] == key
        assert event["data"]["returned"] == get_settings().generation_cost
        assert event["data"]["idempotency_key"] == f"billing:settle:{key}"
    assert worker.expire_holds()["expired"] == 0
    assert len(consumer.of(swept)) == 1


def test_subscription_expiring_then_expired_once_each(worker, accounts, consumer):
    ending = accounts.subscriber(subscription_end=datetime.now(UTC) + timedelta(days=2))
    later = accounts.subscriber(subscription_end=datetime.now(UTC) + timedelta(days=10))
    lapsed_long_ago = accounts.expired_subscription(
        subscription_end=datetime.now(UTC) - timedelta(days=60)
    )
    assert worker.announce_subscriptions()["expiring"] == 1
    assert worker.announce_subscriptions()["expiring"] == 0  # twice: nothing new
    (expiring,) = consumer.of(ending)
    assert expiring["type"] == "subscription.expiring"
    assert expiring["data"]["tier"] == "standard"
    assert datetime.fromisoformat(expiring["data"]["ends_at"]) > datetime.now(UTC)
    assert consumer.of(later) == [] and consumer.of(lapsed_long_ago) == []

    shift_clock(worker.engine, 3, [ending])  # its end has passed
    assert worker.announce_subscriptions() == {
        "ok": True,
        "code": 200,
        "expiring": 0,
        "expired": 1,
        "published": 1,
    }
    assert worker.announce_subscriptions()["expired"] == 0
    assert _types(consumer.of(ending)) == ["subscription.expiring", "subscription.expired"]

    # Renewed: a new end, announced again when it comes near.
    assert worker.subscribe(ending, "standard", "renew", days=1)["ok"]
    assert worker.announce_subscriptions()["expiring"] == 1
    assert _types(consumer.of(ending))[-1] == "subscription.expiring"


def test_redelivery_and_a_duplicate_storm_record_one_event(worker, accounts, consumer):
    cost = get_settings().generation_cost
    user = accounts.credits_only(balance_credits=cost)
    sent = [
        app.send_task(
            "billing.charge_generation",
            kwargs={"user_id": user, "idempotency_key": "storm"},
            queue="billing",
        )
        for _ in range(40)
    ]
    outcomes = [result.get(timeout=60) for result in sent]
    assert sum(not outcome["replayed"] for outcome in outcomes) == 1
    assert _types(consumer.of(user)) == ["credits.low", "credits.depleted"]
    assert len(event_rows(worker.engine, user)) == 2


def test_concurrent_charges_crossing_together_fire_once(worker, accounts, consumer, settings_env):
    cost = get_settings().generation_cost
    settings_env(low_credits_threshold=str(2 * cost + cost // 2))  # crossed at 3 -> 2 left
    user = accounts.credits_only(balance_credits=10 * cost)
    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(lambda n: worker.charge_generation(user, f"k{n}"), range(12)))
    assert sum(outcome["ok"] for outcome in outcomes) == 10
    events = consumer.of(user)
    assert _types(events) == ["credits.low", "credits.depleted"]
    low, depleted = events
    assert low["data"]["balance"] == 2 * cost
    assert depleted["data"]["idempotency_key"] != low["data"]["idempotency_key"]


def test_a_movement_that_rolls_back_records_no_event(worker, accounts, consumer, engine):
    user = accounts.credits_only(balance_credits=get_settings().generation_cost)
    # Fails the transaction after its event rows are written: only then does it raise.
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION fail_after_events() RETURNS trigger AS $$ BEGIN"
                " IF EXISTS (SELECT 1 FROM billing_events WHERE user_id = NEW.user_id) THEN"
                " RAISE EXCEPTION 'forced failure after the events were written'; END IF;"
                " RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER fail_after_events BEFORE INSERT ON billing_requests"
                " FOR EACH ROW EXECUTE FUNCTION fail_after_events()"
            )
        )
    try:
        result = app.send_task(
            "billing.charge_generation",
            kwargs={"user_id": user, "idempotency_key": "doomed"},
            queue="billing",
        )
        result.get(timeout=30, propagate=False)
        assert result.state == "FAILURE"
        assert "forced failure after the events" in str(result.result)
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER fail_after_events ON billing_requests"))
            conn.execute(text("DROP FUNCTION fail_after_events()"))
    assert event_rows(engine, user) == []
    assert ledger_rows(engine, user) == []
    assert consumer.of(user) == []
    # The worker is up, and the same key now goes through, with its events.
    assert worker.charge_generation(user, "doomed")["ok"]
    assert _types(consumer.of(user)) == ["credits.low", "credits.depleted"]


def test_each_accounts_events_arrive_in_the_order_they_happened(worker, accounts, consumer):
    cost = get_settings().generation_cost
    users = [accounts.credits_only(balance_credits=cost) for _ in range(6)]

    def drive(user: int) -> None:
        for round_ in range(4):
            assert worker.charge_generation(user, f"{user}-charge-{round_}")["ok"]
            assert worker.grant(user, cost, f"{user}-grant-{round_}")["ok"]

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(drive, users))
    received = consumer.idle()
    for user in users:
        events = [event for event in received if event["user_id"] == user]
        # Each round crosses low and depleted, in that order, round after round.
        keys = [(event["data"]["idempotency_key"], event["type"]) for event in events]
        assert keys == [
            (f"{user}-charge-{round_}", kind)
            for round_ in range(4)
            for kind in ("credits.low", "credits.depleted")
        ]
        sequences = [event["data"]["sequence"] for event in events]
        assert sequences == sorted(sequences)


def test_the_sweep_publishes_what_the_commit_left_and_retention_removes_old(
    worker, accounts, consumer, engine
):
    user = accounts.credits_only(balance_credits=get_settings().generation_cost)
    assert worker.charge_generation(user, "k")["ok"]
    consumer.idle()
    # As if the worker had died between its commit and publishing: the rows are unpublished.
    with engine.begin() as conn:
        conn.execute(text("UPDATE billing_events SET published_at = NULL"))
    assert worker.publish_events()["published"] == 2
    assert worker.publish_events()["published"] == 0
    events = consumer.of(user)
    assert _types(events) == ["credits.low", "credits.depleted"] * 2
    assert events[0]["event_id"] == events[2]["event_id"]  # a resend is the same event

    # Retention: published longer ago than BILLING_EVENTS_RETENTION_DAYS goes; the period's
    # exhausted event stays while its period runs; unpublished ones stay.
    limit = get_settings().freemium_limit
    free = accounts.freemium_only(freemium_actions_used=limit - 1)
    assert worker.charge_generation(free, "last-free")["ok"]
    shift_clock(engine, 8, [user, free])
    pending = accounts.credits_only(balance_credits=get_settings().generation_cost)
    assert worker.charge_generation(pending, "p")["ok"]
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE billing_events SET published_at = NULL, occurred_at = occurred_at"
                " - interval '30 days' WHERE user_id = :u"
            ),
            {"u": pending},
        )
    assert worker.prune_events()["removed"] == 2
    assert event_rows(engine, user) == []
    assert [row.type for row in event_rows(engine, free)] == ["freemium.exhausted"]
    assert len(event_rows(engine, pending)) == 2
    shift_clock(engine, 30, [free])  # its period is over
    assert worker.prune_events()["removed"] == 1


def test_prune_removes_in_batches(worker, accounts, engine):
    user = accounts.credits_only()
    old = datetime.now(UTC) - timedelta(days=30)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO billing_events (event_id, type, user_id, occurred_at, data,"
                " published_at) SELECT gen_random_uuid(), 'credits.low', :u, :at, '{}', :at"
                " FROM generate_series(1, 2500)"
            ),
            {"u": user, "at": old},
        )
    assert worker.prune_events() == {"ok": True, "code": 200, "removed": 2500, "batches": 3}
    wait_until(lambda: event_rows(engine, user) == [], "the old events are gone", timeout=1)


RELAY_KILLED_MID_BATCH = """
import os, sys, time
from billing.jobs import outbox
from billing.storage.factory import connect
from worker import events
from worker.db import get_engine

def publish_half_then_hang(messages):
    events.publish(messages[: len(messages) // 2])
    open(sys.argv[1], "w").close()
    time.sleep(600)  # SIGKILLed here: published, not marked

with connect(get_engine()) as store:
    outbox.publish_pending(store, publish_half_then_hang, batch=int(sys.argv[2]))
"""


def test_a_relay_killed_mid_batch_resends_and_never_skips(
    worker, accounts, consumer, engine, tmp_path
):
    cost = get_settings().generation_cost
    users = [accounts.credits_only(balance_credits=2 * cost) for _ in range(10)]
    # Movements run in this process, with no relay after them: their events stay pending.
    for user in users:
        for n in range(2):
            args = ChargeArgs.parse((), {"user_id": user, "idempotency_key": f"{user}-{n}"})
            with connect(engine) as conn:
                assert frame.run(conn, charges.Charge(Operation.GENERATION, args), get_settings())[
                    "ok"
                ]
    recorded = event_rows(engine)
    assert len(recorded) == 20  # low, then depleted, per account
    marker = tmp_path / "published"
    relay = subprocess.Popen(
        [sys.executable, "-c", RELAY_KILLED_MID_BATCH, str(marker), "20"],
        start_new_session=True,
    )
    try:
        wait_until(marker.exists, "the relay published half its batch", timeout=30)
        os.kill(relay.pid, signal.SIGKILL)
    finally:
        relay.wait(timeout=10)
    assert len(consumer.idle()) == 10
    assert all(row.published_at is None for row in event_rows(engine))

    assert worker.publish_events()["published"] == 20
    received = consumer.idle()
    assert len(received) == 30  # the first half twice: resent, never skipped
    by_id = {}
    for event in received:
        by_id.setdefault(event["event_id"], []).append(event)
    assert set(by_id) == {str(row.event_id) for row in recorded}
    assert sorted(len(copies) for copies in by_id.values()) == [1] * 10 + [2] * 10
    for copies in by_id.values():  # a duplicate is the same event, field for field
        assert all(copy == copies[0] for copy in copies)
    for user in users:  # after de-duplication, each account's events in order
        unique = list(dict.fromkeys(e["event_id"] for e in received if e["user_id"] == user))
        assert [by_id[i][0]["type"] for i in unique] == ["credits.low", "credits.depleted"]


def test_a_broker_that_refuses_the_events_fails_no_charge(worker, accounts, consumer, capfd):
    user = accounts.credits_only(balance_credits=get_settings().generation_cost)
    client = redis.Redis.from_url(REDIS_URL)
    queue = get_settings().events_queue
    consumer.idle()
    # The events queue's key holds a string: Redis answers every push to it WRONGTYPE.
    client.delete(queue)
    client.set(queue, "not a list")
    try:
        charged = worker.charge_generation(user, "refused")
        pending = [row.published_at for row in event_rows(worker.engine, user)]
    finally:
        client.delete(queue)
    assert charged["ok"] and charged["state"]["credits"]["balance"] == 0
    assert pending == [None, None]  # recorded with the charge, kept for the sweep
    warning = next(
        json.loads(line)
        for line in capfd.readouterr().err.splitlines()
        if "billing.events.unpublished" in line
    )
    assert warning["accounts"] == [user] and "WRONGTYPE" in warning["error"]

    assert worker.publish_events()["published"] == 2
    assert _types(consumer.of(user)) == ["credits.low", "credits.depleted"]
