"""`billing demo` runs to completion on the embedded default, as a new user would run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_demo_on_the_embedded_default(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env["BILLING_DATA_DIR"] = str(tmp_path / "data")

    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--charges", "40"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "billing demo on the embedded default" in out
    assert "40/40 charges answered" in out
    table = re.findall(
        r"^charge_(generation|assistant)\s+(\S+)\s+(\d{3})\s+(\w+)\s+(\d+)$", out, re.M
    )
    assert sum(int(row[4]) for row in table) == 40
    assert {row[1] for row in table} >= {"admin", "subscription", "credits", "not_enough_credits"}
    assert "state of the subscriber account:" in out and "its latest ledger entries:" in out
    assert "worker and beat stopped" in out
    assert (tmp_path / "data" / "billing.sqlite").exists()
