from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class JobRun(Base):
    """The last successful run of a periodic job (``billing.jobs.runs``): when, and its answer."""

    __tablename__ = "billing_job_runs"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    succeeded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    result: Mapped[dict[str, Any]] = mapped_column(nullable=False)
