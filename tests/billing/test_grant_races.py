"""Credit grants under races that have a winner: charges against a grant's expiry (lazy and
swept), a void against a capture, two sweeps at once. Whatever wins, nothing is drawn after
its grant's ``expires_at``, nothing is lost or doubled, and the audit is clean."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from tests.conftest import ledger_rows


def _soon(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def test_charges_racing_the_expiry_never_draw_after_it(worker, accounts, engine):
    user = accounts.freemium_only()
    expires = _soon(1.5)
    worker.grant(user, 200, "promo", expires_at=expires, category="promotional")

    def charge(n: int) -> dict:
        return worker.charge_assistant(user, f"race-{n}", cost=1)

    def sweep(_: int) -> dict:
        return worker.expire_grants()

    with ThreadPoolExecutor(max_workers=6) as pool:
        charged = list(pool.map(charge, range(120)))
        # However fast the first charges ran, the rest run once the grant's time has come:
        # sweeps and charges then race the expiry itself.
        until = datetime.fromisoformat(expires) + timedelta(seconds=0.2)
        time.sleep(max((until - datetime.now(UTC)).total_seconds(), 0))
        swept_and_charged = [pool.submit(sweep, n) for n in range(4)]
        swept_and_charged += [pool.submit(charge, n) for n in range(120, 160)]
        answers = [f.result() for f in swept_and_charged]
        swept, charged = answers[:4], charged + answers[4:]

    paid = [c for c in charged if c["code"] == 200]
    assert all(c["code"] in (200, 402) for c in charged)
    with engine.connect() as conn:
        grant = conn.execute(text("SELECT expires_at, status, remaining FROM credit_grants")).one()
    assert (grant.status, grant.remaining) == ("expired", 0)
    drawn_rows = [r for r in ledger_rows(engine, user) if r.entry_type == "charge"]
    # Every charge drew from the grant, before the grant's expires_at, in the database's clock.
    assert len(drawn_rows) == len(paid)
    assert all(r.created_at < grant.expires_at for r in drawn_rows)
    expired = sum(r.amount for r in ledger_rows(engine, user) if r.entry_type == "expiry")
    assert len(paid) + expired == 200
    assert sum(s["credits_expired"] for s in swept) <= expired
    assert accounts.get(user).balance_credits == 0
    assert worker.audit(user)["clean"]


def test_a_void_racing_a_capture_either_way_leaves_the_books_right(worker, accounts, engine):
    users = [accounts.freemium_only() for _ in range(6)]
    for user in users:
        worker.grant(user, 30, f"gift-{user}")
        assert worker.reserve_assistant(user, f"job-{user}", cost=10)["code"] == 200

    def capture(user: int) -> dict:
        return worker.capture(f"job-{user}")

    def void(user: int) -> dict:
        return worker.void_grant(f"gift-{user}")

    with ThreadPoolExecutor(max_workers=12) as pool:
        captures = pool.map(capture, users)
        voids = pool.map(void, users)
        results = list(zip(captures, voids, strict=True))

    for user, (captured, voided) in zip(users, results, strict=True):
        assert (captured["code"], voided["code"]) == (200, 200)
        # The hold's 10 were drawn before the void: the capture consumes them whatever the
        # order; the void removes the 20 left.
        assert voided["amount"] == 20
        assert accounts.get(user).balance_credits == 0
        assert worker.audit(user)["clean"]


def test_two_sweeps_at_once_expire_each_grant_once(worker, accounts, engine):
    users = [accounts.freemium_only() for _ in range(40)]
    for user in users:
        worker.grant(user, 3, f"promo-{user}", expires_at=_soon(3600))
    with engine.begin() as conn:
        conn.execute(text("UPDATE credit_grants SET expires_at = now() - interval '1 second'"))

    with ThreadPoolExecutor(max_workers=2) as pool:
        swept = list(pool.map(lambda _: worker.expire_grants(), range(2)))

    assert sum(s["expired"] for s in swept) == 40
    assert sum(s["credits_expired"] for s in swept) == 120
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT grant_key) FROM credits_ledger"
                " WHERE entry_type = 'expiry'"
            )
        ).one()
    assert tuple(rows) == (40, 40)
    assert worker.audit()["clean"]
