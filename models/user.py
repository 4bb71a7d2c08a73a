from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, Index, Integer, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId
from models.enums import UserRole, user_role_enum


class User(Base):
    """An account. Every column but ``id`` has a server default, so other services can create
    a working account with ``INSERT INTO users (id) VALUES (...)``."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("balance_credits >= 0", name="balance_credits_non_negative"),
        CheckConstraint("subscription_ops_used >= 0", name="subscription_ops_used_non_negative"),
        CheckConstraint("subscription_ops_limit >= 0", name="subscription_ops_limit_non_negative"),
        CheckConstraint("freemium_actions_used >= 0", name="freemium_actions_used_non_negative"),
        # The subscriptions about to end or just ended (the events' subscription sweep).
        Index(
            "ix_users_subscription_end",
            "subscription_end",
            postgresql_where=text("subscription_end IS NOT NULL"),
            sqlite_where=text("subscription_end IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    role: Mapped[UserRole] = mapped_column(
        user_role_enum, nullable=False, server_default=text("'user'")
    )
    subscription_type: Mapped[str | None] = mapped_column(Text)
    subscription_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    subscription_ops_limit: Mapped[int] = mapped_column(
        Integer, nullable=False, server_default=text("0")
    )
    subscription_ops_used: Mapped[int] = mapped_column(
        Integer, nullable=False, server_default=text("0")
    )
    subscription_ops_reset_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    freemium_actions_used: Mapped[int] = mapped_column(
        Integer, nullable=False, server_default=text("0")
    )
    freemium_reset_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    balance_credits: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
