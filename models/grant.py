from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId
from models.enums import GrantCategory, GrantStatus, credit_category_enum, grant_status_enum

ACTIVE = text("status = 'active'")


class CreditGrant(Base):
    """Credits granted to an account: how many, what is left, until when, in which order.

    ``remaining`` is net of what open holds keep from it, as ``users.balance_credits`` is; the
    part of the balance no active grant accounts for is the account's general balance. A grant
    moves only under its account's row lock. Its key is the grant's idempotency key, shared
    with its ``grant`` ledger row.
    """

    __tablename__ = "credit_grants"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("remaining >= 0 AND remaining <= amount", name="remaining_within"),
        CheckConstraint("priority BETWEEN 0 AND 100", name="priority_within"),
        CheckConstraint("(status = 'active') = (closed_at IS NULL)", name="closed_when_closed"),
        CheckConstraint("status = 'active' OR remaining = 0", name="closed_hold_nothing"),
        # An account's live grants, read under the lock by every credits movement, and the
        # due ones of all accounts (the expiry sweep).
        Index(
            "ix_credit_grants_active_user_id",
            "user_id",
            "priority",
            "expires_at",
            "id",
            postgresql_where=ACTIVE,
            sqlite_where=ACTIVE,
        ),
        Index(
            "ix_credit_grants_active_expires_at",
            "expires_at",
            postgresql_where=ACTIVE,
            sqlite_where=ACTIVE,
        ),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(always=False), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("users.id", ondelete="RESTRICT"), nullable=False
    )
    idempotency_key: Mapped[str] = mapped_column(String(320), nullable=False, unique=True)
    amount: Mapped[int] = mapped_column(Integer, nullable=False)
    remaining: Mapped[int] = mapped_column(Integer, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    priority: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default=text("50"))
    category: Mapped[GrantCategory] = mapped_column(
        credit_category_enum, nullable=False, server_default=text("'paid'")
    )
    status: Mapped[GrantStatus] = mapped_column(
        grant_status_enum, nullable=False, server_default=text("'active'")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When ``credits.expiring`` was recorded for it: once per grant.
    expiring_notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
