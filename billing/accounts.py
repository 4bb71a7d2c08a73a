"""Loading an account up to date (lazy resets, tier normalisation) and reading its state."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing import resets, results, rules
from billing.settings import Settings
from billing.validation import UserArgs
from models import User


def load_for_update(
    session: Session, user_id: int, settings: Settings
) -> tuple[User, datetime] | None:
    """Lock the account row, bring it up to date and return it with the database's clock.

    The row lock serialises every charge of one user across all worker processes; the
    transaction's ``now()`` is the one clock all of them share.
    """
    row = session.execute(
        select(User, func.now()).where(User.id == user_id).with_for_update()
    ).first()
    if row is None:
        return None
    user, now = row
    now = _effective_now(user, now)
    resets.refresh_and_record(session, user, now, settings)
    return user, now


# How far a period start written by a transaction we waited for may lie ahead of our clock.
MAX_LOCK_WAIT = timedelta(minutes=5)


def _effective_now(user: User, now: datetime) -> datetime:
    """The transaction's clock, moved up to any period start committed while it waited.

    ``now()`` is taken when the transaction starts, before the row lock: a beat reset or a new
    subscription committed during the wait may have started a period after it. A movement
    dated before the start of the period it counts in would fall outside that period for the
    audit and for refunds, so it is dated no earlier than the current period's start.
    """
    now = rules.as_utc(now)
    starts = (rules.as_utc(user.freemium_reset_at), rules.as_utc(user.subscription_ops_reset_at))
    return max(now, *(s for s in starts if s <= now + MAX_LOCK_WAIT))


def get_state(session: Session, args: UserArgs, settings: Settings) -> results.Result:
    if not settings.v4_enabled:
        return results.billing_disabled()
    # Reads take no lock unless the account needs a reset or a tier fix stored.
    row = session.execute(select(User, func.now()).where(User.id == args.user_id)).first()
    if row is None:
        return results.user_not_found(args.user_id)
    user, now = row
    if rules.refresh_changes(user, now, settings):
        loaded = load_for_update(session, args.user_id, settings)
        if loaded is None:  # deleted between the two statements
            return results.user_not_found(args.user_id)
        user, now = loaded
        session.flush()
    return results.success(state=rules.account_state(user, now, settings))
