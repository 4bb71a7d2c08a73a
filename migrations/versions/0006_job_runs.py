"""The last run of each periodic job, for operators and the metrics.

Revision ID: 0006_job_runs
Revises: 0005_events
Create Date: 2026-11-30

``billing_job_runs`` keeps one row per job (the reset, the hold expiry, the audit, the relay's
sweeps): when it last succeeded and what it answered. Every worker's ``/metrics`` reads it, so
the beat's freshness is the same whichever worker ran the job and whichever is scraped.
Nothing else depends on it; downgrade drops it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_job_runs"
down_revision: str | None = "0005_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "billing_job_runs",
        sa.Column("job", sa.String(64), nullable=False),
        sa.Column("succeeded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "result",
            sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("job", name="pk_billing_job_runs"),
    )


def downgrade() -> None:
    op.drop_table("billing_job_runs")
