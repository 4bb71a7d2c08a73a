"""The benchmark's Celery app: the billing app itself plus two reference tasks.

- ``bench.noop``: the floor, Celery's own per-task work.
- ``bench.charge_frame``: everything a generation charge does except talking to the
  database: the billing task class, argument validation, the charge rules on an account held
  in memory, the outcome log line and a result of a charge's size. Charge minus frame is
  what the database work costs; frame minus floor is what the task's contract costs.
- ``bench.durable_insert``: the frame plus the least any charge must do in the database: one
  round trip that durably commits one row, under a unique key, referencing the account (a
  statement on an autocommit connection). No correct charge can do less, so its rate is the
  ceiling of every charge's rate on the machine that measures it.
- ``bench.locked_insert``: the same durable insert, after a first round trip that opens the
  transaction and reads the account under its row lock. A charge whose rules run in Python
  must see the account before it can choose what to draw, so it cannot do less than this: its
  rate is the ceiling of every such charge, ours included.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from psycopg import ClientCursor, Connection

from billing.core import results
from billing.core.records import AccountRow
from billing.core.settings import Settings
from billing.core.validation import ChargeArgs
from billing.movements import charges
from billing.movements.store import Store
from billing.storage.psycopg_store import PgStore
from models import Operation
from tasks.base import BillingTask
from worker import app


@app.task(name="bench.noop")
def noop(**_kwargs: object) -> dict[str, object]:
    return {"ok": True, "code": 200}


def _charge_in_memory(args: ChargeArgs, settings: Settings) -> results.Result:
    """The charge's rules and answer, as the frame decides them, on an account in memory
    whose freemium pays (the most common draw): everything but the database."""
    now = datetime.now(UTC)
    account = AccountRow(args.user_id, "user", None, None, 0, 0, now, 0, now, 1_000_000)
    decision = charges.Charge(Operation.GENERATION, args).decide(account, now, settings)
    outcome = {**decision.outcome, "ledger_id": args.user_id}
    return results.shaped(outcome, args.include_state)


def _reference(
    task: BillingTask,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    db_work: Callable[[Connection, ChargeArgs], None] = lambda _conn, _args: None,
) -> results.Result:
    """A reference task: a charge's arguments, task class, path and result, with ``db_work``
    as its only database work. It takes the PostgreSQL charge's path (a pooled connection in
    autocommit mode, which costs no round trip by itself), not the ORM session the embedded
    default uses, whose begin and commit a PostgreSQL charge never pays."""

    def on_store(store: Store, parsed: ChargeArgs, settings: Settings) -> results.Result:
        if not isinstance(store, PgStore):
            raise RuntimeError("the bench's reference tasks run on PostgreSQL only")
        db_work(store.conn, parsed)
        return _charge_in_memory(parsed, settings)

    return task.execute(ChargeArgs, args, kwargs, on_store)


@app.task(bind=True, base=BillingTask, name="bench.charge_frame")
def charge_frame(self: BillingTask, *args: Any, **kwargs: Any) -> results.Result:
    return _reference(self, args, kwargs)


DURABLE_INSERT_TABLE = """
CREATE TABLE IF NOT EXISTS bench_durable_insert (
    idempotency_key text PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id),
    recorded_at timestamptz NOT NULL DEFAULT now()
)
"""


INSERT_ROW = "INSERT INTO bench_durable_insert (idempotency_key, user_id) VALUES (%s, %s)"


def _durable_insert(conn: Connection, args: ChargeArgs) -> None:
    conn.execute(INSERT_ROW, (args.idempotency_key, args.user_id))


@app.task(bind=True, base=BillingTask, name="bench.durable_insert")
def durable_insert(self: BillingTask, *args: Any, **kwargs: Any) -> results.Result:
    return _reference(self, args, kwargs, _durable_insert)


def _locked_insert(conn: Connection, args: ChargeArgs) -> None:
    cur = ClientCursor(conn)
    cur.execute("BEGIN; SELECT id FROM users WHERE id = %s FOR UPDATE", (args.user_id,))
    cur.nextset()
    if cur.fetchone() is None:
        raise RuntimeError(f"no account {args.user_id}")
    cur.execute(f"{INSERT_ROW}; COMMIT", (args.idempotency_key, args.user_id))


@app.task(bind=True, base=BillingTask, name="bench.locked_insert")
def locked_insert(self: BillingTask, *args: Any, **kwargs: Any) -> results.Result:
    return _reference(self, args, kwargs, _locked_insert)


__all__ = ["DURABLE_INSERT_TABLE", "app"]
