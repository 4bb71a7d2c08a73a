from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, Integer, PrimaryKeyConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId
from models.enums import LedgerSource, ledger_source_enum


class AllowanceReset(Base):
    """What one reset gave back: the allowance, the period it started, how much was restored.

    Resets move no money, so they are kept out of the credits ledger: a ledger row costs a
    sequence value, three index entries and a foreign-key check, which made the beat's bulk
    reset six times the price of the UPDATE itself. The primary key is the idempotency key
    here: an allowance's period starts once, so a period can be recorded only once, by the
    beat or by the lazy reset inside a charge, whichever took the account's lock first.
    There is no foreign key to ``users`` for the same reason; accounts are never deleted
    (the ledger's foreign key already forbids it for any account with history).
    """

    __tablename__ = "allowance_resets"
    __table_args__ = (
        PrimaryKeyConstraint("user_id", "source", "period_start"),
        CheckConstraint("source IN ('freemium', 'subscription')", name="source_is_allowance"),
        CheckConstraint("restored > 0", name="restored_positive"),
    )

    user_id: Mapped[int] = mapped_column(BigId, autoincrement=False)
    source: Mapped[LedgerSource] = mapped_column(ledger_source_enum)
    # The start of the period the reset opened (the account's new ``*_reset_at``).
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    restored: Mapped[int] = mapped_column(Integer, nullable=False)
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
