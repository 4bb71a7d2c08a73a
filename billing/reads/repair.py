"""``billing repair-ledger-chain``: rewrite ledger rows whose running figures are wrong.

Before the fix of issue 24, a partial capture wrote its ``capture`` row with the balance from
before its rest came back, after the rest's ``release`` row: the audit names such rows
(``billing.reads.chain``). This rewrites their ``*_after`` columns to the chain recomputed from the
movements in id order. It moves no money and changes no account: the movements, amounts and
balances stay as they are; only figures that never matched the account are corrected.

A dry run (the default) lists what would change and writes nothing. With ``apply``, each batch
of accounts is rewritten in a transaction of its own that first locks the accounts' rows, so no
movement adds a row to their ledgers meanwhile, and recomputes under the lock. An account whose
own figures disagree with its ledger's sums is left alone and reported: its figures may be the
evidence of what went wrong (see the BillingAuditMismatch runbook), and rewriting its rows would
hide it. Safe to run again: a second run finds nothing to do.
"""

from __future__ import annotations

from typing import Any

from psycopg.errors import LockNotAvailable, QueryCanceled
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import OperationalError

from billing.core import results
from billing.reads import audit, chain
from models import User

BATCH = 100
SKIPPED_FIGURES = "its balance or counters disagree with its ledger's sums (billing audit)"
SKIPPED_BUSY = (
    "its batch waited for a row lock or ran past the statement timeout; nothing was written,"
    " run the command again (for this account alone: repair-ledger-chain USER_ID)"
)


def repair_ledger_chain(engine: Engine, user_id: int | None, *, apply: bool) -> results.Result:
    """Rewrite (``apply``) or list the drifted rows of one account or of every account."""
    with engine.begin() as conn:
        _no_statement_timeout(conn)
        if user_id is not None and conn.scalar(select(User.id).where(User.id == user_id)) is None:
            return results.user_not_found(user_id)
        drifted = chain.drifted_accounts(conn, None if user_id is None else [user_id])
    changes: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    repaired = change_count = 0
    for start in range(0, len(drifted), BATCH):
        batch = drifted[start : start + BATCH]
        try:
            with engine.begin() as conn:
                if apply:
                    # Lock first, then read: the chain is recomputed from what the lock let
                    # in. The session's lock and statement timeouts bound how long movements
                    # on these accounts wait for it.
                    locking = select(User.id).where(User.id.in_(batch)).order_by(User.id)
                    conn.execute(locking.with_for_update())
                else:
                    _no_statement_timeout(conn)
                off = sorted(user for user, found in audit.account_checks(conn, batch) if found)
                fix = [user for user in batch if user not in off]
                room = audit.MAX_REPORTED - len(changes)
                count, found = chain.drift(conn, fix, room) if fix else (0, [])
                if apply and fix:
                    chain.rewrite(conn, fix)
        except OperationalError as exc:
            if not isinstance(exc.orig, LockNotAvailable | QueryCanceled):
                raise
            skipped += [{"user_id": user, "reason": SKIPPED_BUSY} for user in batch]
            continue
        skipped += [{"user_id": user, "reason": SKIPPED_FIGURES} for user in off]
        repaired += len(fix)
        change_count += count
        changes += found
    return results.success(
        applied=apply,
        accounts=repaired,
        change_count=change_count,
        changes=changes,
        skipped=skipped,
    )


def _no_statement_timeout(conn: Connection) -> None:
    # A read that holds no lock (finding the drifted accounts, a dry run) may take as long as
    # the ledger is large: the statement timeout bounds lock holders, and this is none.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SET LOCAL statement_timeout = 0"))
