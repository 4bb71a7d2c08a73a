"""Balance events: the outbox the relay publishes to the product's queue.

Revision ID: 0005_events
Revises: 0004_holds
Create Date: 2026-11-30

``billing_events`` keeps one row per event, written in the transaction of the movement that
caused it and marked when published. ``users`` gains an index on ``subscription_end`` for the
sweep that announces subscriptions about to end and ended; on PostgreSQL it is built
CONCURRENTLY, outside the migration's transaction, so charges go on writing meanwhile.

Downgrade refuses while an event is unpublished: the product has not heard of it yet.
Published events are notifications already delivered, and are dropped with the table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_events"
down_revision: str | None = "0004_holds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENT_TYPES = (
    "credits.low",
    "credits.depleted",
    "freemium.exhausted",
    "subscription.exhausted",
    "subscription.expiring",
    "subscription.expired",
    "hold.expired",
)
PENDING = sa.text("published_at IS NULL")
PUBLISHED = sa.text("published_at IS NOT NULL")
HAS_END = sa.text("subscription_end IS NOT NULL")


def _bigint() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    event_type = sa.Enum(*EVENT_TYPES, name="billing_event_type_enum", create_constraint=True)
    if postgresql:
        event_type.create(bind, checkfirst=False)
        event_type = sa.Enum(*EVENT_TYPES, name="billing_event_type_enum", create_type=False)
    op.create_table(
        "billing_events",
        sa.Column("id", _bigint(), sa.Identity(always=False), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("type", event_type, nullable=False),
        sa.Column("user_id", _bigint(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("subject_at", sa.DateTime(timezone=True)),
        sa.Column(
            "data",
            sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        sa.Column("kept_until", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_billing_events"),
        sa.UniqueConstraint("event_id", name="uq_billing_events_event_id"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_billing_events_user_id_users", ondelete="RESTRICT"
        ),
    )
    op.create_index(
        "ix_billing_events_user_id_type", "billing_events", ["user_id", "type", "subject_at"]
    )
    op.create_index(
        "ix_billing_events_pending_user_id",
        "billing_events",
        ["user_id", "id"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )
    op.create_index(
        "ix_billing_events_published_at",
        "billing_events",
        ["published_at"],
        postgresql_where=PUBLISHED,
        sqlite_where=PUBLISHED,
    )
    if postgresql:
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_users_subscription_end",
                "users",
                ["subscription_end"],
                postgresql_where=HAS_END,
                postgresql_concurrently=True,
                if_not_exists=True,
            )
    else:
        op.create_index(
            "ix_users_subscription_end", "users", ["subscription_end"], sqlite_where=HAS_END
        )


def downgrade() -> None:
    bind = op.get_bind()
    pending = bind.execute(
        sa.text("SELECT count(*) FROM billing_events WHERE published_at IS NULL")
    ).scalar_one()
    if pending:
        raise RuntimeError(
            f"billing_events holds {pending} unpublished events; publish them"
            " (`billing events --pending`, the relay) before downgrading"
        )
    op.drop_index("ix_users_subscription_end", table_name="users")
    op.drop_index("ix_billing_events_published_at", table_name="billing_events")
    op.drop_index("ix_billing_events_pending_user_id", table_name="billing_events")
    op.drop_index("ix_billing_events_user_id_type", table_name="billing_events")
    op.drop_table("billing_events")
    if bind.dialect.name == "postgresql":
        sa.Enum(name="billing_event_type_enum").drop(bind, checkfirst=False)
