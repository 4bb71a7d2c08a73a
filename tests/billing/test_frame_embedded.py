"""The frame on the embedded default: the same movements, through SqlStore on SQLite, with the
schema built by the migrations. Every branch of the frame, as on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from billing.core.settings import Settings
from billing.core.validation import (
    AuditArgs,
    CaptureArgs,
    ChargeArgs,
    GrantArgs,
    RefundArgs,
    ReleaseArgs,
    ReserveArgs,
    SubscriptionArgs,
    UserArgs,
)
from billing.jobs import expiry, outbox
from billing.movements import accounts, charges, frame, grants, holds, refunds, subscriptions
from billing.reads import audit
from billing.storage.engine import create_db_engine, session_factory, transaction
from billing.storage.factory import connect
from migrations import migrate
from models import Operation


@pytest.fixture
def sqlite(tmp_path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'billing.sqlite'}"
    migrate.upgrade(url)
    engine = create_db_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(database_url=None, data_dir=tmp_path)


def _account(engine: Engine, user_id: int, **columns: object) -> int:
    names = ", ".join(["id", *columns])
    values = ", ".join([":id", *(f":{c}" for c in columns)])
    with engine.begin() as conn:
        conn.execute(
            text(f"INSERT INTO users ({names}) VALUES ({values})"), {"id": user_id, **columns}
        )
    return user_id


def _row(engine: Engine, user_id: int) -> dict:
    with engine.connect() as conn:
        return dict(
            conn.execute(text("SELECT * FROM users WHERE id = :u"), {"u": user_id}).mappings().one()
        )


def _charge(engine: Engine, settings: Settings, user: int, key: str, **kw: object) -> dict:
    args = ChargeArgs.parse((), {"user_id": user, "idempotency_key": key, **kw})
    with connect(engine) as conn:
        return frame.run(conn, charges.Charge(Operation.GENERATION, args), settings)


def test_charges_replays_rejections_and_conflicts(sqlite, settings):
    user = _account(sqlite, 1, freemium_actions_used=settings.freemium_limit, balance_credits=15)
    other = _account(sqlite, 2)

    paid = _charge(sqlite, settings, user, "a")
    again = _charge(sqlite, settings, user, "a")
    broke = _charge(sqlite, settings, user, "b")
    broke_again = _charge(sqlite, settings, user, "b")
    ghost = _charge(sqlite, settings, 99, "g")
    conflict = _charge(sqlite, settings, other, "a")
    invalid_cost_free = _charge(sqlite, settings, user, "a", cost=10)

    assert (paid["source"], paid["amount"], paid["replayed"]) == ("credits", 10, False)
    assert again["replayed"] is True and again["ledger_id"] == paid["ledger_id"]
    assert (broke["code"], broke_again["code"], broke_again["replayed"]) == (402, 402, True)
    assert ghost["code"] == 404
    assert (conflict["code"], conflict["error"]) == (409, "idempotency_conflict")
    assert invalid_cost_free["replayed"] is True
    assert _row(sqlite, user)["balance_credits"] == 5


def test_flags_and_costs_apply_to_new_keys_only(sqlite, settings):
    user = _account(sqlite, 1, freemium_actions_used=settings.freemium_limit, balance_credits=100)
    first = _charge(sqlite, settings, user, "a")

    later = settings.model_copy(update={"generation_cost": 30, "v4_enabled": False})
    again = _charge(sqlite, later, user, "a")
    refused = _charge(sqlite, later, user, "new")

    assert again["replayed"] is True and again["amount"] == first["amount"] == 10
    assert (refused["code"], refused["error"]) == (400, "billing_disabled")
    assert _row(sqlite, user)["balance_credits"] == 90


def test_grant_subscription_and_refund(sqlite, settings):
    user = _account(sqlite, 1, freemium_actions_used=settings.freemium_limit)
    with connect(sqlite) as conn:
        granted = frame.run(
            conn,
            grants.Grant(
                GrantArgs.parse((), {"user_id": user, "amount": 40, "idempotency_key": "p"})
            ),
            settings,
        )
        sub_args = {"user_id": user, "tier": "pro", "idempotency_key": "s"}
        subscribed = frame.run(
            conn, subscriptions.Subscription(SubscriptionArgs.parse((), sub_args)), settings
        )
    charged = _charge(sqlite, settings, user, "job")
    with connect(sqlite) as conn:
        refunded = refunds.refund(conn, RefundArgs.parse((), {"idempotency_key": "job"}), settings)
        twice = refunds.refund(conn, RefundArgs.parse((), {"idempotency_key": "job"}), settings)
        missing = refunds.refund(conn, RefundArgs.parse((), {"idempotency_key": "none"}), settings)

    assert granted["state"]["credits"]["balance"] == 40
    assert (subscribed["change"], subscribed["tier"]) == ("new", "standard")
    assert charged["source"] == "subscription"
    assert (refunded["amount"], twice["replayed"], missing["code"]) == (1, True, 404)
    row = _row(sqlite, user)
    assert (row["subscription_ops_used"], row["subscription_ops_limit"]) == (0, 100)


def test_a_grant_past_the_ceiling_is_refused_and_not_remembered(sqlite, settings):
    user = _account(sqlite, 1, balance_credits=2**31 - 5)
    args = GrantArgs.parse((), {"user_id": user, "amount": 10, "idempotency_key": "big"})
    with connect(sqlite) as conn:
        refused = frame.run(conn, grants.Grant(args), settings)
    with sqlite.connect() as conn:
        remembered = conn.execute(text("SELECT count(*) FROM billing_requests")).scalar()

    assert (refused["code"], refused["error"], remembered) == (422, "balance_limit", 0)
    assert _row(sqlite, user)["balance_credits"] == 2**31 - 5


def test_state_read_stores_a_due_reset_under_the_lock(sqlite, settings):
    old = datetime.now(UTC) - timedelta(days=31)
    user = _account(sqlite, 1, freemium_actions_used=3, freemium_reset_at=old)
    with connect(sqlite) as conn:
        state = accounts.get_state(conn, UserArgs.parse((), {"user_id": user}), settings)
    with sqlite.connect() as conn:
        journal = conn.execute(text("SELECT restored FROM allowance_resets")).scalars().all()

    assert state["state"]["freemium"]["used"] == 0
    assert _row(sqlite, user)["freemium_actions_used"] == 0
    assert journal == [3]


def _hold_call(engine: Engine, settings: Settings, call: str, **kw: object) -> dict:
    with connect(engine) as conn:
        if call == "reserve":
            return holds.reserve(conn, Operation.GENERATION, ReserveArgs.parse((), kw), settings)
        if call == "capture":
            return holds.capture(conn, CaptureArgs.parse((), kw), settings)
        return holds.release(conn, ReleaseArgs.parse((), kw), settings)


def _audit(engine: Engine) -> dict:
    with transaction(session_factory(engine)) as session:
        return audit.audit(session, AuditArgs())


def test_holds_reserve_capture_release_and_refund(sqlite, settings):
    settings = settings.model_copy(update={"freemium_limit": 1})
    user = _account(sqlite, 1)
    with connect(sqlite) as conn:
        frame.run(
            conn,
            grants.Grant(
                GrantArgs.parse((), {"user_id": user, "amount": 50, "idempotency_key": "fund"})
            ),
            settings,
        )

    free = _hold_call(sqlite, settings, "reserve", user_id=user, idempotency_key="f")
    paid = _hold_call(sqlite, settings, "reserve", user_id=user, idempotency_key="p", cost=20)
    replay = _hold_call(sqlite, settings, "reserve", user_id=user, idempotency_key="p", cost=20)
    conflict = _charge(sqlite, settings, user, "p")
    partial = _hold_call(sqlite, settings, "capture", idempotency_key="p", amount=15)
    released = _hold_call(sqlite, settings, "release", idempotency_key="f", reason="failed")
    closed = _hold_call(sqlite, settings, "capture", idempotency_key="f")
    missing = _hold_call(sqlite, settings, "release", idempotency_key="nothing")
    with connect(sqlite) as conn:
        refunded = refunds.refund(conn, RefundArgs.parse((), {"idempotency_key": "p"}), settings)

    assert (free["source"], paid["source"], paid["hold"]["status"]) == (
        "freemium",
        "credits",
        "held",
    )
    assert replay == {**paid, "replayed": True}
    assert conflict["error"] == "idempotency_conflict"
    assert (partial["amount"], partial["returned"]) == (15, 5)
    assert (released["source"], released["amount"]) == ("freemium", 1)
    assert (closed["code"], closed["status"]) == (409, "released")
    assert (missing["code"], missing["error"]) == (404, "hold_not_found")
    assert refunded["amount"] == 15
    row = _row(sqlite, user)
    assert (row["balance_credits"], row["freemium_actions_used"]) == (50, 0)
    assert _audit(sqlite)["clean"] is True


def test_holds_expire_lazily_and_by_the_sweep(sqlite, settings):
    users = [_account(sqlite, n, balance_credits=0) for n in (1, 2)]
    for user in users:
        _hold_call(sqlite, settings, "reserve", user_id=user, idempotency_key=f"h{user}")
    with sqlite.begin() as conn:  # both holds' time is up
        conn.execute(text("UPDATE billing_holds SET expires_at = :t"), {"t": datetime.now(UTC)})

    with connect(sqlite) as conn:
        state = accounts.get_state(conn, UserArgs.parse((), {"user_id": 1}), settings)
    swept = expiry.expire_holds(sqlite, settings)
    again = expiry.expire_holds(sqlite, settings)

    assert state["state"]["freemium"]["used"] == 0  # expired by the read, under the lock
    assert (swept["expired"], again["expired"]) == (1, 0)
    with sqlite.connect() as conn:
        statuses = conn.execute(text("SELECT status FROM billing_holds")).scalars().all()
        expiries = conn.execute(
            text("SELECT count(*) FROM credits_ledger WHERE entry_type = 'expire'")
        ).scalar()
    assert (statuses, expiries) == (["expired", "expired"], 2)
    assert [_row(sqlite, u)["freemium_actions_used"] for u in users] == [0, 0]
    assert _audit(sqlite)["clean"] is True


def test_events_are_recorded_published_in_order_and_pruned(sqlite, settings):
    settings = settings.model_copy(update={"freemium_limit": 1})
    cost = settings.generation_cost
    user = _account(sqlite, 1, balance_credits=cost)
    ending = _account(sqlite, 2)
    sub_args = {"user_id": ending, "tier": "standard", "idempotency_key": "sub", "days": 1}
    with connect(sqlite) as conn:
        subscription = subscriptions.Subscription(SubscriptionArgs.parse((), sub_args))
        assert frame.run(conn, subscription, settings)["ok"]
    _charge(sqlite, settings, user, "free")  # the period's last free action
    _charge(sqlite, settings, user, "paid")  # credits to 0: low and depleted
    _charge(sqlite, settings, user, "paid")  # a replay: nothing new
    _hold_call(sqlite, settings, "reserve", user_id=user, idempotency_key="h", cost=1)
    announced = outbox.announce_subscriptions(sqlite, settings)
    again = outbox.announce_subscriptions(sqlite, settings)

    published: list[dict] = []
    with connect(sqlite) as conn:
        totals = outbox.publish_pending(conn, published.extend, batch=2)
        nothing_left = outbox.publish_pending(conn, published.extend)

    assert announced == {"expiring": 1, "expired": 0} and again["expiring"] == 0
    assert totals == {"published": 4, "batches": 2}
    assert [(e["user_id"], e["type"]) for e in published] == [
        (user, "freemium.exhausted"),
        (user, "credits.low"),
        (user, "credits.depleted"),
        (ending, "subscription.expiring"),
    ]
    assert [e["data"].get("idempotency_key") for e in published[:3]] == ["free", "paid", "paid"]
    assert nothing_left == {"published": 0, "batches": 0}

    settings_off = settings.model_copy(update={"events_enabled": False})
    other = _account(sqlite, 3, balance_credits=cost, freemium_actions_used=1)
    _charge(sqlite, settings_off, other, "quiet")
    with sqlite.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM billing_events")).scalar() == 4
        conn.execute(
            text("UPDATE billing_events SET published_at = :t"),
            {"t": datetime.now(UTC) - timedelta(days=8)},
        )
    # The exhausted event stays while its period runs; the others go.
    assert outbox.prune(sqlite, settings) == {"removed": 3, "batches": 1}


def test_credit_grants_on_sqlite(sqlite, settings):
    """A grant's whole life through SqlStore: drawn in order, expired, given back and written
    off, refunded, voided; the audit explains every grant."""
    from billing.core.validation import VoidGrantArgs

    user = _account(sqlite, 9100)

    def run(fn, args):
        with connect(sqlite) as conn:
            return fn(conn, args, settings)

    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    promo = GrantArgs.parse(
        (), {"user_id": user, "amount": 20, "idempotency_key": "g1", "expires_at": soon,
             "category": "promotional"}
    )  # fmt: skip
    assert run(grants.grant, promo)["grant"]["category"] == "promotional"
    paid = {"user_id": user, "amount": 30, "idempotency_key": "g2", "priority": 10}
    run(grants.grant, GrantArgs.parse((), paid))
    charged = run(
        charges.assistant,
        ChargeArgs.parse((), {"user_id": user, "idempotency_key": "c1", "cost": 35}),
    )
    assert charged["credits_drawn"] == [
        {"grant": "g2", "amount": 30},
        {"grant": "g1", "amount": 5},
    ]
    run(
        holds.reserve_assistant,
        ReserveArgs.parse((), {"user_id": user, "idempotency_key": "h1", "cost": 10}),
    )
    with sqlite.begin() as conn:
        conn.execute(
            text(
                "UPDATE credit_grants SET expires_at = '2000-01-01 00:00:00'"
                " WHERE idempotency_key = 'g1'"
            )
        )
    released = run(holds.release, ReleaseArgs.parse((), {"idempotency_key": "h1"}))
    assert (released["expired"], released["state"]["credits"]["balance"]) == (10, 0)
    refunded = run(refunds.refund, RefundArgs.parse((), {"idempotency_key": "c1"}))
    assert (refunded["expired"], refunded["state"]["credits"]["balance"]) == (5, 30)
    voided = run(grants.void, VoidGrantArgs.parse((), {"idempotency_key": "g2"}))
    assert (voided["amount"], voided["state"]["credits"]["balance"]) == (30, 0)
    with transaction(session_factory(sqlite)) as session:
        report = audit.audit(session, AuditArgs.parse((), {"user_id": user}))
    assert report["clean"], report["mismatches"]
    assert expiry.expire_grants(sqlite, settings)["expired"] == 0
