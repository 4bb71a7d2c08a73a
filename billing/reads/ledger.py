"""Writing and reading ledger rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.core import results
from billing.core.rules import as_utc
from billing.core.settings import Settings
from billing.core.validation import LedgerArgs
from models import LedgerEntry, User


def entry_json(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "created_at": as_utc(entry.created_at).isoformat(),
        "entry_type": str(entry.entry_type),
        "source": str(entry.source),
        "operation": str(entry.operation) if entry.operation else None,
        "amount": entry.amount,
        "idempotency_key": entry.idempotency_key,
        "balance_credits_after": entry.balance_credits_after,
        "subscription_ops_used_after": entry.subscription_ops_used_after,
        "freemium_actions_used_after": entry.freemium_actions_used_after,
        "meta": entry.meta,
        "hold_key": entry.hold_key,
    }


def page(session: Session, args: LedgerArgs, settings: Settings) -> results.Result:
    """``billing.get_ledger``: a page, when the ledger is on."""
    return get_ledger(session, args, enabled=settings.ledger_enabled)


def get_ledger(session: Session, args: LedgerArgs, *, enabled: bool) -> results.Result:
    """A page of a user's ledger, newest first, by keyset on the row id."""
    if not enabled:
        return results.ledger_disabled()
    # The page's ids come from an index-only walk of (user_id, id) from the cursor down, and
    # only those rows are fetched. Asked for whole rows in one query, the planner may walk the
    # primary key backwards instead and filter by user, which reads the whole table for a user
    # whose history is old.
    page_ids = select(LedgerEntry.id).where(LedgerEntry.user_id == args.user_id)
    if args.cursor is not None:
        page_ids = page_ids.where(LedgerEntry.id < int(args.cursor))
    page_ids = (
        page_ids.order_by(LedgerEntry.user_id.desc(), LedgerEntry.id.desc())
        .limit(args.limit + 1)
        .subquery()
    )
    rows = session.scalars(
        select(LedgerEntry)
        .join(page_ids, LedgerEntry.id == page_ids.c.id)
        .order_by(LedgerEntry.id.desc())
    ).all()
    if not rows and session.get(User, args.user_id) is None:
        return results.user_not_found(args.user_id)
    page = rows[: args.limit]
    next_cursor = str(page[-1].id) if len(rows) > args.limit else None
    return results.success(entries=[entry_json(e) for e in page], next_cursor=next_cursor)
