from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId


class BillingRequest(Base):
    """The first outcome of every idempotency key, accepted or rejected.

    The ledger only holds movements; a 402 or 404 moves nothing but must still be answered the
    same way when the key comes again, so each outcome is kept here. ``user_id`` has no foreign
    key because a 404 is remembered for a user that does not exist.
    """

    __tablename__ = "billing_requests"

    idempotency_key: Mapped[str] = mapped_column(String(320), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigId, nullable=False)
    operation: Mapped[str] = mapped_column(String(96), nullable=False)
    # The effective cost; with user_id and operation it is what a repeat must match.
    cost: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    ledger_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("credits_ledger.id", ondelete="RESTRICT")
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
