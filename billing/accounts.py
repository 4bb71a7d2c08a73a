"""Loading an account up to date (lazy resets, tier normalisation) and reading its state."""

from __future__ import annotations

from datetime import datetime

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
    now = rules.effective_now(user, now)
    resets.refresh_and_record(session, user, now, settings)
    return user, now


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
