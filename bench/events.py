"""Balance events on against off: the same charges, workers started with
``BILLING_EVENTS_ENABLED=true`` and ``false``, alternated in one run.

Two streams, each on fresh credits-only accounts charged until they are empty: the worst
case, where every account holds three generations' worth, so every third charge crosses the
low threshold and empties the account (its task records two events and publishes them after
its commit), and one where accounts hold thirty, so one charge in thirty does. (A charge that
crosses nothing pays only for comparing its counters before and after.) For
each stream with events on, the delay from a movement to its events being on the queue is
read from the outbox: ``published_at`` (the relay's clock once the broker took the messages)
minus ``occurred_at`` (the movement transaction's start, before its commit), so it bounds the
commit-to-queue delay from above.
"""

from __future__ import annotations

import statistics
from typing import Any

from sqlalchemy import create_engine, text

from bench import throughput as tp
from bench.common import summary

ACCOUNTS_SQL = """
INSERT INTO users (id, freemium_actions_used, balance_credits)
SELECT g, 5, :generations * :cost FROM generate_series(:first, :last) AS g
"""
DELAYS_SQL = """
SELECT count(*) FILTER (WHERE published_at IS NULL),
       count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY published_at - occurred_at),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY published_at - occurred_at),
       max(published_at - occurred_at)
FROM billing_events WHERE user_id BETWEEN :first AND :last
"""


STREAMS = {"every_third_crosses": 3, "one_in_thirty_crosses": 30}


def measure(app, db_url: str, tasks: int, repeat: int, concurrency: int, log_dir) -> dict:
    from billing.core.settings import get_settings

    cost = get_settings().generation_cost
    engine = create_engine(db_url)
    blocks = iter(range(1, 10**6))

    def stream(generations: int) -> tuple[list[tuple[str, dict[str, Any]]], int, int]:
        accounts = max(tasks // generations, 1)
        first = 100_000_000 + next(blocks) * 1_000_000
        last = first + accounts - 1
        with engine.begin() as conn:
            conn.execute(
                text(ACCOUNTS_SQL),
                {"generations": generations, "cost": cost, "first": first, "last": last},
            )
        messages = [
            (
                "billing.charge_generation",
                {"user_id": first + i % accounts, "idempotency_key": f"ev-{first}-{i}"},
            )
            for i in range(generations * accounts)
        ]
        return messages, first, last

    runs: dict[tuple[str, str], list[tp.StreamResult]] = {}
    delays: dict[str, list[dict[str, float]]] = {kind: [] for kind in STREAMS}
    for round_ in range(repeat):
        # Alternated, and which side goes first too: drift on the machine, and whatever the
        # second worker of a round inherits from the first, hit both alike.
        for side in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
            env = {"BILLING_EVENTS_ENABLED": "true" if side == "on" else "false"}
            with tp.workers(app, env, concurrency, log_dir):
                tp.run_stream(app, stream(3)[0][:300])  # warm up
                for kind, generations in STREAMS.items():
                    messages, first, last = stream(generations)
                    runs.setdefault((kind, side), []).append(tp.run_stream(app, messages))
                    with engine.connect() as conn:
                        pending, recorded, p50, p99, worst = conn.execute(
                            text(DELAYS_SQL), {"first": first, "last": last}
                        ).one()
                    accounts = last - first + 1
                    if side == "off":
                        if recorded:
                            raise RuntimeError(f"events off, yet {recorded} were recorded")
                        continue
                    if recorded != 2 * accounts or pending:
                        raise RuntimeError(
                            f"{recorded} events for {accounts} accounts, {pending} unpublished"
                        )
                    delays[kind].append(
                        {
                            "p50_ms": p50.total_seconds() * 1000,
                            "p99_ms": p99.total_seconds() * 1000,
                            "max_ms": worst.total_seconds() * 1000,
                        }
                    )
    engine.dispose()
    out: dict[str, Any] = {}
    for kind, generations in STREAMS.items():
        on, off = (statistics.median(r.rate for r in runs[(kind, s)]) for s in ("on", "off"))
        out[kind] = {
            "events_per_charge": 2 / generations,
            "events_on": tp.median_of(runs[(kind, "on")]),
            "events_off": tp.median_of(runs[(kind, "off")]),
            "on_over_off": on / off,
            "delay_to_queue": {k: summary([d[k] for d in delays[kind]]) for k in delays[kind][0]},
        }
    return out


def line(results: dict[str, Any]) -> str:
    lines = []
    for kind, r in results.items():
        on, off = r["events_on"]["tasks_per_s"], r["events_off"]["tasks_per_s"]
        delay = r["delay_to_queue"]
        lines.append(
            f"balance events, {kind.replace('_', ' ')} ({r['events_per_charge']:.3f} events per"
            f" charge): on {on['median']:.1f} charges/s ({on['min']:.1f}-{on['max']:.1f}) vs off"
            f" {off['median']:.1f} ({off['min']:.1f}-{off['max']:.1f}): x{r['on_over_off']:.2f};"
            f" movement to queue p50 {delay['p50_ms']['median']:.1f} ms,"
            f" p99 {delay['p99_ms']['median']:.1f} ms (max {delay['max_ms']['max']:.1f} ms)"
        )
    return "\n".join(lines)
