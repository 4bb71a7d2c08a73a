"""Benchmark: credit grants on the charge's path, and the expiry sweep.

    python -m bench.grants [--quick] [--grants 100] [--sweep 1000000] [--repeat 3]
                           [--only charges|sweep]

1. charges: assistant charges (credits only) on accounts with ``--grants`` live grants each,
   against the same charges on accounts with none, in the same rounds, alternated. The charge
   reads an account's live grants through the partial index on (user_id, priority,
   expires_at, id), never a scan of its closed ones: every account also has as many expired
   grants, which must cost nothing. Both with the state in the answer (a raw task's default:
   it lists every live grant) and without (``include_state=False``).
2. sweep: ``billing.expire_grants``'s work (``billing.jobs.expiry.expire_grants``) over
   ``--sweep`` due grants (100 per account), against the least any expiry can do: one UPDATE of
   the same grants and one of their accounts' balances, with no ledger row and no event.

Prints each side's median and their ratio; writes JSON to bench/results/grants.json.
"""

from __future__ import annotations

import argparse
import os
import uuid
from typing import Any

import redis
from sqlalchemy import create_engine, text

from bench import run
from bench import throughput as tp
from bench.common import scratch_database, summary, timed, write_json

PLAIN, GRANTED = 1, 2  # account id ranges: [1, n] plain, [n + 1, 2n] with grants
BALANCE = 1_000_000

ACCOUNTS_SQL = """
INSERT INTO users (id, freemium_actions_used, balance_credits)
SELECT g, 5, :balance FROM generate_series(1, CAST(:n AS integer)) AS g
"""
# For the accounts with grants: ``per`` live ones (their remaining is the whole balance, so no
# general balance is left to draw first) and as many expired ones.
GRANTS_SQL = """
INSERT INTO credit_grants (user_id, idempotency_key, amount, remaining, expires_at, priority,
                           category, status, created_at, closed_at)
SELECT u, 'live-' || u || '-' || k, :each, :each, now() + (k || ' days')::interval, k % 100,
       CASE WHEN k % 2 = 0 THEN 'paid' ELSE 'promotional' END::credit_category_enum,
       'active'::grant_status_enum, now(), NULL
FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS u,
     generate_series(1, CAST(:per AS integer)) AS k
UNION ALL
SELECT u, 'old-' || u || '-' || k, 10, 0, now() - interval '1 day', 50,
       'paid'::credit_category_enum, 'expired'::grant_status_enum,
       now() - interval '2 days', now() - interval '1 day'
FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS u,
     generate_series(1, CAST(:per AS integer)) AS k
"""
DUE_SQL = """
INSERT INTO users (id, freemium_actions_used, balance_credits)
SELECT g, 5, 100 * 7 FROM generate_series(1, CAST(:accounts AS integer)) AS g;
INSERT INTO credit_grants (user_id, idempotency_key, amount, remaining, expires_at, priority,
                           category, status, created_at)
SELECT u, 'due-' || u || '-' || k, 7, 7, now() - interval '1 second', 50, 'promotional',
       'active', now() - interval '1 day'
FROM generate_series(1, CAST(:accounts AS integer)) AS u, generate_series(1, 100) AS k
"""
PLAIN_EXPIRY = """
WITH expired AS (
    UPDATE credit_grants SET remaining = 0, status = 'expired', closed_at = now()
    WHERE status = 'active' AND expires_at <= now()
    RETURNING user_id, remaining
)
UPDATE users AS u SET balance_credits = 0
FROM (SELECT DISTINCT user_id FROM expired) AS e WHERE u.id = e.user_id
"""


def charges_scenario(args: argparse.Namespace) -> dict[str, Any]:
    db_url = scratch_database("billing_bench_grants")
    run._configure_environment(db_url)
    engine = create_engine(db_url)
    n = args.accounts
    with engine.begin() as conn:
        conn.execute(text(ACCOUNTS_SQL), {"n": 2 * n, "balance": BALANCE})
        each = BALANCE // args.grants
        conn.execute(
            text(GRANTS_SQL),
            {"first": n + 1, "last": 2 * n, "per": args.grants, "each": each},
        )
        conn.execute(
            text("UPDATE users SET balance_credits = :b WHERE id > :n"),
            {"b": each * args.grants, "n": n},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()

    from bench.app import app

    redis.Redis.from_url(run.REDIS_URL).flushdb()
    tag = uuid.uuid4().hex[:8]
    counter = iter(range(10**9))

    def charges(first: int, state: bool = True) -> list[tuple[str, dict[str, Any]]]:
        return [
            (
                "billing.charge_assistant",
                {
                    "user_id": first + (i * 7919) % n,
                    "idempotency_key": f"{tag}-{next(counter)}",
                    "cost": 1,
                    "include_state": state,
                },
            )
            for i in range(args.tasks)
        ]

    # With the state (the default of a raw task: it lists every live grant, 15 KB at 100) and
    # without it (include_state=False, the client's default): the first prices the answer's
    # size as well as the read, the second the read alone.
    live = f"{args.grants} live grants"
    sides = {
        "no grants": (1, True),
        live: (n + 1, True),
        "no grants, no state": (1, False),
        f"{live}, no state": (n + 1, False),
    }
    results: dict[str, list[tp.StreamResult]] = {side: [] for side in sides}
    with tp.workers(app, {}, args.concurrency, run.LOG_DIR):
        # Warm up on every account: the first touch of an account records the expiring
        # notices of its grants due within the notice period, once per grant.
        tp.run_stream(app, charges(1)[:n])
        tp.run_stream(app, charges(n + 1)[:n])
        for round_ in range(args.repeat):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for side in order:
                results[side].append(tp.run_stream(app, charges(*sides[side])))
    rates = {side: tp.median_of_rates(runs) for side, runs in results.items()}
    median = {side: rate["median"] for side, rate in rates.items()}
    return {
        "rates": rates,
        "cost_ratio": median["no grants"] / median[live],
        "cost_ratio_no_state": median["no grants, no state"] / median[f"{live}, no state"],
    }


def sweep_scenario(args: argparse.Namespace) -> dict[str, Any]:
    from billing.core.settings import Settings

    url = scratch_database("billing_bench_grant_sweep")
    engine = create_engine(url)
    accounts = max(args.sweep // 100, 1)
    settings = Settings(database_url=url)
    plain, ours, details = [], [], []
    for _ in range(args.repeat):
        for side in ("plain", "ours"):
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "TRUNCATE users, credit_grants, credits_ledger, billing_requests,"
                        " billing_events RESTART IDENTITY CASCADE"
                    )
                )
                for statement in DUE_SQL.split(";"):
                    if statement.strip():
                        conn.execute(text(statement), {"accounts": accounts})
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))
                conn.execute(text("CHECKPOINT"))
            if side == "plain":
                seconds, _ = timed(lambda: _plain_expiry(engine))
                plain.append(seconds)
            else:
                seconds, totals = timed(lambda: _sweep(url, settings))
                ours.append(seconds)
                details.append(totals)
                assert totals["credits_expired"] == accounts * 100 * 7, totals
    engine.dispose()
    return {
        "due_grants": accounts * 100,
        "accounts": accounts,
        "plain_update_s": summary(plain),
        "expire_grants_s": summary(ours),
        "ratio": summary(ours)["median"] / summary(plain)["median"],
        "totals": details[-1],
    }


def _sweep(url: str, settings: Any) -> dict[str, Any]:
    from billing.jobs.expiry import expire_grants
    from billing.storage.engine import create_db_engine

    engine = create_db_engine(url)
    try:
        return expire_grants(engine, settings)
    finally:
        engine.dispose()


def _plain_expiry(engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(PLAIN_EXPIRY))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks and due grants")
    parser.add_argument("--grants", type=int, default=100, help="live grants per account")
    parser.add_argument("--sweep", type=int, default=None, help="due grants for the sweep")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["charges", "sweep"], help="one of the two scenarios")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    args.tasks = 2000 if args.quick else 10_000
    args.accounts = 1000
    if args.sweep is None:
        args.sweep = 100_000 if args.quick else 1_000_000
    result = {}
    if args.only in (None, "charges"):
        result["charges"] = charges_scenario(args)
    if args.only in (None, "sweep"):
        result["sweep"] = sweep_scenario(args)
    path = write_json("grants" if args.only is None else f"grants-{args.only}", result)
    if "charges" in result:
        _print_charges(result["charges"], args)
    if "sweep" in result:
        _print_sweep(result["sweep"])
    print(f"results: {path}")


def _print_charges(c: dict[str, Any], args: argparse.Namespace) -> None:
    for side, rate in c["rates"].items():
        print(f"charges, {side:<28} {rate['median']:>8.1f}/s")
    print(f"a charge with {args.grants} live grants costs x{c['cost_ratio']:.2f} one with none")
    print(f"  without the state in its answer: x{c['cost_ratio_no_state']:.2f}")


def _print_sweep(s: dict[str, Any]) -> None:
    print(
        f"expiry of {s['due_grants']} due grants: {s['expire_grants_s']['median']:.1f} s"
        f" against one UPDATE's {s['plain_update_s']['median']:.1f} s: x{s['ratio']:.1f}"
    )


if __name__ == "__main__":
    main()
