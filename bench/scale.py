"""Growth: the charge on a large ledger against the same charge on an empty one.

    python -m bench.scale                            # 0, 5M and 20M rows (an hour on 2 cores)
    python -m bench.scale --rows 0 500000 2000000    # smaller, for a try

Two scratch databases with the same 1,000,000 accounts: ``billing_bench_scale_empty`` keeps an
empty ledger; ``billing_bench_scale`` grows, size by size, to the number of rows given in
``credits_ledger`` and ``billing_requests``, with keys shaped like real ones (random UUIDs),
accounts spread over every user, times over a year, and each remembered outcome a real
charge's answer. After each load both databases are warmed by charges, then vacuumed and
analysed, as autovacuum would have done on live ones.

Then one billing worker per database (each on its own queue), and charges over all the
accounts, alternated between the two: a stream to the empty one, a stream to the large one,
the order swapped every round. Each stream runs long enough to include a checkpoint, forced
halfway through it on the database it charges, so both sides pay for one. The figure is the
median over rounds of the large side's rate over the empty side's, with the tables' and their
indexes' sizes, and the growth per million charges.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import uuid
from typing import Any

from sqlalchemy import create_engine, text

from bench.bare import REDIS_URL
from bench.common import RESULTS_DIR, scratch_database, write_json

USERS = 1_000_000
LOAD_CHUNK = 1_000_000
EMPTY_QUEUE, LARGE_QUEUE = "bench", "bench-large"

ACCOUNTS = """
INSERT INTO users (id, balance_credits)
SELECT g, 1000000000 FROM generate_series(1, :n) AS g
"""
# One chunk of rows: a ledger row per charge and its remembered outcome, in one statement.
LOAD = """
WITH entry AS (
    INSERT INTO credits_ledger (user_id, entry_type, source, operation, amount,
        idempotency_key, balance_credits_after, subscription_ops_used_after,
        freemium_actions_used_after, created_at)
    SELECT 1 + floor(random() * :users)::bigint, 'charge', 'credits', 'generation', 10,
           gen_random_uuid()::text, 1000, 0, 0,
           now() - random() * interval '365 days'
    FROM generate_series(1, :n)
    RETURNING id, user_id, idempotency_key, created_at
)
INSERT INTO billing_requests (idempotency_key, user_id, operation, cost, response, ledger_id,
                              created_at)
SELECT idempotency_key, user_id, 'generation', 10,
       CAST(:response AS jsonb)
           || jsonb_build_object('idempotency_key', idempotency_key, 'ledger_id', id),
       id, created_at
FROM entry
"""
TABLES = ("credits_ledger", "billing_requests", "users")


def _rows(engine: Any) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM credits_ledger")).scalar_one()


def grow(engine: Any, rows: int, response: dict[str, Any]) -> float:
    """Add rows until the ledger holds ``rows``; the seconds it took."""
    started = time.perf_counter()
    have = _rows(engine)
    while have < rows:
        n = min(LOAD_CHUNK, rows - have)
        with engine.begin() as conn:
            conn.execute(text(LOAD), {"users": USERS, "n": n, "response": json.dumps(response)})
        have += n
        print(f"  loaded {have:,} rows", flush=True)
    return time.perf_counter() - started


def settle(*urls: str) -> None:
    """Vacuum and analyse both databases, as autovacuum would have on live ones, then a
    checkpoint. Done after the warm-up, when neither ledger is empty: statistics of an empty
    table plan the charge's key lookups as scans, and the side that had them ran 3x slower
    (a bench artifact; autovacuum's analyse corrects it on a live database)."""
    for url in urls:
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for table in TABLES:
                conn.execute(text(f"VACUUM ANALYZE {table}"))
            conn.execute(text("CHECKPOINT"))
        engine.dispose()


def sizes(engine: Any) -> dict[str, dict[str, int]]:
    out = {}
    with engine.connect() as conn:
        for table in TABLES:
            row = conn.execute(
                text(
                    "SELECT pg_table_size(CAST(:t AS regclass)),"
                    " pg_indexes_size(CAST(:t AS regclass)),"
                    " (SELECT count(*) FROM " + table + ")"
                ),
                {"t": table},
            ).one()
            out[table] = {"table_bytes": row[0], "index_bytes": row[1], "rows": row[2]}
    return out


def _checkpoint_later(url: str, after: float) -> threading.Timer:
    def checkpoint() -> None:
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CHECKPOINT"))
        engine.dispose()

    timer = threading.Timer(after, checkpoint)
    timer.start()
    return timer


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from bench import throughput as tp
    from bench.pieces import charge_result

    empty_url = scratch_database("billing_bench_scale_empty")
    large_url = scratch_database("billing_bench_scale")
    for url in (empty_url, large_url):
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(ACCOUNTS), {"n": USERS})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE users"))
        engine.dispose()

    os.environ.update(
        BILLING_DATABASE_URL=empty_url,
        BILLING_BROKER_URL=REDIS_URL,
        BILLING_RESULT_BACKEND=REDIS_URL,
        BILLING_QUEUE=EMPTY_QUEUE,
    )
    import redis

    from bench.app import app

    redis.Redis.from_url(REDIS_URL).flushdb()
    response = {k: v for k, v in charge_result().items() if k not in ("ledger_id",)}
    run = uuid.uuid4().hex[:8]
    counter = iter(range(10**9))

    def charges(n: int) -> list[tuple[str, dict[str, Any]]]:
        # Spread over every account, each charge under a fresh random key.
        return [
            (
                "billing.charge_generation",
                {
                    "user_id": 1 + (i * 7919 + next(counter)) % USERS,
                    "idempotency_key": str(uuid.uuid4()),
                },
            )
            for i in range(n)
        ]

    log_dir = RESULTS_DIR / "logs"
    out: dict[str, Any] = {"users": USERS, "run": run, "sizes": {}}
    large_engine = create_engine(large_url)
    empty_workers = tp.workers(app, {}, args.concurrency, log_dir, queue=EMPTY_QUEUE)
    large_env = {"BILLING_DATABASE_URL": large_url, "BILLING_QUEUE": LARGE_QUEUE}
    with empty_workers:
        for rows in args.rows:
            print(f"growing the large ledger to {rows:,} rows", flush=True)
            load_seconds = grow(large_engine, rows, response)
            with tp.workers(app, large_env, args.concurrency, log_dir, queue=LARGE_QUEUE):
                for queue in (EMPTY_QUEUE, LARGE_QUEUE):  # warm up both: caches, plans
                    tp.run_stream(app, charges(args.warmup), queue=queue)
                settle(empty_url, large_url)
                rate = tp.run_stream(app, charges(500), queue=EMPTY_QUEUE).rate
                ratios, rates = [], []
                for i in range(args.repeat):
                    order = [(EMPTY_QUEUE, empty_url), (LARGE_QUEUE, large_url)]
                    got: dict[str, float] = {}
                    for queue, url in order if i % 2 == 0 else reversed(order):
                        messages = charges(args.tasks)
                        # A checkpoint halfway through the stream, on the database it charges.
                        timer = _checkpoint_later(url, args.tasks / rate / 2)
                        got[queue] = tp.run_stream(app, messages, queue=queue).rate
                        timer.join()
                    ratios.append(got[LARGE_QUEUE] / got[EMPTY_QUEUE])
                    rates.append((got[EMPTY_QUEUE], got[LARGE_QUEUE]))
            out["sizes"][str(rows)] = {
                "rows": rows,
                "load_seconds": load_seconds,
                "ratio": statistics.median(ratios),
                "ratios": ratios,
                "empty_per_s": statistics.median(r[0] for r in rates),
                "large_per_s": statistics.median(r[1] for r in rates),
                "tables": sizes(large_engine),
            }
            print("\n".join(lines(out)), flush=True)
    large_engine.dispose()
    return out


def per_million(out: dict[str, Any]) -> dict[str, float] | None:
    """Bytes per million charges, from the largest size: tables and indexes."""
    largest = max(out["sizes"].values(), key=lambda s: s["rows"])
    if not largest["rows"]:
        return None
    m = largest["rows"] / 1_000_000
    t = largest["tables"]
    return {
        f"{table}_{kind}": t[table][f"{kind}_bytes"] / m
        for table in ("credits_ledger", "billing_requests")
        for kind in ("table", "index")
    }


def lines(out: dict[str, Any]) -> list[str]:
    gib = 1024**3
    result = [
        f"scale: charges over {out['users']:,} accounts, a large ledger against an empty one"
        " (medians of alternated pairs, a checkpoint in every stream)",
        f"  {'rows':>12} {'vs empty':>9} {'pairs':>20} {'ledger table+idx GiB':>21}"
        f" {'requests table+idx GiB':>23}",
    ]
    for s in out["sizes"].values():
        t = s["tables"]
        ledger, requests = t["credits_ledger"], t["billing_requests"]
        pairs = " ".join(f"{x:.2f}" for x in s["ratios"])
        result.append(
            f"  {s['rows']:>12,} {s['ratio']:>9.2f} {pairs:>20}"
            f" {ledger['table_bytes'] / gib:>10.2f}+{ledger['index_bytes'] / gib:<10.2f}"
            f" {requests['table_bytes'] / gib:>11.2f}+{requests['index_bytes'] / gib:<11.2f}"
        )
    growth = per_million(out)
    if growth:
        mib = 1024**2
        result.append(
            "  per million charges: ledger "
            f"{growth['credits_ledger_table'] / mib:.0f} MiB + indexes"
            f" {growth['credits_ledger_index'] / mib:.0f} MiB, remembered outcomes"
            f" {growth['billing_requests_table'] / mib:.0f} MiB + index"
            f" {growth['billing_requests_index'] / mib:.0f} MiB"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[0, 5_000_000, 20_000_000])
    parser.add_argument("--tasks", type=int, default=6000, help="charges a stream")
    parser.add_argument("--warmup", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    out = measure(args)
    path = write_json("scale", out)
    print("\n".join(lines(out)))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
