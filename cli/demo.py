"""``billing demo``: the processor end to end, on the embedded default or the configured services.

It migrates, starts a worker and a beat, opens one account of each kind through
``billing.open_account`` and funds it through the back office's tasks, sends a stream of
generation and assistant charges by task name (as the image pipeline does), then three jobs
the way the pipeline runs them with holds (one delivered and captured, one failed and
released, one whose pipeline died, left to expire), prints what happened and the balance
events it published for the product, and shuts everything down.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from billing.core.settings import get_settings
from billing.storage.engine import create_db_engine, mask_url
from cli import processes
from cli.formatting import event_subject, format_ledger_rows, format_state
from migrations import migrate
from models import User, UserRole
from tasks import names

DEMO_ID_BASE = 9_000_000_000_000


def _accounts(run: int) -> dict[str, dict[str, Any]]:
    settings = get_settings()
    now = datetime.now(UTC)
    tier = next(iter(settings.tiers), None)
    subscriber = {
        "subscription_type": tier,
        "subscription_end": now + timedelta(days=20),
        "subscription_ops_limit": settings.tiers.get(tier, 0) if tier else 0,
        "subscription_ops_used": max(settings.tiers.get(tier, 0) - 3, 0) if tier else 0,
        "balance_credits": 50,
    }
    spent = settings.freemium_limit
    kinds = {
        "subscriber": subscriber,
        "legacy pro subscriber": {**subscriber, "subscription_type": "pro"},
        "freemium only": {"freemium_actions_used": max(spent - 2, 0)},
        "credits only": {"freemium_actions_used": spent, "balance_credits": 100},
        "no funds": {"freemium_actions_used": spent},
        "admin": {"role": UserRole.ADMIN, "freemium_actions_used": spent},
        "expired subscription": {
            **subscriber,
            "subscription_end": now - timedelta(days=1),
            "freemium_actions_used": spent,
            "balance_credits": 30,
        },
    }
    # The holds run on an account of their own, out of the random charge stream, so they
    # start from a known balance whatever the stream took.
    kinds["pipeline with holds"] = {"freemium_actions_used": spent, "balance_credits": 100}
    return {
        kind: {"id": DEMO_ID_BASE + run * 100 + i, **columns}
        for i, (kind, columns) in enumerate(kinds.items())
    }


# What only time (or a row from before a tier's rename) makes: the demo writes it over the
# opened accounts, as 30 days of use would have left them.
AGED = ("subscription_type", "subscription_end", "subscription_ops_used", "freemium_actions_used")


def _open(app, accounts: dict[str, dict[str, Any]], run_id: int) -> None:
    """Open every account as a product does (``billing.open_account``; an admin from the admin
    queue), then fund it as the back office does: credits by ``billing.grant_credits``,
    subscriptions by ``billing.activate_subscription``."""
    settings = get_settings()

    def send(task: str, queue: str, **kwargs: Any) -> dict:
        answer = app.send_task(task, kwargs=kwargs, queue=queue).get(timeout=60)
        assert answer["ok"], (task, answer)
        return answer

    for kind, columns in accounts.items():
        user, tag = columns["id"], f"demo-{run_id}-{kind.replace(' ', '-')}"
        admin = columns.get("role") == UserRole.ADMIN
        send(
            names.OPEN_ACCOUNT,
            settings.admin_queue if admin else settings.queue,
            user_id=user,
            role="admin" if admin else "user",
        )
        if columns.get("balance_credits"):
            send(
                names.GRANT_CREDITS,
                settings.admin_queue,
                user_id=user,
                amount=columns["balance_credits"],
                idempotency_key=f"{tag}-credits",
            )
        tier = settings.canonical_tier(columns.get("subscription_type"))
        if tier is not None:
            send(
                names.ACTIVATE_SUBSCRIPTION,
                settings.admin_queue,
                user_id=user,
                tier=tier,
                idempotency_key=f"{tag}-subscription",
            )


def _age(db_url: str, accounts: dict[str, dict[str, Any]]) -> None:
    engine = create_db_engine(db_url, pool_size=1)
    try:
        with Session(engine) as session, session.begin():
            for columns in accounts.values():
                aged = {k: v for k, v in columns.items() if k in AGED}
                if aged:
                    session.execute(update(User).where(User.id == columns["id"]).values(**aged))
    finally:
        engine.dispose()


def _progress(done: int, total: int) -> None:
    if not sys.stdout.isatty():  # a log file gets the count once, not a redrawn bar
        if done == total:
            print(f"  {done}/{total} charges answered", end="")
        return
    width = 30
    filled = width * done // total
    sys.stdout.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} charges")
    sys.stdout.flush()


def run(charges: int = 60, concurrency: int = 2) -> int:
    settings = get_settings()
    started = time.monotonic()
    where = (
        f"embedded default (SQLite under {settings.data_dir})"
        if settings.embedded
        else "configured services"
    )
    print(f"billing demo on the {where}")
    print(f"  database: {mask_url(settings.effective_database_url())}")
    print(f"  broker:   {mask_url(settings.effective_broker_url())}")

    from worker import app  # the app reads the settings; import after they are final

    processes.check_broker(app)
    db_url = settings.effective_database_url()
    migrate.upgrade(db_url)
    print("  migrated to head")

    run_id = int(time.time()) % 1_000_000
    accounts = _accounts(run_id)

    log = settings.data_dir.resolve() / "demo.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    hostname = f"demo-{run_id}@%h"
    worker_cmd = processes.worker_command(concurrency=concurrency, hostname=hostname)
    with (
        processes.running(worker_cmd, log) as worker,
        processes.running(processes.beat_command(), log),
    ):
        processes.wait_for_worker(app, worker, processes.node_name(hostname))
        print(f"  worker ({concurrency} processes) and beat running; logs in {log}")
        _open(app, accounts, run_id)
        _age(db_url, accounts)
        print(f"  opened {len(accounts)} demo accounts (ids from {DEMO_ID_BASE + run_id * 100})")
        outcomes = _drive(app, accounts, charges, run_id)
        held = _holds(app, accounts["pipeline with holds"]["id"], run_id)
        granted = _expiring_grant(app, accounts["pipeline with holds"]["id"], run_id)
        # The beat announces ended subscriptions every BILLING_SUBSCRIPTION_SWEEP_SECONDS;
        # the demo asks once now rather than wait for it.
        app.send_task(names.ANNOUNCE_SUBSCRIPTIONS).get(timeout=60)
        shown = accounts["subscriber"]["id"]
        state = app.send_task(names.GET_STATE, kwargs={"user_id": shown}).get(timeout=30)
        ledger = app.send_task(names.GET_LEDGER, kwargs={"user_id": shown, "limit": 5}).get(
            timeout=30
        )
    _report(outcomes, state, ledger)
    _report_holds(held)
    _report_grant(granted)
    _report_events(db_url, accounts)
    print(f"\nworker and beat stopped; demo took {time.monotonic() - started:.1f}s")
    return 0


def _drive(app, accounts: dict[str, dict[str, Any]], charges: int, run_id: int) -> list[dict]:
    ids = [a["id"] for kind, a in accounts.items() if kind != "pipeline with holds"]
    sent = [
        (task, app.send_task(task, kwargs=kwargs)) for task, kwargs in plan(ids, charges, run_id)
    ]
    outcomes = []
    _progress(0, charges)
    for done, (task, result) in enumerate(sent, 1):
        outcomes.append({"task": task, **result.get(timeout=60)})
        _progress(done, charges)
    print()
    return outcomes


# The hold a dead pipeline leaves behind lives this long in the demo (the default is 900 s).
DEMO_HOLD_TTL = 2


def _holds(app, user: int, run_id: int) -> list[tuple[str, dict]]:
    """Reserve -> generate -> capture, release on failure, expiry when nobody settles."""

    def send(task: str, **kwargs: Any) -> dict:
        return app.send_task(task, kwargs=kwargs).get(timeout=60)

    key = f"demo-{run_id}-hold"
    steps = [
        ("reserve job 1", send(names.RESERVE_GENERATION, user_id=user, idempotency_key=f"{key}-1")),
        ("image delivered: capture", send(names.CAPTURE, idempotency_key=f"{key}-1")),
        ("reserve job 2", send(names.RESERVE_GENERATION, user_id=user, idempotency_key=f"{key}-2")),
        (
            "generation failed: release",
            send(names.RELEASE, idempotency_key=f"{key}-2", reason="generation failed"),
        ),
        (
            f"reserve job 3 ({DEMO_HOLD_TTL} s to live)",
            send(
                names.RESERVE_GENERATION,
                user_id=user,
                idempotency_key=f"{key}-3",
                ttl_seconds=DEMO_HOLD_TTL,
            ),
        ),
    ]
    time.sleep(DEMO_HOLD_TTL + 0.5)  # job 3's pipeline died: nobody captures or releases it
    steps.append(("pipeline died; later", send(names.GET_STATE, user_id=user)))
    late = send(names.CAPTURE, idempotency_key=f"{key}-3")
    # A refused capture answers no state (it moved nothing): the balance shown is read after.
    late.setdefault("state", send(names.GET_STATE, user_id=user).get("state"))
    steps.append(("a late capture of job 3", late))
    return steps


# The promotional credits the demo grants expire this soon (a real campaign: days or weeks).
DEMO_GRANT_TTL = 2


def _expiring_grant(app, user: int, run_id: int) -> list[tuple[str, dict]]:
    """Promotional credits that expire while the demo runs: drawn first, then gone."""

    def send(task: str, **kwargs: Any) -> dict:
        return app.send_task(task, kwargs=kwargs).get(timeout=60)

    key = f"demo-{run_id}-promo"
    expires_at = (datetime.now(UTC) + timedelta(seconds=DEMO_GRANT_TTL)).isoformat()
    steps = [
        (
            f"grant 15 promotional ({DEMO_GRANT_TTL} s to live)",
            send(
                names.GRANT_CREDITS,
                user_id=user,
                amount=15,
                idempotency_key=key,
                expires_at=expires_at,
                category="promotional",
            ),
        ),
        (
            "assistant call, cost 5",
            send(names.CHARGE_ASSISTANT, user_id=user, idempotency_key=f"{key}-use", cost=5),
        ),
    ]
    time.sleep(DEMO_GRANT_TTL + 0.5)
    steps.append(("the grant expired; later", send(names.GET_STATE, user_id=user)))
    return steps


def _report_grant(steps: list[tuple[str, dict]]) -> None:
    print("\npromotional credits that expire (drawn first, then what is left expires):")
    for step, answer in steps:
        credits = (answer.get("state") or {}).get("credits", {})
        if "credits_drawn" in answer:
            what = "drew " + ", ".join(
                f"{part['amount']} from {part['grant'] or 'the general balance'}"
                for part in answer["credits_drawn"]
            )
        elif "grant" in answer:
            what = f"grant {answer['grant']['key']}, expires {answer['grant']['expires_at']}"
        else:
            live = len(credits.get("grants", []))
            what = f"{live} live grant{'' if live == 1 else 's'}"
        print(f"  {step:<34} {what:<58} balance {credits.get('balance', '')}")


def plan(ids: list[int], charges: int, run_id: int) -> list[tuple[str, dict[str, Any]]]:
    """The demo's messages: mostly new keys, and every tenth one repeats an earlier message
    exactly (same task, same arguments), as a producer retrying would."""
    rng = random.Random(run_id)
    messages: list[tuple[str, dict[str, Any]]] = []
    for i in range(charges):
        if i and i % 10 == 0:
            messages.append(rng.choice(messages))
            continue
        task = names.CHARGE_GENERATION if rng.random() < 0.75 else names.CHARGE_ASSISTANT
        kwargs = {"user_id": rng.choice(ids), "idempotency_key": f"demo-{run_id}-{i}"}
        messages.append((task, kwargs))
    return messages


def _report(outcomes: list[dict], state: dict, ledger: dict) -> None:
    table = Counter(
        (
            o["task"].split(".")[-1],
            o.get("source") or o.get("error"),
            o["code"],
            "replayed" if o.get("replayed") else "first",
        )
        for o in outcomes
    )
    print(f"\n{'task':<20} {'source / reason':<22} {'code':>4}  {'delivery':<9} {'count':>5}")
    for (task, what, code, replayed), count in sorted(table.items(), key=str):
        print(f"{task:<20} {what:<22} {code:>4}  {replayed:<9} {count:>5}")

    print("\nstate of the subscriber account:")
    print(format_state(state) if state["ok"] else state)
    print("\nits latest ledger entries:")
    print("\n".join(format_ledger_rows(ledger["entries"])) if ledger["entries"] else "(none)")


def _report_holds(steps: list[tuple[str, dict]]) -> None:
    print("\nholds on a credits-only account (reserve -> generate -> capture or release):")
    for step, answer in steps:
        hold = answer.get("hold") or {}
        if answer.get("ok") and "source" in answer:
            what = f"{answer['source']} {answer['amount']}, hold {hold.get('status')}"
        elif answer.get("ok"):
            what = f"held now {answer['state']['held']['credits']} credits"
        else:
            what = f"{answer['code']} {answer['error']} ({answer.get('status', '')})"
        credits = (answer.get("state") or {}).get("credits", {}).get("balance", "")
        print(f"  {step:<34} {what:<40} balance {credits}")


def _report_events(db_url: str, accounts: dict[str, dict[str, Any]]) -> None:
    from sqlalchemy import select

    from models import Event

    kinds = {columns["id"]: kind for kind, columns in accounts.items()}
    engine = create_db_engine(db_url, pool_size=1)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Event).where(Event.user_id.in_(list(kinds))).order_by(Event.id)
            ).all()
    finally:
        engine.dispose()
    settings = get_settings()
    published = sum(1 for row in rows if row.published_at is not None)
    print(
        f"\nbalance events for the product: {len(rows)} recorded, {published} published to"
        f" queue {settings.events_queue!r} as task {settings.events_task!r}"
    )
    for row in rows:
        print(f"  {row.type:<24} {kinds[row.user_id]:<22} {event_subject(row.data)}")
