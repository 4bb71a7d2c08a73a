"""The beat's sweep of expired holds: set-based, and safe to run twice or concurrently.

Every movement on an account expires its due holds first (``frame.bring_up_to_date``); the
sweep does the same for accounts nobody touches. A batch locks the accounts with a hold due
(``FOR UPDATE SKIP LOCKED``: an account a movement holds is expired by that movement, and two
sweeps take disjoint batches), reads their holds after the lock, brings each account up to
date with the frame's own step, writes it all and commits. A hold that was settled before the
lock is no longer open when read, so each hold is given back once; the settlement's unique
ledger key would refuse a second one anyway.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import Engine

from billing.core import credits, events, rules
from billing.core.settings import Settings
from billing.movements import frame
from billing.storage.sqlalchemy_store import SqlStore
from models import HoldStatus

BATCH = 500


def expire_holds(engine: Engine, settings: Settings, batch: int = BATCH) -> dict[str, Any]:
    """Expire every due hold of accounts nobody touches."""
    return _sweep(engine, settings, batch, grants=False)


def expire_grants(engine: Engine, settings: Settings, batch: int = BATCH) -> dict[str, Any]:
    """Expire every grant whose ``expires_at`` has come, on accounts nobody touches: what is
    left of it leaves the balance, with its ``expiry`` ledger row."""
    return _sweep(engine, settings, batch, grants=True)


def _sweep(engine: Engine, settings: Settings, batch: int, *, grants: bool) -> dict[str, Any]:
    totals = {"expired": 0, "accounts": 0, "batches": 0, "events": 0}
    if grants:
        totals["credits_expired"] = 0
    after = 0
    with engine.connect() as conn:
        store = SqlStore(conn)
        try:
            while True:
                notice = settings.credit_expiry_notice if grants else None
                accounts, clock = store.lock_due(after, batch, grants=notice)
                for account in accounts:
                    before = dataclasses.replace(account)
                    grants_before = {g.key: g.mutable() for g in account.grants}
                    now = rules.effective_now(account, clock)
                    update = frame.bring_up_to_date(account, now, settings)
                    changed = account != before
                    found = events.detect(
                        account, now, settings, entries=update.entries, notices=update.notices
                    )
                    store.write_rows(
                        frame.writes_for(
                            account.id,
                            None,
                            now,
                            account,
                            changed,
                            update,
                            events=found,
                            grants=frame.changed_grants(account, grants_before),
                        )
                    )
                    totals["events"] += len(found)
                    if grants:
                        # A grant's own expiry, not a part a hold gave back and wrote off.
                        expiries = [
                            e
                            for e in update.entries
                            if e.grant_key is not None and e.key == credits.expiry_key(e.grant_key)
                        ]
                        totals["expired"] += len(expiries)
                        totals["credits_expired"] += sum(e.amount for e in expiries)
                    else:
                        totals["expired"] += sum(
                            1 for change in update.holds if change.hold.status == HoldStatus.EXPIRED
                        )
                conn.commit()
                totals["batches"] += 1
                totals["accounts"] += len(accounts)
                if len(accounts) < batch:
                    return totals
                after = accounts[-1].id
        finally:
            store.rollback()
