"""Bringing stored subscriptions in line with BILLING_TIERS and BILLING_TIER_ALIASES."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session, sessionmaker

from billing.core.settings import Settings
from billing.storage.engine import transaction
from models import User


def sync_tier_limits(
    factory: sessionmaker[Session], settings: Settings, batch_size: int = 5000
) -> dict[str, Any]:
    """Rename legacy tiers, then set every subscriber's limit to its tier's, in batches.

    Each batch is a short transaction over rows it could lock (SKIP LOCKED): a row a charge
    holds is fixed by that charge, which applies the same rules.
    """
    renamed = sum(
        _batched(
            factory,
            User.subscription_type == alias,
            {"subscription_type": canonical},
            batch_size,
        )
        for alias, canonical in settings.tier_aliases.items()
    )
    limits = sum(
        _batched(
            factory,
            and_(User.subscription_type == tier, User.subscription_ops_limit != limit),
            {"subscription_ops_limit": limit},
            batch_size,
        )
        for tier, limit in settings.tiers.items()
    )
    return {"renamed": renamed, "limits_changed": limits}


def _batched(factory: sessionmaker[Session], where: Any, values: dict[str, Any], size: int) -> int:
    changed = 0
    while True:
        with transaction(factory) as session:
            ids = (
                select(User.id)
                .where(where)
                .order_by(User.id)
                .limit(size)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            count = session.execute(
                update(User).where(User.id.in_(ids)).values(**values),
                execution_options={"synchronize_session": False},
            ).rowcount
        changed += count
        if count < size:
            return changed
