from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, JsonDocument
from models.enums import (
    EntryType,
    LedgerSource,
    Operation,
    ledger_entry_type_enum,
    ledger_operation_enum,
    ledger_source_enum,
)

CLOSURES = text("entry_type IN ('expiry', 'void')")


class LedgerEntry(Base):
    """One movement of credits or allowance. ``amount`` is in the source's unit and never
    negative; the direction comes from ``entry_type``. The ``*_after`` columns are the
    account's counters right after the movement."""

    __tablename__ = "credits_ledger"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount_non_negative"),
        # "A user's history, newest first" is a keyset scan of this index.
        Index("ix_credits_ledger_user_id_id", "user_id", "id"),
        CheckConstraint(
            "(entry_type = 'refund') = (refund_of_id IS NOT NULL)", name="refund_links_its_charge"
        ),
        CheckConstraint(
            "(entry_type IN ('hold', 'capture', 'release', 'expire')) = (hold_key IS NOT NULL)",
            name="hold_entry_links_its_hold",
        ),
        CheckConstraint(
            "entry_type NOT IN ('expiry', 'void') OR grant_key IS NOT NULL",
            name="grant_entry_names_its_grant",
        ),
        # What expired or was voided, summed on every metrics scrape: a few rows of a large
        # ledger, read from this index alone.
        Index(
            "ix_credits_ledger_closures",
            "entry_type",
            "amount",
            postgresql_where=CLOSURES,
            sqlite_where=CLOSURES,
        ),
        # A charge is refunded at most once; only refunds carry refund_of_id.
        Index(
            "uq_credits_ledger_refund_of_id",
            "refund_of_id",
            unique=True,
            postgresql_where=text("refund_of_id IS NOT NULL"),
            sqlite_where=text("refund_of_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(always=False), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("users.id", ondelete="RESTRICT"), nullable=False
    )
    entry_type: Mapped[EntryType] = mapped_column(ledger_entry_type_enum, nullable=False)
    source: Mapped[LedgerSource] = mapped_column(ledger_source_enum, nullable=False)
    operation: Mapped[Operation | None] = mapped_column(ledger_operation_enum)
    amount: Mapped[int] = mapped_column(Integer, nullable=False)
    idempotency_key: Mapped[str] = mapped_column(String(320), nullable=False, unique=True)
    balance_credits_after: Mapped[int] = mapped_column(Integer, nullable=False)
    subscription_ops_used_after: Mapped[int] = mapped_column(Integer, nullable=False)
    freemium_actions_used_after: Mapped[int] = mapped_column(Integer, nullable=False)
    meta: Mapped[dict[str, Any] | None] = mapped_column()
    # A refund points at the charge it reverses; unique, so a charge is refunded at most once.
    refund_of_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("credits_ledger.id", ondelete="RESTRICT")
    )
    # The hold a reserve, capture, release or expiry belongs to.
    hold_key: Mapped[str | None] = mapped_column(
        String(320), ForeignKey("billing_holds.idempotency_key", ondelete="RESTRICT")
    )
    # The grant a grant, expiry or void row is about.
    grant_key: Mapped[str | None] = mapped_column(
        String(320), ForeignKey("credit_grants.idempotency_key", ondelete="RESTRICT")
    )
    # What a credits movement drew from, or gave back to, each grant:
    # ``[{"grant": key or null (the general balance), "amount": n}]``.
    credit_parts: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonDocument)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
