"""The benchmark suite: every figure beside its baseline from the same run, as a ratio.

    python -m bench.run            # the full suite (about 40 minutes on 2 cores)
    python -m bench.run --quick    # smaller sizes, for a try

It runs against the PostgreSQL server of BILLING_BENCH_ADMIN_DATABASE_URL (default: the local
one; it creates scratch databases there) and the Redis of BILLING_BENCH_REDIS_URL (default:
database 13 of the local Redis, flushed). Results: bench/results/bench.json and bench.png.

Every throughput figure is also given against the floor a user would pick instead: a plain
Celery app (bench.bare: broker, backend, JSON, acks_late, prefetch 1, events; its own worker,
beside ours), one stream of it in every round, and the ratio the median over rounds of each
stream's rate over its stream's in the same round ("vs bare"). The first lines printed are the
targets against it.

Scenarios (each throughput figure is the median of --repeat runs, with its min-max):
1. floor: a no-op task, same worker configuration, events on and off;
   and pieces: each per-task piece of the billing worker alone on the plain floor (bench.pieces);
2. charges: generation charges across many accounts of every kind, ratio to the floor, beside
   three references measured in the same rounds: the charge frame (a charge without the
   database), one durable insert (the frame plus the least any charge must write) and the
   same insert after a locked read of the account (the least a charge whose rules run in
   Python must do); see bench.app. They bound from above what a charge can reach here;
3. hot account: the same against 10 accounts;
4. latency under load: charges and no-ops at half the charges' maximum rate, alternated;
   and holds: jobs paid by reserve then capture (each stream waiting for the one before, as
   the pipeline waits for the reserve before it generates) beside jobs paid by two charges,
   on the accounts with credits, in the same rounds;
5. resets: reset_due_limits against one plain UPDATE of the same rows;
6. ledger reads: the first page and a page 1,000 deep of a user with many rows;
7. database work per charge: statements, round trips and transactions per charge, and the
   charge's SQL alone under pgbench, the database's own limit for it;
8. balance events: the same crossing charges with events on and off, and the delay from a
   movement to its events on the queue (bench.events);
   and brokers: the floor and the charges on Redis and on RabbitMQ (bench.brokers);
   and batches: charges with and without ``include_state``, and batches of 10 and 100 per
   charge, against the floor (bench.batch);
9. where the CPU goes: machine CPU per task of each process (producer, worker parent, pool
   children, Redis, PostgreSQL) for the no-op, the charge frame (a charge without the
   database: bench.charge_frame) and the charge, so the gap to the floor can be apportioned.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.bare import REDIS_URL
from bench.common import RESULTS_DIR, scratch_database, write_json

LOG_DIR = RESULTS_DIR / "logs"
CHARGE_ACCOUNTS_SQL = """
INSERT INTO users (id, role, subscription_type, subscription_end, subscription_ops_limit,
                   freemium_actions_used, balance_credits)
SELECT g,
       CASE WHEN g % 10 = 0 THEN 'admin'::user_role_enum ELSE 'user' END,
       CASE WHEN g % 5 IN (1, 4) THEN 'standard' END,
       CASE WHEN g % 5 = 1 THEN now() + interval '20 days'
            WHEN g % 5 = 4 THEN now() - interval '1 day' END,
       CASE WHEN g % 5 IN (1, 4) THEN 100 ELSE 0 END,
       CASE WHEN g % 5 IN (3, 4) THEN 5 ELSE 0 END,
       CASE WHEN g % 5 = 2 THEN 0 ELSE 1000000 END
FROM generate_series(1, :n) AS g
"""


def _configure_environment(db_url: str) -> None:
    os.environ["BILLING_DATABASE_URL"] = db_url
    os.environ["BILLING_BROKER_URL"] = REDIS_URL
    os.environ["BILLING_RESULT_BACKEND"] = REDIS_URL
    os.environ["BILLING_QUEUE"] = "bench"


def throughput_scenarios(args: argparse.Namespace, db_url: str) -> dict[str, Any]:
    import redis

    from bench import bare
    from bench import throughput as tp
    from bench.app import DURABLE_INSERT_TABLE, app  # reads the settings configured above

    redis.Redis.from_url(REDIS_URL).flushdb()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(DURABLE_INSERT_TABLE))
    engine.dispose()
    run = uuid.uuid4().hex[:8]
    counter = iter(range(10**9))
    charges = charge_messages()

    funded = [u for u in range(1, args.accounts + 1) if u % 5 != 2]  # see CHARGE_ACCOUNTS_SQL

    def hold_jobs(n: int) -> tp.StreamResult:
        keys = [f"{run}-h{next(counter)}" for _ in range(n)]
        users = [funded[(i * 7919) % len(funded)] for i in range(n)]
        reserve = tp.run_stream(
            app,
            [
                ("billing.reserve_generation", {"user_id": user, "idempotency_key": key})
                for user, key in zip(users, keys, strict=True)
            ],
        )
        capture = tp.run_stream(app, [("billing.capture", {"idempotency_key": k}) for k in keys])
        return tp.joined(reserve, capture)

    def charge_jobs(n: int) -> tp.StreamResult:
        def stream() -> list[tuple[str, dict[str, Any]]]:
            return [
                (
                    "billing.charge_generation",
                    {
                        "user_id": funded[(i * 7919) % len(funded)],
                        "idempotency_key": f"{run}-{next(counter)}",
                    },
                )
                for i in range(n)
            ]

        return tp.joined(tp.run_stream(app, stream()), tp.run_stream(app, stream()))

    def as_charges(task: str, n: int) -> list[tuple[str, dict[str, Any]]]:
        """The charges' messages, sent to a reference task instead."""
        return [(task, kwargs) for _, kwargs in charges(n, args.accounts)]

    out: dict[str, Any] = {"concurrency": args.concurrency, "tasks": args.tasks}
    for events in (True, False):
        env = {"BILLING_TASK_EVENTS": "true" if events else "false"}
        app.conf.task_send_sent_event = events
        label = "events_on" if events else "events_off"
        with (
            tp.bare_workers(args.concurrency, LOG_DIR),
            tp.workers(app, env, args.concurrency, LOG_DIR),
        ):
            tp.run_stream(app, noops(200))  # warm up: connections, prepared plans
            tp.run_stream(app, charges(200, args.accounts))
            tp.bare_stream(200)
            floor, charge, hot, frame, bound, locked, plain = [], [], [], [], [], [], []
            holds, two_charges = [], []
            for _ in range(args.repeat):
                # The charges right after the plain floor: the pair the headline ratio is of.
                plain.append(tp.bare_stream(args.tasks))
                charge.append(tp.run_stream(app, charges(args.tasks, args.accounts)))
                floor.append(tp.run_stream(app, noops(args.tasks)))
                if events:
                    # The three references between the floor and a charge (see bench.app).
                    frame.append(tp.run_stream(app, as_charges("bench.charge_frame", args.tasks)))
                    bound.append(tp.run_stream(app, as_charges("bench.durable_insert", args.tasks)))
                    locked.append(tp.run_stream(app, as_charges("bench.locked_insert", args.tasks)))
                if events:
                    hot.append(tp.run_stream(app, charges(args.tasks, 10)))
                    holds.append(hold_jobs(args.tasks // 2))
                    two_charges.append(charge_jobs(args.tasks // 2))
            out[f"floor_{label}"] = tp.median_of(floor)
            out[f"charges_{label}"] = tp.median_of(charge)
            out[f"bare_{label}"] = tp.median_of(plain)
            out[f"pairs_{label}"] = {
                "floor": tp.pair_ratios(floor, plain),
                "charges": tp.pair_ratios(charge, plain),
            }
            if events:
                out["pairs_events_on"].update(
                    frame=tp.pair_ratios(frame, plain),
                    durable_insert=tp.pair_ratios(bound, plain),
                    locked_insert=tp.pair_ratios(locked, plain),
                    hot_account=tp.pair_ratios(hot, plain),
                )
                out["frame_events_on"] = tp.median_of(frame)
                out["durable_insert_events_on"] = tp.median_of(bound)
                out["locked_insert_events_on"] = tp.median_of(locked)
                out["cpu_per_task_ms"] = cpu_breakdown(
                    app,
                    {
                        "bare": lambda n: (bare.app, bare.noops(n), bare.QUEUE),
                        "floor": noops,
                        "frame": lambda n: as_charges("bench.charge_frame", n),
                        "charge": lambda n: charges(n, args.accounts),
                    },
                    args.cpu_tasks,
                    args.repeat,
                )
                out["cpu_split_ms"] = cpu_split(out["cpu_per_task_ms"])
                out["hot_account"] = tp.median_of(hot)
                out["hold_jobs"] = tp.median_of(holds)
                out["two_charge_jobs"] = tp.median_of(two_charges)
                rate = 0.5 * statistics.median(r.rate for r in charge)
                n = max(int(rate * 20), 200)  # about 20 seconds at that rate
                paced_floor, paced_charges, paced_bare = [], [], []
                for _ in range(args.repeat):  # alternated, so drift hits both sides alike
                    paced_bare.append(tp.bare_stream(n, rate=rate))
                    paced_floor.append(tp.run_stream(app, noops(n), rate=rate))
                    paced_charges.append(tp.run_stream(app, charges(n, args.accounts), rate=rate))
                out["under_load"] = {
                    "rate_per_s": rate,
                    "bare": tp.median_of(paced_bare),
                    "floor": tp.median_of(paced_floor),
                    "charges": tp.median_of(paced_charges),
                    "charges_p50_over_bare_ms": statistics.median(
                        c.percentile(50) - b.percentile(50)
                        for c, b in zip(paced_charges, paced_bare, strict=True)
                    ),
                }
    return out


def charge_messages() -> Callable[[int, int], list[tuple[str, dict[str, Any]]]]:
    """Generation charges spread over the first ``accounts`` accounts, under fresh keys."""
    run = uuid.uuid4().hex[:8]
    counter = iter(range(10**9))

    def charges(n: int, accounts: int) -> list[tuple[str, dict[str, Any]]]:
        return [
            (
                "billing.charge_generation",
                {"user_id": 1 + (i * 7919) % accounts, "idempotency_key": f"{run}-{next(counter)}"},
            )
            for i in range(n)
        ]

    return charges


def noops(n: int) -> list[tuple[str, dict[str, Any]]]:
    return [("bench.noop", {}) for _ in range(n)]


def floor_and_charges(measure: Callable[..., dict[str, Any]], first: Any, args) -> dict[str, Any]:
    """Run a scenario that measures no-ops and generation charges: ``measure(first, noops,
    charges, tasks, repeat, concurrency, log_dir)``."""
    charges = charge_messages()
    return measure(
        first,
        noops,
        lambda n: charges(n, args.accounts),
        args.tasks,
        args.repeat,
        args.concurrency,
        LOG_DIR,
    )


def cpu_breakdown(app, streams: dict, tasks: int, repeat: int) -> dict[str, Any]:
    """Medians over ``repeat`` rounds of per-task CPU by process, for each kind of stream;
    the kinds alternate within a round so drift on the machine hits them alike."""
    from bench import cpu
    from bench import throughput as tp

    samples: dict[str, list[dict[str, float]]] = {name: [] for name in streams}
    for _ in range(repeat):
        for name, make in streams.items():
            made = make(tasks)
            # A stream of the billing app, or (app, messages, queue) of another.
            on, messages, queue = made if isinstance(made, tuple) else (app, made, tp.QUEUE)
            before = cpu.snapshot()
            tp.run_stream(on, messages, queue=queue)
            samples[name].append(cpu.per_task_ms(before, cpu.snapshot(), tasks))
    return {
        name: {k: statistics.median(s.get(k, 0.0) for s in runs) for k in runs[0]}
        for name, runs in samples.items()
    }


def ledger_scenario(args: argparse.Namespace) -> dict[str, Any]:
    from billing.core.validation import LedgerArgs
    from billing.reads import ledger
    from billing.storage.engine import create_db_engine, session_factory, transaction

    url = scratch_database("billing_bench_ledger")
    engine = create_engine(url)
    per_user, total, users = args.ledger_user_rows, args.ledger_rows, 10
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO users (id) SELECT g FROM generate_series(1, :u) g"), {"u": users}
        )
        # User 1 has per_user rows; the rest of the table belongs to the other users.
        conn.execute(
            text(
                "INSERT INTO credits_ledger (user_id, entry_type, source, operation, amount,"
                " idempotency_key, balance_credits_after, subscription_ops_used_after,"
                " freemium_actions_used_after)"
                " SELECT CASE WHEN g <= :per THEN 1 ELSE 2 + g % (:u - 1) END, 'charge',"
                " 'credits', 'generation', 10, 'bench-' || g, 0, 0, 0"
                " FROM generate_series(1, :total) AS g"
            ),
            {"per": per_user, "total": total, "u": users},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE credits_ledger"))
    factory = session_factory(create_db_engine(url))

    def page(cursor: str | None) -> float:
        args_ = LedgerArgs.parse((), {"user_id": 1, "limit": 50, "cursor": cursor})
        started = time.perf_counter()
        with transaction(factory) as session:
            result = ledger.get_ledger(session, args_, enabled=True)
        assert len(result["entries"]) == 50
        return (time.perf_counter() - started) * 1000

    # The cursor of page 1,001: the id after which the 1,000 pages before it end.
    with engine.connect() as conn:
        deep_cursor = conn.execute(
            text(
                "SELECT id FROM credits_ledger WHERE user_id = 1 ORDER BY id DESC OFFSET :n LIMIT 1"
            ),
            {"n": 50 * 1000 - 1},
        ).scalar_one()
    engine.dispose()
    for _ in range(20):  # warm the cache for both
        page(None)
        page(str(deep_cursor))
    first = [page(None) for _ in range(200)]
    deep = [page(str(deep_cursor)) for _ in range(200)]
    return {
        "table_rows": total,
        "user_rows": per_user,
        "first_page_ms": statistics.median(first),
        "deep_page_ms": statistics.median(deep),
        "deep_over_first": statistics.median(deep) / statistics.median(first),
    }


def db_work_scenario(args: argparse.Namespace, db_url: str) -> dict[str, Any]:
    """Statements, round trips and transactions per charge, counted on the real path."""
    import psycopg

    from billing.core.settings import Settings
    from billing.core.validation import ChargeArgs
    from billing.movements import charges, frame
    from billing.storage.psycopg_store import PgStore
    from models import Operation

    settings = Settings(database_url=db_url)
    url = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    counts = {"round_trips": 0, "statements": 0}
    # Every query psycopg sends goes through Cursor.execute (ClientCursor's included), so the
    # statements' preparation on a connection's first charge is counted too.
    original = psycopg.Cursor.execute

    def counting(self, query, params=None, **kw):
        counts["round_trips"] += 1
        counts["statements"] += str(query).count(";") + 1
        return original(self, query, params, **kw)

    def charge(conn: psycopg.Connection, i: int) -> None:
        parsed = ChargeArgs.parse(
            (), {"user_id": 1 + (i * 7919) % args.accounts, "idempotency_key": f"dbw-{i}"}
        )
        frame.run(PgStore(conn), charges.Charge(Operation.GENERATION, parsed), settings)

    n = 500
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        psycopg.Cursor.execute = counting
        try:
            charge(conn, n)  # a connection's first charge, which prepares the statements
            first_round_trips = counts["round_trips"]
            commits_before = _xact_commits(conn)
            counts.update(round_trips=0, statements=0)
            for i in range(n):
                charge(conn, i)
            per_charge = dict(counts)
        finally:
            psycopg.Cursor.execute = original
        # Less our own two autocommit statements counted between the reads: the SELECT that
        # read the count before and the flush that precedes the read after.
        commits = _xact_commits(conn) - commits_before - 2
    pgbench = _pgbench(url, args)
    return {
        "charges": n,
        "round_trips_per_charge": per_charge["round_trips"] / n,
        "round_trips_first_charge": first_round_trips,
        "statements_per_charge": per_charge["statements"] / n,
        "transactions_per_charge": commits / n,
        "pgbench": pgbench,
    }


def _xact_commits(conn) -> int:
    conn.execute("SELECT pg_stat_force_next_flush()")
    return conn.execute(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()[0]


PGBENCH_SCRIPT = """\\set uid random(1, {accounts})
\\set k random(1, 9000000000000000000)
BEGIN;
SELECT id, role, subscription_type, subscription_end, subscription_ops_limit, subscription_ops_used, subscription_ops_reset_at, freemium_actions_used, freemium_reset_at, balance_credits, now() FROM users WHERE id = :uid FOR UPDATE;
SELECT o.user_id, o.operation, o.cost, o.response, (SELECT json_agg(json_build_array(idempotency_key, operation, source, amount, created_at, expires_at, status, captured)) FROM (SELECT idempotency_key, operation, source, amount, created_at, expires_at, status, captured FROM billing_holds WHERE user_id = :uid AND status = 'held' UNION ALL SELECT idempotency_key, operation, source, amount, created_at, expires_at, status, captured FROM billing_holds WHERE idempotency_key = NULL AND user_id = :uid AND status <> 'held') AS h) FROM (SELECT) AS one LEFT JOIN billing_requests AS o ON o.idempotency_key = 'pgb-' || :k;
UPDATE users SET balance_credits = balance_credits WHERE id = :uid;
WITH entry AS (INSERT INTO credits_ledger (user_id, entry_type, source, operation, amount, idempotency_key, balance_credits_after, subscription_ops_used_after, freemium_actions_used_after, created_at) VALUES (:uid, 'charge', 'credits', 'generation', 10, 'pgb-' || :k, 0, 0, 0, now()) RETURNING id) INSERT INTO billing_requests (idempotency_key, user_id, operation, cost, response, ledger_id) SELECT 'pgb-' || :k, :uid, 'generation', 10, '{{"ok": true, "code": 200}}'::jsonb || jsonb_build_object('ledger_id', entry.id), entry.id FROM entry RETURNING ledger_id;
COMMIT;
"""  # noqa: E501 - pgbench reads one statement per line
# The same before holds (revision 0004): the read after the lock looked the key up only. Run
# alternately with the script above, it prices what reading the account's holds adds.
PGBENCH_WITHOUT_HOLDS = PGBENCH_SCRIPT.replace(
    PGBENCH_SCRIPT.splitlines()[4], "SELECT user_id, operation, cost, response FROM"
    " billing_requests WHERE idempotency_key = 'pgb-' || :k;"
)  # fmt: skip


def _pgbench(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The charge's SQL under pgbench, and the same without the holds read, alternated three
    times; medians."""
    runs: dict[str, list[tuple[float, float]]] = {"charge": [], "without_holds_read": []}
    for _ in range(3):
        for name, text_ in (
            ("charge", PGBENCH_SCRIPT),
            ("without_holds_read", PGBENCH_WITHOUT_HOLDS),
        ):
            runs[name].append(_pgbench_once(url, args, name, text_))
    out: dict[str, Any] = {"clients": args.concurrency}
    for name, results in runs.items():
        key = "" if name == "charge" else f"{name}_"
        out[f"{key}tps"] = statistics.median(tps for tps, _ in results)
        out[f"{key}latency_ms"] = statistics.median(ms for _, ms in results)
    return out


def _pgbench_once(url: str, args: argparse.Namespace, name: str, text_: str) -> tuple[float, float]:
    script = RESULTS_DIR / f"{name}.pgbench.sql"
    script.write_text(text_.format(accounts=args.accounts))
    parsed = make_url(url)
    cmd = [
        "pgbench", "-n", "-h", parsed.host or "127.0.0.1", "-p", str(parsed.port or 5432),
        "-U", parsed.username or "postgres", "-c", str(args.concurrency),
        "-j", str(args.concurrency), "-T", str(args.pgbench_seconds), "-f", str(script),
        "-M", "prepared",  # as the charge runs them: parsed and planned once per connection
        parsed.database,
    ]  # fmt: skip
    env = {**os.environ, "PGPASSWORD": parsed.password or ""}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    tps = next(
        float(line.split("=")[1].split()[0]) for line in out.splitlines() if line.startswith("tps")
    )
    latency = next(
        float(line.split("=")[1].split()[0])
        for line in out.splitlines()
        if line.startswith("latency average")
    )
    return tps, latency


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = results["throughput"]
    names = [
        "bare_events_on",
        "floor_events_on",
        "frame_events_on",
        "durable_insert_events_on",
        "locked_insert_events_on",
        "charges_events_on",
        "hot_account",
        "floor_events_off",
        "charges_events_off",
    ]
    labels = [
        "plain Celery\n(bare)",
        "floor\nevents on",
        "frame\n(no database)",
        "one durable\ninsert",
        "lock, then\ndurable insert",
        "charges\nevents on",
        "hot account\nevents on",
        "floor\nevents off",
        "charges\nevents off",
    ]
    fig, (left, right, third, fourth) = plt.subplots(
        1, 4, figsize=(30, 5), gridspec_kw={"width_ratios": [3, 2, 2, 1]}
    )
    rates = [t[n]["tasks_per_s"]["median"] for n in names]
    lows = [t[n]["tasks_per_s"]["median"] - t[n]["tasks_per_s"]["min"] for n in names]
    highs = [t[n]["tasks_per_s"]["max"] - t[n]["tasks_per_s"]["median"] for n in names]
    colors = ["#555", "#999", "#9c9", "#396", "#6a4", "#36c", "#c63", "#bbb", "#69c"]
    left.bar(labels, rates, yerr=[lows, highs], color=colors)
    left.tick_params(axis="x", labelsize=8)
    left.set_ylabel("tasks/s, first send to last result (median, min-max)")
    left.set_title("Throughput")
    load = t["under_load"]
    pcts = ["p50_ms", "p95_ms", "p99_ms"]
    x = range(len(pcts))
    sides = (("bare", -0.27, "plain Celery"), ("floor", 0.0, "no-op"), ("charges", 0.27, "charge"))
    for side, shift, label in sides:
        r = [load[side][p] for p in pcts]
        spread = [[v["median"] - v["min"] for v in r], [v["max"] - v["median"] for v in r]]
        medians = [v["median"] for v in r]
        right.bar([i + shift for i in x], medians, yerr=spread, width=0.27, label=label)
    right.set_xticks(list(x), ["p50", "p95", "p99"])
    right.set_ylabel("ms, send to result stored (median, min-max)")
    right.set_title(f"Latency at {load['rate_per_s']:.0f}/s (half the charges' maximum)")
    right.legend()
    cpu = t["cpu_per_task_ms"]
    bottom = [0.0] * len(cpu)
    for kind in CPU_KINDS:
        values = [cpu[stream].get(kind, 0.0) for stream in cpu]
        third.bar(list(cpu), values, bottom=bottom, label=kind)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    third.set_ylabel("machine CPU ms per task")
    third.set_title("Where the CPU goes (events on)")
    third.legend()
    split = t["cpu_split_ms"]
    level = 0.0
    for part, label in (
        ("celery", "Celery (the bare task)"),
        ("frame", "our task and frame"),
        ("database", "the database"),
    ):
        fourth.bar(["a charge"], [split[part]], bottom=[level], label=f"{label} {split[part]:.2f}")
        level += split[part]
    fourth.set_ylabel("machine CPU ms per charge")
    fourth.set_title("A charge's CPU, split")
    fourth.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


CPU_KINDS = ("producer", "worker parent", "worker child", "redis", "postgres")


def cpu_split(cpu: dict[str, dict[str, float]]) -> dict[str, float]:
    """A charge's machine CPU per task, split three ways: what Celery costs any task (the
    plain floor's), what our task and frame add without the database (the charge frame's over
    that), and what the database adds (the charge's over the frame's: psycopg and the
    server)."""
    bare, frame, charge = (cpu[k]["total"] for k in ("bare", "frame", "charge"))
    return {"celery": bare, "frame": frame - bare, "database": charge - frame, "total": charge}


def cpu_lines(cpu: dict[str, dict[str, float]]) -> list[str]:
    lines = [
        "machine CPU ms per task (events on): "
        + " ".join(f"{k:>13}" for k in (*CPU_KINDS, "total"))
    ]
    for stream, spent in cpu.items():
        row = " ".join(f"{spent.get(k, 0.0):>13.2f}" for k in (*CPU_KINDS, "total"))
        lines.append(f"{stream:<36} {row}")
    split = cpu_split(cpu)
    lines.append(
        f"a charge's machine CPU: {split['total']:.2f} ms = Celery (the bare floor's task)"
        f" {split['celery']:.2f} + our task and frame (frame - bare) {split['frame']:.2f} + the"
        f" database, its client and server (charge - frame) {split['database']:.2f}"
    )
    floor, frame, charge = (cpu[k]["total"] for k in ("floor", "frame", "charge"))
    lines.append(
        f"charge - floor = {charge - floor:.2f} ms: the task's contract without the database"
        f" (frame - floor) {frame - floor:.2f}, the database work (charge - frame)"
        f" {charge - frame:.2f}; CPU-bound, so the best ratio to the floor with a database that"
        f" cost nothing is floor/frame = {floor / frame:.2f}, and with this one"
        f" floor/charge = {floor / charge:.2f}"
    )
    return lines


def targets(results: dict[str, Any]) -> list[str]:
    """The figures the issue set targets for, against the plain floor, from this run."""
    rows: list[tuple[str, str, bool]] = []
    t, b = results.get("throughput"), results.get("batches")
    if t:
        full = t["pairs_events_on"]["charges"]["median"]
        rows.append((f"full charges: {full:.2f} of bare", ">= 0.75", full >= 0.75))
        added = t["under_load"]["charges_p50_over_bare_ms"]
        rows.append((f"p50 under load: {added:+.1f} ms over bare", "<= +2 ms", added <= 2.0))
    if b:
        lean = b["charges_lean"]["vs_bare"]["median"]
        rows.append((f"include_state=False charges: {lean:.2f} of bare", ">= 0.80", lean >= 0.80))
        batched = b["batch_100"]["vs_charges"]["median"]
        rows.append((f"charge_batch of 100: x{batched:.1f} a charge", ">= x5", batched >= 5.0))
    if not rows:
        return []
    out = ["targets against the plain Celery floor (bench.bare; medians of alternated pairs):"]
    out += [
        f"  {what:<48} target {goal:<9} {'met' if ok else 'NOT met'}" for what, goal, ok in rows
    ]
    return out


def table(results: dict[str, Any]) -> str:
    lines = targets(results)
    if "events" in results:
        from bench import events

        lines.append(events.line(results["events"]))
    if "throughput" in results:
        lines.extend(throughput_table(results["throughput"]))
    if "pieces" in results:
        from bench import pieces

        lines.extend(pieces.lines(results["pieces"]))
    if "batches" in results:
        from bench import batch

        lines.extend(batch.lines(results["batches"]))
    if "brokers" in results:
        from bench import brokers

        lines.extend(brokers.lines(results["brokers"]))
    lines.extend(other_lines(results))
    return "\n".join(lines)


def throughput_table(t: dict[str, Any]) -> list[str]:
    floor = t["floor_events_on"]["tasks_per_s"]["median"]
    lines = [
        "vs bare: the median over rounds of the rate over the plain Celery floor's (bench.bare,"
        " events on) in the same round; vs floor: over the billing app's no-op (medians)",
        f"{'scenario':<28} {'tasks/s median':>14} {'min-max':>15} {'vs bare':>8} {'vs floor':>9}"
        f" {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}",
    ]
    pairs = t.get("pairs_events_on", {})
    off_pairs = t.get("pairs_events_off", {})
    off_floor = t["floor_events_off"]["tasks_per_s"]["median"]
    for name, base, pair in (
        ("bare_events_on", floor, {"median": 1.0}),
        ("floor_events_on", floor, pairs.get("floor")),
        ("frame_events_on", floor, pairs.get("frame")),
        ("durable_insert_events_on", floor, pairs.get("durable_insert")),
        ("locked_insert_events_on", floor, pairs.get("locked_insert")),
        ("charges_events_on", floor, pairs.get("charges")),
        ("hot_account", floor, pairs.get("hot_account")),
        ("floor_events_off", off_floor, off_pairs.get("floor")),
        ("charges_events_off", off_floor, off_pairs.get("charges")),
    ):
        r = t[name]
        vs_bare = f"{pair['median']:>8.2f}" if pair else f"{'-':>8}"
        lines.append(
            f"{name:<28} {r['tasks_per_s']['median']:>14.1f} "
            f"{r['tasks_per_s']['min']:>7.1f}-{r['tasks_per_s']['max']:<7.1f} {vs_bare}"
            f" {r['tasks_per_s']['median'] / base:>9.2f} {r['p50_ms']['median']:>8.0f} "
            f"{r['p95_ms']['median']:>8.0f} {r['p99_ms']['median']:>8.0f}"
        )
    if "hold_jobs" in t:
        held, charged = t["hold_jobs"], t["two_charge_jobs"]
        lines.append(
            f"jobs paid by reserve + capture: {held['tasks_per_s']['median']:.1f} tasks/s"
            f" ({held['tasks_per_s']['min']:.1f}-{held['tasks_per_s']['max']:.1f}) vs by two"
            f" charges {charged['tasks_per_s']['median']:.1f} tasks/s"
            f" ({charged['tasks_per_s']['min']:.1f}-{charged['tasks_per_s']['max']:.1f}):"
            f" x{held['tasks_per_s']['median'] / charged['tasks_per_s']['median']:.2f}"
        )
    load = t["under_load"]

    def paced(side: str, pct: str) -> str:
        r = load[side][pct]
        return f"{r['median']:.1f} ms ({r['min']:.1f}-{r['max']:.1f})"

    added = load["charges"]["p50_ms"]["median"] - load["floor"]["p50_ms"]["median"]
    lines.append(
        f"under load at {load['rate_per_s']:.0f}/s (medians, min-max): p50 bare"
        f" {paced('bare', 'p50_ms')}, no-op {paced('floor', 'p50_ms')}, charge"
        f" {paced('charges', 'p50_ms')}: +{load['charges_p50_over_bare_ms']:.1f} ms over bare"
        f" (median of pairs), +{added:.1f} ms over the no-op; p99 bare {paced('bare', 'p99_ms')},"
        f" no-op {paced('floor', 'p99_ms')}, charge {paced('charges', 'p99_ms')}"
    )
    lines.extend(cpu_lines(t["cpu_per_task_ms"]))
    return lines


def other_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    if "resets" in results:
        r = results["resets"]
        lines.append(
            f"resets of {r['accounts']:,} accounts: {r['reset_due_limits_s']['median']:.2f} s"
            f" ({r['reset_due_limits_s']['min']:.2f}-{r['reset_due_limits_s']['max']:.2f}) vs one"
            f" plain UPDATE {r['plain_update_s']['median']:.2f} s: x{r['ratio_median']:.2f};"
            f" {max(r['batches'])} batches aiming at {r['batch_target_ms']:.0f} ms each, the"
            f" slowest {r['slowest_batch_ms']:.0f} ms"
        )
    if "ledger" in results:
        r = results["ledger"]
        lines.append(
            f"ledger of a user with {r['user_rows']:,} rows in {r['table_rows']:,}: first page"
            f" {r['first_page_ms']:.2f} ms, page 1,000 deep {r['deep_page_ms']:.2f} ms:"
            f" x{r['deep_over_first']:.2f}"
        )
    if "db_work" in results:
        r = results["db_work"]
        lines.append(
            f"per charge: {r['transactions_per_charge']:.2f} transactions,"
            f" {r['round_trips_per_charge']:.2f} round trips ({r['round_trips_first_charge']} on a"
            " connection's first, which prepares its statements),"
            f" {r['statements_per_charge']:.2f}"
            f" statements; the charge's SQL alone under pgbench ({r['pgbench']['clients']}"
            f" clients): {r['pgbench']['tps']:.0f} tps, {r['pgbench']['latency_ms']:.2f} ms;"
            f" without the holds read {r['pgbench']['without_holds_read_tps']:.0f} tps:"
            f" x{r['pgbench']['tps'] / r['pgbench']['without_holds_read_tps']:.2f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=[
            "throughput",
            "pieces",
            "batches",
            "events",
            "brokers",
            "resets",
            "ledger",
            "db_work",
        ],
    )
    args = parser.parse_args()
    quick = args.quick
    args.tasks = 2000 if quick else 20_000
    args.cpu_tasks = 1000 if quick else 5000
    args.piece_tasks = 1000 if quick else 5000
    args.accounts = 10_000
    args.reset_accounts = 100_000 if quick else 1_000_000
    args.ledger_rows = 1_000_000 if quick else 10_000_000
    args.ledger_user_rows = 100_000 if quick else 1_000_000
    args.pgbench_seconds = 5 if quick else 15

    db_url = scratch_database("billing_bench")
    _configure_environment(db_url)
    results: dict[str, Any] = {"configuration": {
        "concurrency": args.concurrency, "repeat": args.repeat, "pool": "prefork",
        "acks_late": True, "prefetch_multiplier": 1, "result_backend": "redis",
        "tasks_per_stream": args.tasks, "accounts": args.accounts, "quick": quick,
    }}  # fmt: skip
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(CHARGE_ACCOUNTS_SQL), {"n": args.accounts})
    engine.dispose()
    if "throughput" not in args.skip:
        results["throughput"] = throughput_scenarios(args, db_url)
    if "pieces" not in args.skip:
        from bench import pieces

        charges = charge_messages()
        results["pieces"] = pieces.measure(
            args.piece_tasks,
            max(args.repeat, 5),  # a piece's price is a few percent: more pairs than others
            args.concurrency,
            LOG_DIR,
            lambda n: [kwargs for _, kwargs in charges(n, args.accounts)],
        )
    if "batches" not in args.skip:
        from bench import batch
        from bench.app import app

        results["batches"] = floor_and_charges(batch.measure, app, args)
    if "brokers" not in args.skip:
        from bench import brokers

        results["brokers"] = floor_and_charges(brokers.measure, REDIS_URL, args)
    if "events" not in args.skip:
        from bench import events
        from bench.app import app

        results["events"] = events.measure(
            app, db_url, args.tasks, args.repeat, args.concurrency, LOG_DIR
        )
    if "db_work" not in args.skip:
        results["db_work"] = db_work_scenario(args, db_url)
    if "resets" not in args.skip:
        from bench import resets

        results["resets"] = resets.measure(args.reset_accounts, args.repeat)
    if "ledger" not in args.skip:
        results["ledger"] = ledger_scenario(args)
    path = write_json("bench", results)
    png = RESULTS_DIR / "bench.png"
    if "throughput" in results:
        chart(results, png)
    print(table(results))
    print(f"results: {path}, chart: {png}")
    print(json.dumps(results["configuration"]))


if __name__ == "__main__":
    main()
