from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, JsonDocument
from models.enums import (
    HoldStatus,
    LedgerSource,
    Operation,
    hold_status_enum,
    ledger_operation_enum,
    ledger_source_enum,
)

OPEN = text("status = 'held'")


class Hold(Base):
    """A reservation: what a job's reserve took from one source, until it is captured,
    released or expired. Its key is the reserve's idempotency key (the namespace of charges).

    The account's counters already count an open hold as taken, so nothing else can spend it;
    a hold moves only under its account's row lock, like every other movement. Its ledger
    rows (``credits_ledger.hold_key``) are the reserve, and one settlement keyed
    ``billing:settle:<key>``, unique, so the database lets a hold settle once.
    """

    __tablename__ = "billing_holds"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount_non_negative"),
        CheckConstraint("expires_at > created_at", name="expires_after_created"),
        CheckConstraint("(status = 'held') = (settled_at IS NULL)", name="settled_when_closed"),
        CheckConstraint(
            "(status = 'captured') = (captured IS NOT NULL)", name="captured_when_captured"
        ),
        CheckConstraint("captured >= 0 AND captured <= amount", name="captured_within_amount"),
        # The open holds of one account (every movement reads them under the lock), and the
        # due ones of all accounts (the expiry sweep). Closed holds are most rows and neither.
        Index(
            "ix_billing_holds_open_user_id",
            "user_id",
            postgresql_where=OPEN,
            sqlite_where=OPEN,
        ),
        Index(
            "ix_billing_holds_open_expires_at",
            "expires_at",
            postgresql_where=OPEN,
            sqlite_where=OPEN,
        ),
    )

    idempotency_key: Mapped[str] = mapped_column(String(320), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("users.id", ondelete="RESTRICT"), nullable=False
    )
    operation: Mapped[Operation] = mapped_column(ledger_operation_enum, nullable=False)
    source: Mapped[LedgerSource] = mapped_column(ledger_source_enum, nullable=False)
    # In the source's unit, as the reserve took it.
    amount: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[HoldStatus] = mapped_column(
        hold_status_enum, nullable=False, server_default=text("'held'")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What a capture kept; the rest of the hold went back to its source.
    captured: Mapped[int | None] = mapped_column(Integer)
    # For a credits hold, the grants its amount came from (``credits_ledger.credit_parts``).
    credit_parts: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonDocument)
