"""Credit grants: expiry, draw order, holds, refunds and voids, through a real worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.conftest import count_rows, event_rows, grant_rows, ledger_rows

ASSISTANT = 10  # what each assistant call below costs, in credits


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _expire_now(engine, key: str) -> None:
    """Move a grant's ``expires_at`` into the past, as if its time had come."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE credit_grants SET expires_at = now() - interval '1 second'"
                " WHERE idempotency_key = :k"
            ),
            {"k": key},
        )


def _remaining(engine, key: str) -> tuple[int, str]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT remaining, status FROM credit_grants WHERE idempotency_key = :k"),
            {"k": key},
        ).one()
    return row.remaining, row.status


def _account(accounts, engine, general: int = 0) -> int:
    """An account whose ledger explains it: its ``general`` balance came from a grant made
    before grants existed (a ledger row without parts). Assistant calls below take credits
    only, so its free allowance never moves."""
    user = accounts.freemium_only(balance_credits=general)
    if general:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO credits_ledger (user_id, entry_type, source, amount,"
                    " idempotency_key, balance_credits_after, subscription_ops_used_after,"
                    " freemium_actions_used_after) VALUES (:u, 'grant', 'credits', :n,"
                    " :k, :n, 0, 0)"
                ),
                {"u": user, "n": general, "k": f"legacy-{user}"},
            )
    return user


def _assert_clean(worker, user: int) -> None:
    audit = worker.audit(user)
    assert audit["clean"], audit["mismatches"]


# --- the grant itself -----------------------------------------------------------------------


def test_a_grant_answers_its_terms_and_lists_in_the_state(worker, accounts, engine):
    user = _account(accounts, engine)
    expires = _in(14 * 86400)

    result = worker.grant(
        user, 300, "promo-1", expires_at=expires, priority=20, category="promotional"
    )

    assert (result["code"], result["amount"]) == (200, 300)
    grant = result["grant"]
    assert grant == {
        "key": "promo-1",
        "amount": 300,
        "remaining": 300,
        "expires_at": datetime.fromisoformat(expires).astimezone(UTC).isoformat(),
        "priority": 20,
        "category": "promotional",
        "status": "active",
    }
    credits = result["state"]["credits"]
    assert credits["balance"] == 300
    assert credits["grants"] == [
        {k: grant[k] for k in ("key", "remaining", "expires_at", "priority", "category")}
    ]
    assert credits["expiring"] == {"amount": 300, "at": grant["expires_at"]}
    (row,) = grant_rows(engine, user)
    assert (row.amount, row.remaining, row.priority, row.category) == (300, 300, 20, "promotional")
    (entry,) = ledger_rows(engine, user)
    assert (entry.entry_type, entry.grant_key, entry.credit_parts) == (
        "grant",
        "promo-1",
        [{"grant": "promo-1", "amount": 300}],
    )


def test_a_grant_without_terms_is_paid_never_expiring_priority_50(worker, accounts, engine):
    user = _account(accounts, engine)

    result = worker.grant(user, 40, "pay-plain")

    assert result["grant"]["expires_at"] is None
    assert (result["grant"]["priority"], result["grant"]["category"]) == (50, "paid")
    assert result["state"]["credits"]["expiring"] is None


@pytest.mark.parametrize(
    ("terms", "field"),
    [
        ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),  # no offset
        ({"expires_at": "next tuesday"}, "expires_at"),
        ({"expires_at": 1893456000}, "expires_at"),
        ({"expires_at": "2001-01-01T00:00:00+00:00"}, "expires_at"),  # not later than now
        # Past what every database zone prints and reads back, or past Python's range in UTC.
        ({"expires_at": "9999-12-31T23:30:00Z"}, "expires_at"),
        ({"expires_at": "9999-12-31T23:00:00-05:00"}, "expires_at"),
        ({"expires_at": "0001-01-01T00:00:00+05:00"}, "expires_at"),
        ({"priority": 101}, "priority"),
        ({"priority": -1}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": "10"}, "priority"),
        ({"category": "free"}, "category"),
        ({"category": 1}, "category"),
    ],
)
def test_bad_terms_are_a_422_naming_the_field_and_write_nothing(
    worker, accounts, engine, terms, field
):
    user = _account(accounts, engine)

    result = worker.grant(user, 10, "bad-terms", **terms)

    assert (result["code"], result["error"], result["field"]) == (422, "invalid_request", field)
    assert count_rows(engine, "credit_grants") == 0
    assert ledger_rows(engine, user) == []
    # Not remembered: the same key with good terms goes through.
    assert worker.grant(user, 10, "bad-terms")["code"] == 200


def test_the_terms_belong_to_the_key(worker, accounts, engine):
    user = _account(accounts, engine)
    expires = _in(86400)

    first = worker.grant(user, 10, "terms-1", expires_at=expires, priority=5)
    again = worker.grant(user, 10, "terms-1", expires_at=expires, priority=5)
    moved = worker.grant(user, 10, "terms-1", expires_at=expires, priority=6)
    plain = worker.grant(user, 10, "terms-1")

    assert (first["replayed"], again["replayed"]) == (False, True)
    assert again["grant"] == first["grant"]
    assert (moved["code"], moved["error"]) == (409, "idempotency_conflict")
    assert (plain["code"], plain["error"]) == (409, "idempotency_conflict")
    assert accounts.get(user).balance_credits == 10


# --- the draw order -------------------------------------------------------------------------


def test_credits_are_drawn_by_priority_expiry_category_then_age(worker, accounts, engine):
    user = _account(accounts, engine, 10)  # 10 general: paid, never, 50, oldest
    worker.grant(user, 10, "paid-never")
    worker.grant(user, 10, "promo-never", category="promotional")
    worker.grant(user, 10, "paid-late", expires_at=_in(20 * 86400))
    worker.grant(user, 10, "paid-soon", expires_at=_in(10 * 86400))
    worker.grant(user, 10, "first", priority=0)

    drawn = []
    for n in range(6):
        result = worker.charge_assistant(user, f"c-{n}", cost=ASSISTANT)
        assert result["code"] == 200, result
        drawn.append(result["credits_drawn"])

    assert drawn == [
        [{"grant": "first", "amount": 10}],
        [{"grant": "paid-soon", "amount": 10}],
        [{"grant": "paid-late", "amount": 10}],
        [{"grant": "promo-never", "amount": 10}],
        [{"grant": None, "amount": 10}],
        [{"grant": "paid-never", "amount": 10}],
    ]
    assert worker.charge_assistant(user, "c-6", cost=ASSISTANT)["code"] == 402
    _assert_clean(worker, user)


def test_a_charge_takes_from_as_many_grants_as_it_needs(worker, accounts, engine):
    user = _account(accounts, engine, 3)
    worker.grant(user, 4, "a", priority=1)
    worker.grant(user, 4, "b", priority=2)

    result = worker.charge_assistant(user, "many", cost=10)

    assert result["credits_drawn"] == [
        {"grant": "a", "amount": 4},
        {"grant": "b", "amount": 4},
        {"grant": None, "amount": 2},
    ]
    assert result["state"]["credits"]["balance"] == 1
    assert ledger_rows(engine, user)[-1].credit_parts == result["credits_drawn"]
    _assert_clean(worker, user)


def test_an_account_without_grants_draws_as_before(worker, accounts, engine):
    user = _account(accounts, engine, 30)

    result = worker.charge_assistant(user, "old-style", cost=ASSISTANT)

    assert result["credits_drawn"] == [{"grant": None, "amount": ASSISTANT}]
    assert result["state"]["credits"] == {"balance": 20, "grants": [], "expiring": None}


# --- expiry ---------------------------------------------------------------------------------


def test_an_expired_grant_is_never_drawn_even_with_beat_stopped(worker, accounts, engine):
    user = _account(accounts, engine)
    worker.grant(user, 25, "promo", expires_at=_in(3600), category="promotional")
    worker.charge_assistant(user, "before", cost=ASSISTANT)
    _expire_now(engine, "promo")

    after = worker.charge_assistant(user, "after", cost=ASSISTANT)

    assert (after["code"], after["error"]) == (402, "not_enough_credits")
    assert _remaining(engine, "promo") == (0, "expired")
    assert accounts.get(user).balance_credits == 0
    expiry = [r for r in ledger_rows(engine, user) if r.entry_type == "expiry"]
    assert [(r.amount, r.grant_key, r.balance_credits_after) for r in expiry] == [(15, "promo", 0)]
    _assert_clean(worker, user)


def test_a_state_read_expires_what_is_due(worker, accounts, engine):
    user = _account(accounts, engine)
    worker.grant(user, 25, "promo", expires_at=_in(3600))
    _expire_now(engine, "promo")

    state = worker.state(user)["state"]

    assert state["credits"] == {"balance": 0, "grants": [], "expiring": None}
    assert _remaining(engine, "promo") == (0, "expired")


def test_the_sweep_expires_grants_nobody_touches_and_runs_twice_safely(worker, accounts, engine):
    users = [_account(accounts, engine) for _ in range(3)]
    for user in users:
        worker.grant(user, 7, f"promo-{user}", expires_at=_in(3600))
        worker.grant(user, 5, f"keep-{user}")
        _expire_now(engine, f"promo-{user}")

    first = worker.expire_grants()
    second = worker.expire_grants()

    assert (first["expired"], first["credits_expired"], first["accounts"]) == (3, 21, 3)
    assert (second["expired"], second["credits_expired"]) == (0, 0)
    for user in users:
        assert accounts.get(user).balance_credits == 5
        _assert_clean(worker, user)
    with engine.connect() as conn:
        jobs = {j for (j,) in conn.execute(text("SELECT job FROM billing_job_runs"))}
    assert "expire_grants" in jobs


def test_expiry_events_are_sent_once(worker, accounts, engine, settings_env):
    settings_env(credit_expiry_notice_days="2")
    user = _account(accounts, engine)
    worker.grant(user, 9, "soon", expires_at=_in(86400))  # within the notice
    worker.grant(user, 9, "later", expires_at=_in(5 * 86400))  # not yet

    worker.state(user)
    worker.state(user)
    _expire_now(engine, "soon")
    worker.expire_grants()
    worker.expire_grants()

    events = [(e.type, e.data.get("grant")) for e in event_rows(engine, user)]
    assert events == [("credits.expiring", "soon"), ("credits.expired", "soon")]
    expiring, expired = event_rows(engine, user)
    assert (expiring.data["remaining"], expired.data["amount"]) == (9, 9)


# --- holds ----------------------------------------------------------------------------------


def test_a_hold_keeps_its_parts_and_a_release_gives_each_back(worker, accounts, engine):
    user = _account(accounts, engine, 6)
    worker.grant(user, 4, "a", priority=1)

    held = worker.reserve_assistant(user, "job-1", cost=ASSISTANT)
    assert _remaining(engine, "a") == (0, "active")
    released = worker.release("job-1")

    assert held["credits_drawn"] == [{"grant": "a", "amount": 4}, {"grant": None, "amount": 6}]
    assert _remaining(engine, "a") == (4, "active")
    assert released["state"]["credits"]["balance"] == 10
    assert "expired" not in released
    _assert_clean(worker, user)


def test_a_capture_consumes_parts_even_after_their_grant_expired(worker, accounts, engine):
    user = _account(accounts, engine)
    worker.grant(user, 30, "promo", expires_at=_in(3600))
    worker.reserve_assistant(user, "job-2", cost=ASSISTANT)
    _expire_now(engine, "promo")

    captured = worker.capture("job-2")

    assert captured["code"] == 200
    assert _remaining(engine, "promo") == (0, "expired")
    assert accounts.get(user).balance_credits == 0  # 20 expired, 10 spent
    _assert_clean(worker, user)


def test_a_release_after_the_grant_expired_writes_the_part_off(worker, accounts, engine):
    user = _account(accounts, engine, 5)
    worker.grant(user, 30, "promo", expires_at=_in(3600))
    worker.reserve_assistant(user, "job-3", cost=ASSISTANT)
    _expire_now(engine, "promo")

    released = worker.release("job-3")

    assert (released["code"], released["expired"]) == (200, ASSISTANT)
    assert released["state"]["credits"]["balance"] == 5
    kinds = [(r.entry_type, r.amount) for r in ledger_rows(engine, user)]
    assert kinds[-3:] == [("expiry", 20), ("release", ASSISTANT), ("expiry", ASSISTANT)]
    _assert_clean(worker, user)


def test_a_partial_capture_gives_the_rest_back_to_its_grants(worker, accounts, engine):
    user = _account(accounts, engine)
    worker.grant(user, 6, "a", priority=1)
    worker.grant(user, 6, "b", priority=2)
    worker.reserve_assistant(user, "job-4", cost=ASSISTANT)  # 6 from a, 4 from b

    captured = worker.capture("job-4", amount=7)

    assert captured["returned"] == 3
    assert _remaining(engine, "a") == (0, "active")
    assert _remaining(engine, "b") == (5, "active")
    _assert_clean(worker, user)


def test_a_hold_expiring_after_its_grant_gives_back_nothing_spendable(worker, accounts, engine):
    user = _account(accounts, engine)
    worker.grant(user, 10, "promo", expires_at=_in(3600))
    worker.reserve_assistant(user, "job-5", cost=ASSISTANT, ttl_seconds=60)
    _expire_now(engine, "promo")
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE billing_holds SET expires_at = now(), created_at = now()"
                " - interval '1 minute'"
            )
        )

    worker.expire_holds()

    assert accounts.get(user).balance_credits == 0
    assert _remaining(engine, "promo") == (0, "expired")
    _assert_clean(worker, user)


# --- refunds --------------------------------------------------------------------------------


def test_a_refund_gives_each_part_back_and_expires_the_late_ones(worker, accounts, engine):
    user = _account(accounts, engine, 5)
    worker.grant(user, 5, "promo", expires_at=_in(3600), priority=1)
    worker.charge_assistant(user, "paid-job", cost=ASSISTANT)  # 5 promo + 5 general
    _expire_now(engine, "promo")

    refunded = worker.refund("paid-job")

    assert (refunded["code"], refunded["amount"], refunded["expired"]) == (200, 10, 5)
    assert refunded["state"]["credits"]["balance"] == 5
    _assert_clean(worker, user)


def test_a_refund_before_expiry_returns_credits_to_their_grant(worker, accounts, engine):
    user = _account(accounts, engine)
    worker.grant(user, 10, "promo", expires_at=_in(3600))
    worker.charge_assistant(user, "job", cost=ASSISTANT)

    refunded = worker.refund("job")

    assert "expired" not in refunded
    assert _remaining(engine, "promo") == (10, "active")


# --- voids ----------------------------------------------------------------------------------


def test_a_void_removes_what_is_left_and_replays(worker, accounts, engine):
    user = _account(accounts, engine, 3)
    worker.grant(user, 20, "gift")
    worker.charge_assistant(user, "spent", cost=5)

    voided = worker.void_grant("gift", reason="chargeback")
    again = worker.void_grant("gift")

    # The general balance is drawn first among equals: the charge took 3 from it, 2 from gift.
    assert (voided["code"], voided["amount"], voided["grant"]["status"]) == (200, 18, "voided")
    assert again["replayed"] is True
    assert accounts.get(user).balance_credits == 0
    assert ledger_rows(engine, user)[-1].meta == {"reason": "chargeback"}
    _assert_clean(worker, user)


def test_voiding_an_unknown_grant_is_404_and_not_remembered(worker, accounts, engine):
    user = _account(accounts, engine)

    missing = worker.void_grant("later")
    worker.grant(user, 5, "later")
    voided = worker.void_grant("later")

    assert (missing["code"], missing["error"]) == (404, "grant_not_found")
    assert (voided["code"], voided["amount"]) == (200, 5)


def test_voiding_an_expired_grant_is_409(worker, accounts, engine):
    user = _account(accounts, engine)
    worker.grant(user, 5, "old", expires_at=_in(3600))
    _expire_now(engine, "old")

    result = worker.void_grant("old")

    assert (result["code"], result["error"], result["status"]) == (409, "grant_closed", "expired")


def test_what_a_hold_keeps_from_a_voided_grant_is_voided_when_it_comes_back(
    worker, accounts, engine
):
    user = _account(accounts, engine)
    worker.grant(user, 30, "gift")
    worker.reserve_assistant(user, "job-v", cost=ASSISTANT)
    assert worker.void_grant("gift")["amount"] == 20

    released = worker.release("job-v")

    assert released["expired"] == ASSISTANT
    assert accounts.get(user).balance_credits == 0
    assert [r.entry_type for r in ledger_rows(engine, user)][-1] == "void"
    _assert_clean(worker, user)


def test_void_is_refused_from_the_public_queue(worker, accounts, engine):
    from worker import app

    user = _account(accounts, engine)
    worker.grant(user, 5, "gift")

    result = app.send_task(
        "billing.void_grant", kwargs={"idempotency_key": "gift"}, queue="billing"
    ).get(timeout=30)

    assert (result["code"], result["error"]) == (403, "forbidden_queue")
    assert _remaining(engine, "gift") == (5, "active")


# --- an operator's balance below what its grants hold ----------------------------------------


def _set_balance(engine, user: int, balance: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE users SET balance_credits = :b WHERE id = :u"), {"b": balance, "u": user}
        )


def test_an_expiry_never_takes_the_balance_below_zero(worker, accounts, engine):
    user = _account(accounts, engine)
    worker.grant(user, 100, "over", expires_at=_in(3600))
    _set_balance(engine, user, 30)  # an operator's fix, below what the grant holds
    _expire_now(engine, "over")

    charged = worker.charge_assistant(user, "after-fix", cost=ASSISTANT)

    assert (charged["code"], charged["error"]) == (402, "not_enough_credits")
    assert accounts.get(user).balance_credits == 0
    (expiry,) = [r for r in ledger_rows(engine, user) if r.entry_type == "expiry"]
    assert (expiry.amount, expiry.credit_parts) == (30, [{"grant": "over", "amount": 100}])
    # The account works on; the audit names the operator's shortfall, not a crash.
    assert worker.grant(user, 5, "after")["code"] == 200
    fields = {m["field"] for m in worker.audit(user)["mismatches"]}
    assert "balance_credits" in fields


def test_one_short_account_never_stops_the_sweep_or_a_void(worker, accounts, engine):
    short, fine = _account(accounts, engine), _account(accounts, engine)
    worker.grant(short, 100, "short", expires_at=_in(3600))
    worker.grant(short, 50, "short-never")
    worker.grant(fine, 10, "fine", expires_at=_in(3600))
    _set_balance(engine, short, 20)
    _expire_now(engine, "short")
    _expire_now(engine, "fine")

    swept = worker.expire_grants()
    voided = worker.void_grant("short-never")

    assert swept["expired"] == 2
    assert _remaining(engine, "fine") == (0, "expired")
    assert (voided["code"], voided["amount"]) == (200, 0)
    assert accounts.get(short).balance_credits == 0
