"""The ledger's running figures: in id order, each row's ``*_after`` columns are the account's
figures right after it; the audit names a row that breaks the chain, and
``billing repair-ledger-chain`` rewrites it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sqlalchemy import text

from billing.core.settings import Settings
from billing.core.validation import AuditArgs, CaptureArgs, GrantArgs, ReserveArgs
from billing.movements import frame, grants, holds
from billing.reads import audit, repair
from billing.storage.engine import create_db_engine, session_factory, transaction
from billing.storage.factory import connect
from migrations import migrate
from models import Operation
from tests.conftest import ledger_rows, shift_clock

AFTER = ("balance_credits_after", "subscription_ops_used_after", "freemium_actions_used_after")


def _figures(row) -> tuple[int, int, int]:
    return tuple(getattr(row, column) for column in AFTER)


def _account_figures(accounts, user: int) -> tuple[int, int, int]:
    account = accounts.get(user)
    return (
        account.balance_credits,
        account.subscription_ops_used,
        account.freemium_actions_used,
    )


def test_a_partial_capture_leaves_every_row_with_the_account_as_it_was_after_it(
    worker, accounts, engine
):
    user = accounts.create()
    worker.grant(user, 100, f"fund-{user}")
    worker.reserve_generation(user, "free")  # a freemium action
    worker.reserve_assistant(user, "paid", cost=10)

    captured = worker.capture("paid", amount=4)
    worker.capture("free")

    assert (captured["amount"], captured["returned"]) == (4, 6)
    rows = ledger_rows(engine, user)
    assert [(r.entry_type, r.amount, _figures(r)) for r in rows] == [
        ("grant", 100, (100, 0, 0)),
        ("hold", 1, (100, 0, 1)),
        ("hold", 10, (90, 0, 1)),
        ("release", 6, (96, 0, 1)),  # the rest of the capture, back at once
        ("capture", 4, (96, 0, 1)),  # moves nothing: the account as the rest left it
        ("capture", 1, (96, 0, 1)),
    ]
    assert _figures(rows[-1]) == _account_figures(accounts, user) == (96, 0, 1)
    assert worker.audit(user)["clean"] is True


def _busy_account(worker, accounts, engine) -> int:
    """Grants, a subscription, charges, refunds, holds settled every way, resets of both
    allowances and a subscription started afresh: every kind of row and of period."""
    user = accounts.create()
    worker.grant(user, 100, f"c-grant-{user}")
    worker.subscribe(user, "basic", f"c-sub-{user}")
    worker.charge_generation(user, f"c-g1-{user}")  # subscription
    worker.reserve_generation(user, f"c-h1-{user}")  # subscription
    worker.charge_assistant(user, f"c-as-{user}", cost=7)
    worker.refund(f"c-as-{user}")
    worker.reserve_assistant(user, f"c-h2-{user}", cost=10)
    worker.capture(f"c-h2-{user}", amount=3)
    shift_clock(engine, 31, [user])  # the subscription has ended; both periods have too
    worker.reset_due_limits()
    worker.release(f"c-h1-{user}")  # expired meanwhile (409); its expiry returned nothing
    worker.charge_generation(user, f"c-g2-{user}")  # freemium
    worker.refund(f"c-g1-{user}")  # its period ended: nothing returned
    worker.subscribe(user, "basic", f"c-sub2-{user}")  # a new subscription, a new period
    worker.charge_generation(user, f"c-g3-{user}")  # subscription
    worker.reserve_generation(user, f"c-h3-{user}")
    worker.release(f"c-h3-{user}")
    shift_clock(engine, 31, [user])
    worker.charge_generation(user, f"c-g4-{user}")  # a lazy reset, then freemium
    return user


def _corrupt(engine, ledger_id: int, column: str, by: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE credits_ledger SET {column} = {column} + :by WHERE id = :id"),
            {"by": by, "id": ledger_id},
        )


def test_the_audit_names_each_row_that_breaks_the_chain(worker, accounts, engine):
    user = _busy_account(worker, accounts, engine)
    honest = _busy_account(worker, accounts, engine)
    assert worker.audit()["clean"] is True
    rows = ledger_rows(engine, user)
    capture = next(r for r in rows if r.entry_type == "capture")
    charge = next(r for r in rows if r.idempotency_key == f"c-g3-{user}")
    # As the capture was written before the fix: the balance from before its rest came back.
    _corrupt(engine, capture.id, "balance_credits_after", -7)
    _corrupt(engine, charge.id, "subscription_ops_used_after", 2)

    result = worker.audit()

    assert (result["clean"], result["mismatch_count"]) == (False, 2)
    assert result["mismatches"] == [
        {
            "user_id": user,
            "field": "balance_credits_after",
            "ledger_id": capture.id,
            "stored": capture.balance_credits_after - 7,
            "ledger": capture.balance_credits_after,
        },
        {
            "user_id": user,
            "field": "subscription_ops_used_after",
            "ledger_id": charge.id,
            "stored": charge.subscription_ops_used_after + 2,
            "ledger": charge.subscription_ops_used_after,
        },
    ]
    assert worker.audit(honest)["clean"] is True


def _billing(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
    )


def test_repair_ledger_chain_lists_then_rewrites_the_rows_the_audit_names(worker, accounts, engine):
    user = _busy_account(worker, accounts, engine)
    tampered = _busy_account(worker, accounts, engine)
    rows = ledger_rows(engine, user)
    first_hold = next(r for r in rows if r.entry_type == "hold")
    _corrupt(engine, first_hold.id, "subscription_ops_used_after", 1)
    _corrupt(engine, rows[-1].id, "freemium_actions_used_after", 3)
    # An account whose own balance was written by hand: its rows may be the only record of
    # when, so the repair leaves them alone (the audit shows it).
    tampered_rows = ledger_rows(engine, tampered)
    _corrupt(engine, tampered_rows[2].id, "balance_credits_after", 500)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE users SET balance_credits = balance_credits + 500 WHERE id = :id"),
            {"id": tampered},
        )

    corrupted = ledger_rows(engine, user)

    dry = _billing("repair-ledger-chain", "--json")
    untouched = ledger_rows(engine, user)
    human = _billing("repair-ledger-chain", str(user))
    applied = _billing("repair-ledger-chain", "--apply", "--json")
    again = _billing("repair-ledger-chain", str(user), "--apply")

    assert dry.returncode == 1, dry.stderr
    listed = json.loads(dry.stdout)
    assert (listed["applied"], listed["accounts"], listed["change_count"]) == (False, 1, 2)
    assert [(c["ledger_id"], c["field"], c["ledger"] - c["stored"]) for c in listed["changes"]] == [
        (first_hold.id, "subscription_ops_used_after", -1),
        (rows[-1].id, "freemium_actions_used_after", -3),
    ]
    assert listed["skipped"] == [
        {
            "user_id": tampered,
            "reason": "its balance or counters disagree with its ledger's sums (billing audit)",
        }
    ]
    assert untouched == corrupted != rows  # the dry run wrote nothing
    assert human.returncode == 1
    assert f"ledger row {first_hold.id}: " in human.stdout and "--apply" in human.stdout
    assert applied.returncode == 1, applied.stderr  # the tampered account is left as it is
    assert json.loads(applied.stdout)["change_count"] == 2
    assert (again.returncode, again.stdout.splitlines()[0]) == (
        0,
        "rewrote 0 figure(s) of ledger rows in 0 account(s)",
    )
    assert ledger_rows(engine, user) == rows
    assert worker.audit(user)["clean"] is True
    audit = worker.audit(tampered)
    assert {m["field"] for m in audit["mismatches"]} == {"balance_credits", "balance_credits_after"}


def test_the_chain_on_the_embedded_default(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'billing.sqlite'}")
    migrate.upgrade(str(engine.url))
    settings = Settings(database_url=None, data_dir=tmp_path)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id) VALUES (1)"))
    fund = GrantArgs.parse((), {"user_id": 1, "amount": 100, "idempotency_key": "fund"})
    reserve = ReserveArgs.parse((), {"user_id": 1, "idempotency_key": "job", "cost": 10})
    capture = CaptureArgs.parse((), {"idempotency_key": "job", "amount": 4})
    with connect(engine) as conn:
        frame.run(conn, grants.Grant(fund), settings)
        holds.reserve(conn, Operation.ASSISTANT, reserve, settings)
        holds.capture(conn, capture, settings)

    def audited() -> dict:
        with transaction(session_factory(engine)) as session:
            return audit.audit(session, AuditArgs())

    with engine.connect() as conn:
        figures = conn.execute(text("SELECT balance_credits_after FROM credits_ledger ORDER BY id"))
        assert figures.scalars().all() == [100, 90, 96, 96]
    clean = audited()
    with engine.begin() as conn:
        conn.execute(text("UPDATE credits_ledger SET balance_credits_after = 90 WHERE id = 4"))
    drifted = audited()
    repaired = repair.repair_ledger_chain(engine, None, apply=True)

    assert clean["clean"] is True
    assert drifted["mismatches"] == [
        {"user_id": 1, "field": "balance_credits_after", "ledger_id": 4, "stored": 90, "ledger": 96}
    ]
    assert (repaired["accounts"], repaired["change_count"], repaired["skipped"]) == (1, 1, [])
    assert audited()["clean"] is True
    engine.dispose()
