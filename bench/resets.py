"""Benchmark: reset N due accounts with billing.reset_due_limits, against one plain UPDATE.

    python -m bench.resets [--accounts 1000000] [--repeat 3] [--target-ms 40]

Both sides start from the same state: a freshly loaded, vacuumed table of due accounts (a third
of them with nothing used, so no reset record is written for them), an empty reset journal and
a fresh checkpoint, so no run pays for the previous one's records or dirty pages. The baseline
is the least any reset can do: one UPDATE of the same rows in one statement, holding every row
lock until it ends and leaving no record. Prints the median and min-max of each and their
ratio; writes JSON to bench/results/resets.json.
"""

from __future__ import annotations

import argparse

from sqlalchemy import create_engine, text

from bench.common import scratch_database, summary, timed, write_json
from billing.core.settings import Settings
from billing.jobs.resets import BATCH_TARGET_MS, reset_due_limits
from billing.storage.engine import create_db_engine, session_factory

LOAD = """
INSERT INTO users (id, freemium_actions_used, freemium_reset_at,
                   subscription_ops_used, subscription_ops_reset_at, balance_credits)
SELECT g, g % 3, now() - interval '31 days', (g % 5) * (g % 3), now() - interval '40 days', 0
FROM generate_series(1, :n) AS g
"""

PLAIN_UPDATE = """
UPDATE users SET
    freemium_actions_used = 0, freemium_reset_at = freemium_reset_at + interval '30 days',
    subscription_ops_used = 0,
    subscription_ops_reset_at = subscription_ops_reset_at + interval '30 days'
WHERE freemium_reset_at <= now() - interval '30 days'
   OR subscription_ops_reset_at <= now() - interval '30 days'
"""


def _reload(engine, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE users, credits_ledger, billing_requests, allowance_resets"))
        conn.execute(text(LOAD), {"n": n})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE users"))
        conn.execute(text("VACUUM ANALYZE credits_ledger"))
        conn.execute(text("VACUUM ANALYZE allowance_resets"))
        # The load's dirty pages are written now, not by a checkpoint in the middle of a run.
        conn.execute(text("CHECKPOINT"))


def measure(accounts: int, repeat: int, target_ms: float = BATCH_TARGET_MS) -> dict:
    url = scratch_database("billing_bench_resets")
    engine = create_engine(url)
    factory = session_factory(create_db_engine(url))
    settings = Settings(database_url=url)
    plain, ours, details = [], [], []
    for _ in range(repeat):
        _reload(engine, accounts)

        def update_once() -> int:
            with engine.begin() as conn:
                return conn.execute(text(PLAIN_UPDATE)).rowcount

        seconds, rows = timed(update_once)
        assert rows == accounts, rows
        plain.append(seconds)

        _reload(engine, accounts)
        seconds, totals = timed(lambda: reset_due_limits(factory, settings, target_ms))
        assert totals["reset"] == accounts, totals
        ours.append(seconds)
        details.append(totals)
    engine.dispose()
    return {
        "accounts": accounts,
        "batch_target_ms": target_ms,
        "plain_update_s": summary(plain),
        "reset_due_limits_s": summary(ours),
        "ratio_median": summary(ours)["median"] / summary(plain)["median"],
        "slowest_batch_ms": max(d["slowest_batch_ms"] for d in details),
        "batches": [d["batches"] for d in details],
        "reset_rows_written": details[-1]["recorded"],
        "runs": details,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--target-ms", type=float, default=BATCH_TARGET_MS)
    args = parser.parse_args()
    result = measure(args.accounts, args.repeat, args.target_ms)
    path = write_json("resets", result)
    p, o = result["plain_update_s"], result["reset_due_limits_s"]
    print(f"{'scenario':<34} {'median s':>9} {'min-max s':>15}  ratio")
    print(
        f"{'one plain UPDATE (baseline)':<34} {p['median']:>9.2f} "
        f"{p['min']:>7.2f}-{p['max']:<7.2f}  1.00"
    )
    print(
        f"{'billing.reset_due_limits':<34} {o['median']:>9.2f} "
        f"{o['min']:>7.2f}-{o['max']:<7.2f}  {result['ratio_median']:.2f}"
    )
    print(
        f"{args.accounts} accounts, batches aiming at {args.target_ms:.0f} ms"
        f" ({result['batches'][-1]} in the last run); slowest batch (longest any row "
        f"lock was held) {result['slowest_batch_ms']:.0f} ms; "
        f"{result['reset_rows_written']} reset records written per run"
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
