from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Identity, Index, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId
from models.enums import EventType, event_type_enum

PENDING = text("published_at IS NULL")
PUBLISHED = text("published_at IS NOT NULL")


class Event(Base):
    """The outbox: an event about an account, written in the transaction of the movement (or
    sweep) that caused it, and published to the product's queue after the commit.

    ``event_id`` is derived from what makes the event happen once (the movement's key, the
    hold, the period or the subscription's end: ``billing.core.events``), so the unique index is
    what keeps a crossing to one event. ``id`` orders an account's events: they are written
    under the account's row lock, so one account's ids rise in the order its events happened.
    """

    __tablename__ = "billing_events"
    __table_args__ = (
        # An account's events, newest first (`billing events USER_ID`), and what the
        # no-second-notice checks of the subscription sweep look for.
        Index("ix_billing_events_user_id_type", "user_id", "type", "subject_at"),
        # What the relay has still to publish, per account in order; most rows are published.
        Index(
            "ix_billing_events_pending_user_id",
            "user_id",
            "id",
            postgresql_where=PENDING,
            sqlite_where=PENDING,
        ),
        # What retention removes.
        Index(
            "ix_billing_events_published_at",
            "published_at",
            postgresql_where=PUBLISHED,
            sqlite_where=PUBLISHED,
        ),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(always=False), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False, unique=True)
    type: Mapped[EventType] = mapped_column(event_type_enum, nullable=False)
    user_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("users.id", ondelete="RESTRICT"), nullable=False
    )
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # The period start (freemium, subscription operations) or subscription end the event
    # belongs to; None for events of one movement or hold.
    subject_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    data: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Retention keeps the row at least until then: a period's "exhausted" event is what keeps
    # it once per period, and a period outlives the retention window.
    kept_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
