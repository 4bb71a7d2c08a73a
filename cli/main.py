"""``billing``: migrate, run workers and beat, run the demo, read an account."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from billing.core.validation import InvalidRequest, error_message
from billing.storage.engine import mask_url
from billing_client import rabbitmq
from cli.formatting import event_subject, format_grants, format_ledger_rows, format_state
from cli.processes import BrokerUnreachable


def _cmd_migrate(args: argparse.Namespace) -> int:
    from billing.core.settings import get_settings
    from migrations import migrate

    url = get_settings().effective_database_url()
    migrate.upgrade(url, args.revision)
    print(f"database {mask_url(url)} is at revision {args.revision}")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from billing.core.settings import get_settings
    from cli import processes

    settings = get_settings()
    queue = args.queue or {"public": settings.queue, "admin": settings.admin_queue}.get(args.only)
    cmd = processes.worker_command(
        queue=queue,
        concurrency=args.concurrency,
        pool=args.pool,
        hostname=args.hostname,
        loglevel=args.loglevel,
    )
    if args.no_restart:
        os.execv(cmd[0], cmd)
    return processes.supervise(cmd)


def _cmd_beat(args: argparse.Namespace) -> int:
    from cli import processes

    cmd = processes.beat_command(loglevel=args.loglevel)
    os.execv(cmd[0], cmd)


def _cmd_flower(args: argparse.Namespace) -> int:
    from billing.core.settings import get_settings

    credentials = get_settings().flower_basic_auth
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    if credentials:
        # Through the environment, so the password is not on the command line for `ps` to show.
        env["FLOWER_BASIC_AUTH"] = credentials
    elif args.insecure_no_auth:
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
        print("billing: WARNING: Flower runs without authentication", file=sys.stderr)
    else:
        print(
            "billing: refusing to start Flower without authentication: set "
            "BILLING_FLOWER_BASIC_AUTH=user:password (or pass --insecure-no-auth)",
            file=sys.stderr,
        )
        return 2
    # cli.flower runs Flower with meta masked in every event and inspect answer it takes in.
    cmd = [
        sys.executable, "-m", "cli.flower", "-A", "worker", "flower",
        f"--address={args.address}", f"--port={args.port}",
        # Read-only: nobody can enqueue, revoke or control anything through Flower.
        "--read_only=True",
    ]  # fmt: skip
    os.execve(cmd[0], cmd, env)


def _cmd_open_account(args: argparse.Namespace) -> int:
    from billing.core.validation import OpenAccountArgs
    from billing.movements import accounts

    parsed = OpenAccountArgs.parse((), {"user_id": args.user_id, "role": args.role})
    result = _on_store(accounts.open_account, parsed)
    return _print(result, args.json, _format_opened)


def _format_opened(result: dict[str, Any]) -> str:
    said = "opened" if result["opened"] else "already open; nothing changed"
    return f"account {said}\n" + format_state(result)


def _cmd_grant(args: argparse.Namespace) -> int:
    from billing.core.validation import GrantArgs
    from billing.movements import grants

    expires_at = args.expires_at
    if args.expires_in_days is not None:
        if args.expires_in_days <= 0:
            raise InvalidRequest("expires_in_days", "must be more than 0")
        expires_at = (datetime.now(UTC) + timedelta(days=args.expires_in_days)).isoformat()
    request = {"user_id": args.user_id, "amount": args.amount, "idempotency_key": args.key}
    request.update(expires_at=expires_at, priority=args.priority, category=args.category)
    parsed = GrantArgs.parse((), request)
    result = _on_store(grants.grant, parsed)
    return _print(result, args.json, _format_movement)


def _cmd_grants(args: argparse.Namespace) -> int:
    from billing.core.validation import UserArgs
    from billing.movements import accounts

    parsed = UserArgs.parse((), {"user_id": args.user_id})
    result = _on_store(accounts.get_state, parsed)
    if result.get("ok"):
        result = {**result, "credits": result["state"]["credits"]}
        if args.json:
            result = {k: result[k] for k in ("ok", "code", "credits")}
    return _print(result, args.json, format_grants)


def _cmd_void_grant(args: argparse.Namespace) -> int:
    from billing.core.validation import VoidGrantArgs
    from billing.movements import grants

    parsed = VoidGrantArgs.parse((), {"idempotency_key": args.key, "reason": args.reason})
    result = _on_store(grants.void, parsed)
    return _print(result, args.json, _format_movement)


def _format_movement(result: dict[str, Any]) -> str:
    what = "replayed: " if result.get("replayed") else ""
    return (
        f"{what}{result['amount']} {result['source']} (ledger entry {result['ledger_id']})\n"
        + format_state(result)
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from cli import demo

    return demo.run(charges=args.charges, concurrency=args.concurrency)


def _with_engine(fn: Callable[[Any, Any], dict[str, Any]]) -> dict[str, Any]:
    from billing.core.settings import get_settings
    from billing.storage.engine import create_db_engine

    settings = get_settings()
    engine = create_db_engine(
        settings.effective_database_url(), pool_size=1, session_options=settings.session_options()
    )
    try:
        return fn(engine, settings)
    finally:
        engine.dispose()


def _on_store(handler: Callable[[Any, Any, Any], dict[str, Any]], parsed: Any) -> dict[str, Any]:
    """Run a movement's entry point, ``handler(store, parsed, settings)``, on the store a task
    would use (``billing.storage.factory``)."""
    from billing.storage.factory import connect

    def run(engine: Any, settings: Any) -> dict[str, Any]:
        with connect(engine) as conn:
            return handler(conn, parsed, settings)

    return _with_engine(run)


def _in_transaction(
    handler: Callable[[Any, Any, Any], dict[str, Any]], parsed: Any
) -> dict[str, Any]:
    """Run a read, ``handler(session, parsed, settings)``, in one ORM transaction."""
    from billing.storage.engine import session_factory, transaction

    def run(engine: Any, settings: Any) -> dict[str, Any]:
        with transaction(session_factory(engine)) as session:
            return handler(session, parsed, settings)

    return _with_engine(run)


def _cmd_state(args: argparse.Namespace) -> int:
    from billing.core.validation import UserArgs
    from billing.movements import accounts

    parsed = UserArgs.parse((), {"user_id": args.user_id})
    # The open holds come from the state's own read: the list and `held` always agree.
    result = _on_store(partial(accounts.get_state, with_holds=True), parsed)
    return _print(result, args.json, format_state)


def _cmd_ledger(args: argparse.Namespace) -> int:
    from billing.core.validation import LedgerArgs
    from billing.reads import ledger

    parsed = LedgerArgs.parse(
        (), {"user_id": args.user_id, "limit": args.limit, "cursor": args.cursor}
    )
    result = _in_transaction(ledger.page, parsed)
    return _print(result, args.json, _format_ledger)


def _cmd_events(args: argparse.Namespace) -> int:
    from billing.jobs import outbox

    if args.limit < 1:
        raise InvalidRequest("limit", "must be at least 1")
    result = _with_engine(
        lambda engine, _s: outbox.listing(
            engine, args.user_id, pending=args.pending, limit=args.limit
        )
    )
    return _print(result, args.json, _format_events)


def _format_events(result: dict[str, Any]) -> str:
    lines = [f"{'seq':>8}  {'occurred_at':<32} {'type':<23} {'user':>14}  {'published':<10} what"]
    for e in result["events"]:
        data = e["data"]
        what = event_subject(data)
        lines.append(
            f"{data['sequence']:>8}  {e['occurred_at']:<32} {e['type']:<23} {e['user_id']:>14}"
            f"  {'yes' if e['published_at'] else 'PENDING':<10} {what}"
        )
    if not result["events"]:
        lines = ["(no events)"]
    backlog = result["unpublished"]
    lines.append(
        f"{backlog} unpublished, the oldest from {result['oldest_unpublished']}"
        if backlog
        else "nothing unpublished"
    )
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    from billing.reads import status
    from cli import processes
    from worker import inspect
    from worker.app import app

    # One line and exit 2 when the broker does not answer, as for the database, not the
    # transport's traceback from the first inspect.
    processes.check_broker(app)

    def read(engine: Any, settings: Any) -> dict[str, Any]:
        state = status.database_state(engine)
        queues = inspect.queue_lengths(app)
        now = state.pop("now")
        return {
            "ok": True,
            "code": 200,
            "workers": inspect.workers_up(app),
            # RabbitMQ: messages that outlived their delivery limit; Redis: items that were
            # not task messages (worker.malformed); None on the embedded SQL broker.
            "dead_letters": queues.get(rabbitmq.DEAD_LETTER_QUEUE),
            "queues": {
                queue: {
                    "length": length,
                    "oldest_waiting_seconds": inspect.oldest_waiting_seconds(app, queue),
                }
                for queue, length in queues.items()
            },
            **state,
            "jobs": {
                job: {
                    "succeeded_at": run["succeeded_at"].isoformat(),
                    "seconds_ago": max((now - run["succeeded_at"]).total_seconds(), 0.0),
                }
                for job, run in state["jobs"].items()
            },
        }

    return _print(_with_engine(read), args.json, _format_status)


def _format_status(result: dict[str, Any]) -> str:
    workers = result["workers"]
    if workers is None:
        shown = "unknown (the embedded broker has no broadcast to ping them)"
    else:
        shown = f"{len(workers)} up" + (f": {', '.join(workers)}" if workers else "")
    queues = ", ".join(
        f"{name} {q['length']}"
        + (
            f" (next waited {q['oldest_waiting_seconds']:.0f}s)"
            if q["oldest_waiting_seconds"] is not None
            else ""
        )
        for name, q in result["queues"].items()
    )
    mismatches = result["audit_mismatches"]
    audit = (
        "never run"
        if mismatches is None
        else ("clean" if mismatches == 0 else f"{mismatches} MISMATCHES (billing audit)")
    )
    if mismatches is not None:
        audit += f" (last full audit {result['jobs']['audit']['succeeded_at']})"
    jobs = (
        ", ".join(f"{job} {_ago(run['seconds_ago'])}" for job, run in result["jobs"].items())
        or "none has run yet"
    )
    events = f"{result['events_pending']} unpublished"
    if result["events_pending"]:
        events += f", the oldest {_ago(result['events_oldest_pending_age_seconds'])}"
    dead = result["dead_letters"]
    dead_line = (
        []
        if dead is None
        else [
            f"dead:     {dead} in {rabbitmq.DEAD_LETTER_QUEUE}"
            + (" (docs/operations.md: Runbook, BillingDeadLetters)" if dead else "")
        ]
    )
    return "\n".join(
        [
            f"workers:  {shown}",
            f"queues:   {queues}",
            *dead_line,
            f"holds:    {result['holds_open']} open",
            f"events:   {events}",
            f"audit:    {audit}",
            f"jobs:     {jobs}",
        ]
    )


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _cmd_dead_letters(args: argparse.Namespace) -> int:
    from worker import dead_letters
    from worker.app import app

    on_redis = app.conf.broker_url.startswith(("redis://", "rediss://"))
    if on_redis and not args.requeue:
        result = {"ok": True, "code": 200, "dead_letters": dead_letters.peek_redis(app, args.limit)}
    elif on_redis:
        result = {
            "ok": False,
            "code": 400,
            "error": "not_requeueable",
            "message": "Redis dead letters are items that were not task messages: none can run",
        }
    elif not rabbitmq.is_amqp(app.conf.broker_url):
        result = {
            "ok": False,
            "code": 400,
            "error": "not_rabbitmq",
            "message": "only RabbitMQ and Redis have a dead-letter queue",
        }
    elif args.requeue:
        moved = dead_letters.requeue(app)
        result = {"ok": True, "code": 200, "requeued": moved}
    else:
        result = {"ok": True, "code": 200, "dead_letters": dead_letters.peek(app, args.limit)}
    return _print(result, args.json, _format_dead_letters)


def _format_dead_letters(result: dict[str, Any]) -> str:
    listed = result.get("dead_letters", result.get("requeued", []))
    verb = "moved back" if "requeued" in result else "in " + rabbitmq.DEAD_LETTER_QUEUE
    lines = [f"{len(listed)} message(s) {verb}"]
    for m in listed:
        lines.append(
            f"  {m['task']} [{m['task_id']}] from {m['queue']} ({m['reason']}, {m['died_at']}):"
            f" {m['kwargs']}"
        )
    return "\n".join(lines)


def _cmd_audit(args: argparse.Namespace) -> int:
    from billing.core.validation import AuditArgs
    from billing.reads import audit

    parsed = AuditArgs.parse((), {"user_id": args.user_id})

    def run(engine: Any, _settings: Any) -> dict[str, Any]:
        from billing.jobs import runs
        from billing.storage.engine import session_factory, transaction

        with transaction(session_factory(engine)) as session:
            outcome = audit.audit(session, parsed)
        if parsed.user_id is None:  # a full audit, recorded as the task records its own
            runs.record(engine, runs.AUDIT, outcome)
        return outcome

    result = _with_engine(run)
    code = _print(result, args.json, _format_audit)
    return code if code else (0 if result["clean"] else 1)


def _format_audit(result: dict[str, Any]) -> str:
    lines = [
        f"checked {result['accounts_checked']} account(s): "
        + ("clean" if result["clean"] else f"{result['mismatch_count']} mismatch(es)")
    ]
    for m in result["mismatches"]:
        lines.append(
            f"  user {m['user_id']}: {_mismatched(m)} is {m['stored']}, the ledger says"
            f" {m['ledger']}"
        )
    return "\n".join(lines)


def _mismatched(m: dict[str, Any]) -> str:
    if "ledger_id" in m:
        return f"{m['field']} of ledger row {m['ledger_id']}"
    if "hold_key" in m:
        return f"hold {m['hold_key']}"
    return str(m["field"])


def _cmd_repair_ledger_chain(args: argparse.Namespace) -> int:
    from billing.core.validation import AuditArgs
    from billing.reads import repair

    parsed = AuditArgs.parse((), {"user_id": args.user_id})
    result = _with_engine(
        lambda engine, _s: repair.repair_ledger_chain(engine, parsed.user_id, apply=args.apply)
    )
    code = _print(result, args.json, _format_repair)
    left = result.get("skipped") or (not args.apply and result.get("change_count"))
    return code if code else (1 if left else 0)


def _format_repair(result: dict[str, Any]) -> str:
    verb = "rewrote" if result["applied"] else "would rewrite"
    lines = [
        f"{verb} {result['change_count']} figure(s) of ledger rows"
        f" in {result['accounts']} account(s)"
    ]
    for c in result["changes"]:
        lines.append(
            f"  user {c['user_id']}: {c['field']} of ledger row {c['ledger_id']}:"
            f" {c['stored']} -> {c['ledger']}"
        )
    for s in result["skipped"]:
        lines.append(f"  user {s['user_id']} left alone: {s['reason']}")
    if not result["applied"] and result["change_count"]:
        lines.append("a dry run: nothing was written; --apply rewrites them")
    return "\n".join(lines)


def _print(result: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], str]) -> int:
    if as_json:
        print(json.dumps(result, indent=2))
    elif result["ok"]:
        print(human(result))
    else:
        print(f"error {result['code']} {result['error']}: {result['message']}", file=sys.stderr)
    return 0 if result["ok"] else 1


def _format_ledger(result: dict[str, Any]) -> str:
    lines = format_ledger_rows(result["entries"]) if result["entries"] else ["(no entries)"]
    if result["next_cursor"]:
        lines.append(f"more: --cursor {result['next_cursor']}")
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("billing-processor")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="billing",
        description="Async billing processor: exactly-once charges on Celery and PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply the database migrations")
    p.add_argument("--revision", default="head", help="target revision (default: head)")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("worker", help="run a billing worker (production defaults)")
    p.add_argument(
        "--queue",
        default=None,
        help="queues to consume, comma-separated (default: BILLING_QUEUE and BILLING_ADMIN_QUEUE)",
    )
    p.add_argument(
        "--only",
        choices=["public", "admin"],
        default=None,
        help="consume only the public queue (charges, holds, reads) or only the admin queue"
        " (grants, subscriptions, refunds, tier sync, audit)",
    )
    p.add_argument("--concurrency", type=int, default=None, help="processes (default: CPUs)")
    p.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    p.add_argument("--hostname", default=None, help="node name (default: billing-<random>@host)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument(
        "--no-restart",
        action="store_true",
        help="exec the worker instead of restarting it when it dies (for your own supervisor)",
    )
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("beat", help="run the scheduler; run exactly one per deployment")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=_cmd_beat)

    p = sub.add_parser("flower", help="run Flower: read-only, basic auth, on 127.0.0.1")
    p.add_argument("--address", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=5555)
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="run without BILLING_FLOWER_BASIC_AUTH (anyone who reaches the port sees everything)",
    )
    p.set_defaults(func=_cmd_flower)

    p = sub.add_parser("open-account", help="open an account (nothing charged or granted)")
    p.add_argument("user_id", type=int)
    p.add_argument("--role", choices=["user", "admin"], default="user", help="default: user")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_open_account)

    p = sub.add_parser("grant", help="add credits to an account (after a confirmed payment)")
    p.add_argument("user_id", type=int)
    p.add_argument("amount", type=int)
    p.add_argument("--key", required=True, help="idempotency key, e.g. the payment's id")
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument("--expires-at", help="ISO-8601 instant with its UTC offset")
    expiry.add_argument("--expires-in-days", type=float, help="expires this many days from now")
    p.add_argument("--priority", type=int, help="0-100, lower drawn first (default: 50)")
    p.add_argument("--category", choices=["paid", "promotional"], help="default: paid")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_grant)

    p = sub.add_parser("grants", help="an account's live grants, in the order they are drawn")
    p.add_argument("user_id", type=int)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_grants)

    p = sub.add_parser("void-grant", help="remove what is left of a grant")
    p.add_argument("key", help="the grant's idempotency key")
    p.add_argument("--reason", help="recorded in the ledger row's meta")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_void_grant)

    p = sub.add_parser("demo", help="migrate, start a worker and beat, drive demo charges")
    p.add_argument("--charges", type=int, default=60, help="charges to send (default: 60)")
    p.add_argument("--concurrency", type=int, default=2, help="worker processes (default: 2)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("state", help="show an account's allowances and credits")
    p.add_argument("user_id", type=int)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_state)

    p = sub.add_parser("ledger", help="show an account's ledger, newest first")
    p.add_argument("user_id", type=int)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor", default=None, help="next_cursor of the previous page")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_ledger)

    p = sub.add_parser(
        "status", help="one screen for on-call: workers, queues, holds, events, jobs, audit"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("events", help="show recent balance events and what is unpublished")
    p.add_argument("user_id", type=int, nargs="?", default=None, help="one account (default: all)")
    p.add_argument("--pending", action="store_true", help="only events not yet published")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_events)

    p = sub.add_parser(
        "dead-letters",
        help="list the dead-letter queue (RabbitMQ, Redis), or move it back (--requeue, RabbitMQ)",
    )
    p.add_argument("--limit", type=int, default=20, help="list at most this many")
    p.add_argument(
        "--requeue", action="store_true", help="publish each again to the queue it died on"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_dead_letters)

    p = sub.add_parser(
        "audit", help="check that balances and counters match the ledger (exit 1 if not)"
    )
    p.add_argument("user_id", type=int, nargs="?", default=None, help="one account (default: all)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser(
        "repair-ledger-chain",
        help="rewrite the *_after figures of ledger rows the audit names (dry run unless --apply)",
    )
    p.add_argument("user_id", type=int, nargs="?", default=None, help="one account (default: all)")
    p.add_argument("--apply", action="store_true", help="write the changes (default: list them)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_repair_ledger_chain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InvalidRequest as exc:
        print(f"billing: invalid {exc.field}: {exc.message}", file=sys.stderr)
        return 2
    except BrokerUnreachable as exc:
        print(f"billing: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a BILLING_* setting that does not parse
        error = exc.errors(include_url=False)[0]
        name = "BILLING_" + "_".join(str(p) for p in error["loc"]).upper()
        print(f"billing: invalid setting {name}: {error_message(error)}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        from billing.core.settings import get_settings

        url = mask_url(get_settings().effective_database_url())
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        print(f"billing: cannot reach the database at {url}: {reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
