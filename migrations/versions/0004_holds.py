"""Holds: a reservation taken before a job, captured, released or expired after it.

Revision ID: 0004_holds
Revises: 0003_allowance_resets
Create Date: 2026-11-30

``billing_holds`` keeps one row per hold; the ledger gains four entry types (hold, capture,
release, expire) and ``hold_key``, which links those rows to their hold.

On PostgreSQL the new enum labels are added outside the migration's transaction (a label
added in a transaction cannot be used before it commits), and the ledger's new CHECK and
foreign key are added NOT VALID, then validated: validating scans the ledger under a lock
that lets charges go on writing, where a plain ADD CONSTRAINT would block them for the scan.

Downgrade refuses while any hold exists: holds and their ledger rows exist nowhere else, and
discarding money records is not a downgrade's call.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_holds"
down_revision: str | None = "0003_allowance_resets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_ENTRY_TYPES = ("charge", "refund", "grant", "reset", "subscription")
HOLD_ENTRY_TYPES = ("hold", "capture", "release", "expire")
HOLD_STATUSES = ("held", "captured", "released", "expired")
OPERATIONS = ("generation", "assistant")
SOURCES = ("subscription", "freemium", "credits", "admin")

LINK_CHECK = "ck_credits_ledger_hold_entry_links_its_hold"
LINK_RULE = "(entry_type IN ('hold', 'capture', 'release', 'expire')) = (hold_key IS NOT NULL)"
LINK_FK = "fk_credits_ledger_hold_key_billing_holds"
REFUND_CHECK = "ck_credits_ledger_refund_links_its_charge"  # as revision 0002 made it
REFUND_RULE = "(entry_type = 'refund') = (refund_of_id IS NOT NULL)"
OPEN = sa.text("status = 'held'")


def _enum(name: str, labels: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*labels, name=name, create_type=False, create_constraint=True)


def _bigint() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        with op.get_context().autocommit_block():
            for label in HOLD_ENTRY_TYPES:
                op.execute(f"ALTER TYPE ledger_entry_type_enum ADD VALUE IF NOT EXISTS '{label}'")
        sa.Enum(*HOLD_STATUSES, name="hold_status_enum").create(op.get_bind(), checkfirst=False)

    op.create_table(
        "billing_holds",
        sa.Column("idempotency_key", sa.String(320), nullable=False),
        sa.Column("user_id", _bigint(), nullable=False),
        sa.Column("operation", _enum("ledger_operation_enum", OPERATIONS), nullable=False),
        sa.Column("source", _enum("ledger_source_enum", SOURCES), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            _enum("hold_status_enum", HOLD_STATUSES),
            nullable=False,
            server_default="held",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True)),
        sa.Column("captured", sa.Integer()),
        sa.PrimaryKeyConstraint("idempotency_key", name="pk_billing_holds"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_billing_holds_user_id_users", ondelete="RESTRICT"
        ),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_billing_holds_amount_non_negative")),
        sa.CheckConstraint(
            "expires_at > created_at", name=op.f("ck_billing_holds_expires_after_created")
        ),
        sa.CheckConstraint(
            "(status = 'held') = (settled_at IS NULL)",
            name=op.f("ck_billing_holds_settled_when_closed"),
        ),
        sa.CheckConstraint(
            "(status = 'captured') = (captured IS NOT NULL)",
            name=op.f("ck_billing_holds_captured_when_captured"),
        ),
        sa.CheckConstraint(
            "captured >= 0 AND captured <= amount",
            name=op.f("ck_billing_holds_captured_within_amount"),
        ),
    )
    for name, column in (
        ("ix_billing_holds_open_user_id", "user_id"),
        ("ix_billing_holds_open_expires_at", "expires_at"),
    ):
        op.create_index(name, "billing_holds", [column], postgresql_where=OPEN, sqlite_where=OPEN)

    if postgresql:
        # A nullable column without a default is a catalogue change: no rewrite, no scan.
        op.add_column("credits_ledger", sa.Column("hold_key", sa.String(320)))
        op.execute(
            f"ALTER TABLE credits_ledger ADD CONSTRAINT {LINK_FK} FOREIGN KEY (hold_key)"
            " REFERENCES billing_holds (idempotency_key) ON DELETE RESTRICT NOT VALID"
        )
        op.execute(
            f"ALTER TABLE credits_ledger ADD CONSTRAINT {LINK_CHECK} CHECK ({LINK_RULE}) NOT VALID"
        )
        op.execute(f"ALTER TABLE credits_ledger VALIDATE CONSTRAINT {LINK_FK}")
        op.execute(f"ALTER TABLE credits_ledger VALIDATE CONSTRAINT {LINK_CHECK}")
        return
    with op.batch_alter_table("credits_ledger") as batch:
        batch.add_column(sa.Column("hold_key", sa.String(320)))
        batch.create_foreign_key(
            LINK_FK, "billing_holds", ["hold_key"], ["idempotency_key"], ondelete="RESTRICT"
        )
        batch.create_check_constraint(op.f(LINK_CHECK), LINK_RULE)
        batch.alter_column(
            "entry_type",
            existing_type=_enum("ledger_entry_type_enum", OLD_ENTRY_TYPES),
            type_=_enum("ledger_entry_type_enum", OLD_ENTRY_TYPES + HOLD_ENTRY_TYPES),
            existing_nullable=False,
        )


def downgrade() -> None:
    bind = op.get_bind()
    holds = bind.execute(sa.text("SELECT count(*) FROM billing_holds")).scalar_one()
    if holds:
        raise RuntimeError(
            f"billing_holds holds {holds} holds recorded after revision 0004;"
            " they and their ledger rows exist nowhere else, so they are not dropped"
        )
    if bind.dialect.name == "postgresql":
        op.drop_constraint(op.f(LINK_CHECK), "credits_ledger", type_="check")
        op.drop_constraint(LINK_FK, "credits_ledger", type_="foreignkey")
        op.drop_column("credits_ledger", "hold_key")
        # PostgreSQL cannot drop an enum label: the type is made again without them.
        # The refund CHECK compares entry_type with a label of the old type: it goes and comes
        # back with the type.
        op.drop_constraint(op.f(REFUND_CHECK), "credits_ledger", type_="check")
        op.execute("ALTER TYPE ledger_entry_type_enum RENAME TO ledger_entry_type_enum_0004")
        sa.Enum(*OLD_ENTRY_TYPES, name="ledger_entry_type_enum").create(bind, checkfirst=False)
        op.execute(
            "ALTER TABLE credits_ledger ALTER COLUMN entry_type TYPE ledger_entry_type_enum"
            " USING entry_type::text::ledger_entry_type_enum"
        )
        op.execute("DROP TYPE ledger_entry_type_enum_0004")
        op.create_check_constraint(op.f(REFUND_CHECK), "credits_ledger", REFUND_RULE)
    else:
        with op.batch_alter_table("credits_ledger") as batch:
            batch.drop_constraint(op.f(LINK_CHECK), type_="check")
            batch.alter_column(
                "entry_type",
                existing_type=_enum("ledger_entry_type_enum", OLD_ENTRY_TYPES + HOLD_ENTRY_TYPES),
                type_=_enum("ledger_entry_type_enum", OLD_ENTRY_TYPES),
                existing_nullable=False,
            )
            batch.drop_constraint(LINK_FK, type_="foreignkey")
            batch.drop_column("hold_key")
    op.drop_index("ix_billing_holds_open_expires_at", table_name="billing_holds")
    op.drop_index("ix_billing_holds_open_user_id", table_name="billing_holds")
    op.drop_table("billing_holds")
    if bind.dialect.name == "postgresql":
        sa.Enum(name="hold_status_enum").drop(bind, checkfirst=False)
