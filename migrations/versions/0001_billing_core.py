"""Billing core: users, credits_ledger, billing_requests.

Revision ID: 0001_billing_core
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_billing_core"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENUMS = {
    "user_role_enum": ("user", "admin"),
    "ledger_entry_type_enum": ("charge", "refund", "grant", "reset", "subscription"),
    "ledger_source_enum": ("subscription", "freemium", "credits", "admin"),
    "ledger_operation_enum": ("generation", "assistant"),
}


def _enum(name: str) -> sa.Enum:
    # The PostgreSQL type is created once, up front; on SQLite it becomes a CHECK.
    return sa.Enum(*ENUMS[name], name=name, create_type=False, create_constraint=True)


def _bigint() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine:
    from sqlalchemy.dialects.postgresql import JSONB

    return sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for name, labels in ENUMS.items():
            sa.Enum(*labels, name=name).create(bind, checkfirst=False)

    op.create_table(
        "users",
        sa.Column("id", _bigint(), primary_key=True, autoincrement=False),
        sa.Column("role", _enum("user_role_enum"), nullable=False, server_default="user"),
        sa.Column("subscription_type", sa.Text()),
        sa.Column("subscription_end", sa.DateTime(timezone=True)),
        sa.Column("subscription_ops_limit", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("subscription_ops_used", sa.Integer(), nullable=False, server_default="0"),
        sa.Column(
            "subscription_ops_reset_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("freemium_actions_used", sa.Integer(), nullable=False, server_default="0"),
        sa.Column(
            "freemium_reset_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("balance_credits", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.CheckConstraint(
            "balance_credits >= 0", name=op.f("ck_users_balance_credits_non_negative")
        ),
        sa.CheckConstraint(
            "subscription_ops_used >= 0", name=op.f("ck_users_subscription_ops_used_non_negative")
        ),
        sa.CheckConstraint(
            "subscription_ops_limit >= 0", name=op.f("ck_users_subscription_ops_limit_non_negative")
        ),
        sa.CheckConstraint(
            "freemium_actions_used >= 0", name=op.f("ck_users_freemium_actions_used_non_negative")
        ),
    )

    op.create_table(
        "credits_ledger",
        sa.Column("id", _bigint(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", _bigint(), nullable=False),
        sa.Column("entry_type", _enum("ledger_entry_type_enum"), nullable=False),
        sa.Column("source", _enum("ledger_source_enum"), nullable=False),
        sa.Column("operation", _enum("ledger_operation_enum")),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("balance_credits_after", sa.Integer(), nullable=False),
        sa.Column("subscription_ops_used_after", sa.Integer(), nullable=False),
        sa.Column("freemium_actions_used_after", sa.Integer(), nullable=False),
        sa.Column("meta", _json()),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("id", name="pk_credits_ledger"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name="fk_credits_ledger_user_id_users",
            ondelete="RESTRICT",
        ),
        sa.UniqueConstraint("idempotency_key", name="uq_credits_ledger_idempotency_key"),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_credits_ledger_amount_non_negative")),
    )
    op.create_index("ix_credits_ledger_user_id_id", "credits_ledger", ["user_id", "id"])

    op.create_table(
        "billing_requests",
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("user_id", _bigint(), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("cost", sa.Integer()),
        sa.Column("response", _json(), nullable=False),
        sa.Column("ledger_id", _bigint()),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("idempotency_key", name="pk_billing_requests"),
        sa.ForeignKeyConstraint(
            ["ledger_id"],
            ["credits_ledger.id"],
            name="fk_billing_requests_ledger_id_credits_ledger",
            ondelete="RESTRICT",
        ),
    )


def downgrade() -> None:
    op.drop_table("billing_requests")
    op.drop_index("ix_credits_ledger_user_id_id", table_name="credits_ledger")
    op.drop_table("credits_ledger")
    op.drop_table("users")
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for name in reversed(ENUMS):
            sa.Enum(name=name).drop(bind, checkfirst=False)
