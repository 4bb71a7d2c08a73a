"""Refunds link to the charge they reverse; internal keys get room for their prefix.

Revision ID: 0002_refunds_and_internal_keys
Revises: 0001_billing_core
Create Date: 2026-11-26

A refund's ledger row points at its charge through ``refund_of_id``, unique, so the database
itself refuses a second refund of one charge. Refunds and resets carry internal idempotency keys
(``billing:refund:<charge key>``), longer than the 255 characters a producer may send.
A subscription's outcome is remembered under ``subscription:<tier>``, so the operation column
widens too. Widening a varchar is a catalogue change in PostgreSQL: no table rewrite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_refunds_and_internal_keys"
down_revision: str | None = "0001_billing_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY_TABLES = ("credits_ledger", "billing_requests")


def _bigint() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    for table in KEY_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "idempotency_key",
                existing_type=sa.String(255),
                type_=sa.String(320),
                existing_nullable=False,
            )
    with op.batch_alter_table("billing_requests") as batch:
        batch.alter_column(
            "operation", existing_type=sa.String(32), type_=sa.String(96), existing_nullable=False
        )
    with op.batch_alter_table("credits_ledger") as batch:
        batch.add_column(sa.Column("refund_of_id", _bigint(), nullable=True))
        batch.create_foreign_key(
            "fk_credits_ledger_refund_of_id_credits_ledger",
            "credits_ledger",
            ["refund_of_id"],
            ["id"],
            ondelete="RESTRICT",
        )
        batch.create_check_constraint(
            op.f("ck_credits_ledger_refund_links_its_charge"),
            "(entry_type = 'refund') = (refund_of_id IS NOT NULL)",
        )
    # Partial: only refunds carry the column, and every other ledger row (charges, resets)
    # would otherwise pay for an index entry of its NULL.
    op.create_index(
        "uq_credits_ledger_refund_of_id",
        "credits_ledger",
        ["refund_of_id"],
        unique=True,
        postgresql_where=sa.text("refund_of_id IS NOT NULL"),
        sqlite_where=sa.text("refund_of_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_credits_ledger_refund_of_id", table_name="credits_ledger")
    with op.batch_alter_table("credits_ledger") as batch:
        batch.drop_constraint(op.f("ck_credits_ledger_refund_links_its_charge"), type_="check")
        batch.drop_constraint("fk_credits_ledger_refund_of_id_credits_ledger", type_="foreignkey")
        batch.drop_column("refund_of_id")
    with op.batch_alter_table("billing_requests") as batch:
        batch.alter_column(
            "operation", existing_type=sa.String(96), type_=sa.String(32), existing_nullable=False
        )
    bind = op.get_bind()
    for table in reversed(KEY_TABLES):
        # A refund or reset key may not fit the narrower column; deleting money records to make
        # it fit is not a downgrade's call, so refuse instead.
        too_long = bind.execute(
            sa.text(f"SELECT count(*) FROM {table} WHERE length(idempotency_key) > 255")
        ).scalar_one()
        if too_long:
            raise RuntimeError(f"{table} holds {too_long} keys longer than 255 characters")
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "idempotency_key",
                existing_type=sa.String(320),
                type_=sa.String(255),
                existing_nullable=False,
            )
