"""billing.audit: every balance and counter is explained by the ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sqlalchemy import text

from tests.conftest import shift_clock


def _busy_account(worker, accounts, engine) -> int:
    user = accounts.create()
    worker.grant(user, 100, f"a-grant-{user}")
    worker.subscribe(user, "basic", f"a-sub-{user}")
    worker.charge_generation(user, f"a-g1-{user}")  # subscription
    worker.charge_assistant(user, f"a-as-{user}", cost=7)  # credits
    worker.refund(f"a-as-{user}")
    worker.charge_assistant(user, f"a-as2-{user}", cost=9)
    shift_clock(engine, 31, [user])
    worker.reset_due_limits()
    worker.charge_generation(user, f"a-g2-{user}")  # freemium: the subscription has expired
    worker.refund(f"a-g1-{user}")  # its period ended: nothing returned
    return user


def test_audit_of_a_clean_account(worker, accounts, engine):
    user = _busy_account(worker, accounts, engine)

    one = worker.audit(user)
    everyone = worker.audit()

    assert (one["ok"], one["clean"], one["accounts_checked"], one["mismatches"]) == (
        True,
        True,
        1,
        [],
    )
    assert everyone["clean"] is True and everyone["accounts_checked"] == 1


def test_audit_reports_a_tampered_account(worker, accounts, engine):
    user = _busy_account(worker, accounts, engine)
    honest = _busy_account(worker, accounts, engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE users SET balance_credits = balance_credits + 500,"
                " freemium_actions_used = 0 WHERE id = :id"
            ),
            {"id": user},
        )

    result = worker.audit()

    assert result["clean"] is False and result["mismatch_count"] == 2
    assert sorted(
        (m["user_id"], m["field"], m["stored"] - m["ledger"]) for m in result["mismatches"]
    ) == [
        (user, "balance_credits", 500),
        (user, "freemium_actions_used", -1),
    ]
    assert worker.audit(honest)["clean"] is True


def test_audit_of_an_unknown_user_is_404(worker):
    assert worker.audit(31337)["error"] == "user_not_found"


def test_audit_command(worker, accounts, engine):
    user = _busy_account(worker, accounts, engine)
    cmd = [sys.executable, "-m", "cli.main", "audit"]

    clean = subprocess.run([*cmd, str(user)], capture_output=True, text=True, env=os.environ)
    with engine.begin() as conn:
        conn.execute(text("UPDATE users SET balance_credits = 1 WHERE id = :id"), {"id": user})
    dirty = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=os.environ)

    assert clean.returncode == 0 and "clean" in clean.stdout
    assert dirty.returncode == 1
    assert json.loads(dirty.stdout)["mismatches"][0]["field"] == "balance_credits"
