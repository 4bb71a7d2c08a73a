"""The alert rules are valid, do what their unit tests say on synthetic series, and each links
to a runbook entry that exists on the docs site (docs/operations.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "prometheus" / "billing-rules.yml"


def _promtool(*args: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run does)"
    return subprocess.run(
        [promtool, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120
    )


def test_promtool_checks_the_rules():
    checked = _promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_promtool_unit_tests_of_the_alerts_pass():
    tested = _promtool("test", "rules", "billing-rules.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_unit_tested_and_links_to_its_runbook():
    # Each alert, with the runbook_url of its annotations (the next one after its name).
    alerts = re.findall(
        r"- alert: (\w+)\n(?:.*\n)*?\s+runbook_url: \"([^\"]+)\"", RULES.read_text()
    )
    tests = (RULES.parent / "billing-rules.test.yml").read_text()
    # The anchors MkDocs makes of the Operations page's headings (its toc slugs).
    page = (ROOT / "docs" / "operations.md").read_text()
    anchors = {
        re.sub(r"[^\w -]", "", heading.lower()).strip().replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", page, re.M)
    }
    assert len(alerts) == RULES.read_text().count("- alert:")
    assert {name for name, _link in alerts} >= {
        "BillingWorkerDown",
        "BillingTaskFailures",
        "BillingPaymentRequiredJump",
        "BillingQueueBacklog",
        "BillingResetSweepStale",
        "BillingExpirySweepStale",
        "BillingEventsBacklog",
        "BillingAuditMismatch",
    }
    for name, link in alerts:
        assert f"alertname: {name}" in tests, f"{name} has no unit test"
        assert link.startswith("/operations/#"), link  # the page docs/operations.md
        assert link.split("#", 1)[1] in anchors, f"{link}: no such heading on the page"
