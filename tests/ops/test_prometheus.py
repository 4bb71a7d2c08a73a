"""A real Prometheus scrapes a real worker under load; the outcomes come back through its
HTTP API, and it loads the alert rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from billing.core.settings import get_settings
from tests.procs import celery_worker_process, free_port, wait_until
from worker import app

QUEUE = "billing-prometheus"
RULES = Path(__file__).resolve().parents[2] / "ops" / "prometheus" / "billing-rules.yml"


def _api(base: str, path: str, **params: str) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _value(base: str, query: str) -> float | None:
    result = _api(base, "/api/v1/query", query=query)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_a_worker_under_load(accounts, tmp_path):
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is missing: apt-get install prometheus (.ci/run does)"
    cost = get_settings().generation_cost
    users = [accounts.credits_only(balance_credits=10 * cost) for _ in range(4)]
    metrics_port, web_port = free_port(), free_port()
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{RULES.name}]\n"
        "scrape_configs:\n"
        "  - job_name: billing-worker\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    base = f"http://127.0.0.1:{web_port}"
    env = {"BILLING_METRICS_PORT": str(metrics_port)}
    with celery_worker_process(QUEUE, concurrency=2, env=env):
        server = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115
        )
        try:

            def ready() -> bool:
                try:
                    with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
                        return response.status == 200
                except OSError:
                    return False

            wait_until(ready, "Prometheus is ready", timeout=60)
            sent = [
                app.send_task(
                    "billing.charge_generation",
                    kwargs={"user_id": users[n % 4], "idempotency_key": f"prom-{n}"},
                    queue=QUEUE,
                )
                for n in range(60)
            ]
            answers = [result.get(timeout=60) for result in sent]
            paid = sum(1 for answer in answers if answer["code"] == 200)
            refused = sum(1 for answer in answers if answer["code"] == 402)
            query = 'sum by (code) (billing_outcomes_total{task="billing.charge_generation"})'

            def scraped() -> bool:
                result = _api(base, "/api/v1/query", query=query)["data"]["result"]
                by_code = {r["metric"]["code"]: float(r["value"][1]) for r in result}
                return by_code == {"200": paid, "402": refused}

            wait_until(scraped, "Prometheus has every outcome", timeout=60)
            up = _value(base, 'up{job="billing-worker"}')
            holds = _value(base, "max(billing_holds_open)")
            groups = _api(base, "/api/v1/rules")["data"]["groups"]
        finally:
            server.terminate()
            server.wait(timeout=30)

    assert (paid, refused) == (40, 20)
    assert up == 1 and holds == 0
    alerts = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"BillingWorkerDown", "BillingAuditMismatch", "BillingQueueBacklog"} <= alerts
