"""This checkout's charge-to-floor ratio against another revision's, measured in one run.

    python -m bench.compare --base HEAD~1            # a change on the charge's path
    python -m bench.compare --base b450997 --quick

The base revision is checked out in a temporary git worktree; in every round a worker runs
the base's code (started from that worktree) and then one runs this checkout's (or the other
way round, swapped every round), each measured on the no-op floor and on generation charges
over the same accounts, database, Redis and producer, and each side's streams are paired with
a stream of the plain Celery floor (``bench.bare``, whose worker runs throughout) just before
them. What is reported is each side's charges/floor, its charges over the plain floor (the
median of its pairs) and their ratios: the machine's drift between rounds hits both sides
alike.
Both revisions must share the schema (the scratch database is migrated by this checkout).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench import run
from bench import throughput as tp
from bench.common import scratch_database, write_json

ROOT = Path(__file__).resolve().parent.parent


def measure(base: Path, args: argparse.Namespace) -> dict[str, Any]:
    import redis

    from bench.app import app  # reads the settings configured by the caller

    redis.Redis.from_url(run.REDIS_URL).flushdb()
    charges = run.charge_messages()
    sides = {"base": base, "head": ROOT}
    results: dict[str, dict[str, list[tp.StreamResult]]] = {
        side: {"bare": [], "floor": [], "charges": []} for side in sides
    }

    with tp.bare_workers(args.concurrency, run.LOG_DIR):
        tp.bare_stream(200)
        for round_ in range(args.repeat):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for side in order:
                with tp.workers(app, {}, args.concurrency, run.LOG_DIR, cwd=sides[side]):
                    tp.run_stream(app, run.noops(200))  # warm up: connections, prepared plans
                    tp.run_stream(app, charges(200, args.accounts))
                    results[side]["bare"].append(tp.bare_stream(args.tasks))
                    results[side]["floor"].append(tp.run_stream(app, run.noops(args.tasks)))
                    results[side]["charges"].append(
                        tp.run_stream(app, charges(args.tasks, args.accounts))
                    )
    return {
        side: {
            **{kind: tp.median_of_rates(runs) for kind, runs in kinds.items()},
            "charges_vs_bare": tp.pair_ratios(kinds["charges"], kinds["bare"]),
        }
        for side, kinds in results.items()
    }


def lines(r: dict[str, Any], base: str) -> list[str]:
    out = [
        f"{'side':<24} {'bare/s':>8} {'floor/s':>9} {'charges/s':>10} {'charges/floor':>14}"
        f" {'charges/bare':>13}"
    ]
    ratios, to_bare = {}, {}
    for side in ("base", "head"):
        floor, charges = r[side]["floor"]["median"], r[side]["charges"]["median"]
        ratios[side] = charges / floor
        to_bare[side] = r[side]["charges_vs_bare"]["median"]
        label = f"base ({base})" if side == "base" else "head (this checkout)"
        out.append(
            f"{label:<24} {r[side]['bare']['median']:>8.1f} {floor:>9.1f} {charges:>10.1f}"
            f" {ratios[side]:>14.2f} {to_bare[side]:>13.2f}"
        )
    out.append(
        f"charge-to-floor, head / base: x{ratios['head'] / ratios['base']:.2f};"
        f" charge-to-bare, head / base: x{to_bare['head'] / to_bare['base']:.2f}"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the revision to compare with")
    parser.add_argument("--quick", action="store_true", help="2,000 tasks a stream, not 20,000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    args.tasks = 2000 if args.quick else 20_000
    args.accounts = 10_000

    db_url = scratch_database("billing_bench")
    run._configure_environment(db_url)
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(run.CHARGE_ACCOUNTS_SQL), {"n": args.accounts})
    engine.dispose()
    base = Path(tempfile.mkdtemp(prefix="bench-base-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base],
        check=True,
        capture_output=True,
    )
    try:
        result = measure(base, args)
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
            check=False,
            capture_output=True,
        )
    path = write_json("compare", {"base": args.base, "tasks": args.tasks, **result})
    print("\n".join(lines(result, args.base)))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
