"""Credit grants: credits that expire, drawn in an order the product chooses.

Revision ID: 0007_credit_grants
Revises: 0006_job_runs
Create Date: 2026-12-03

``credit_grants`` keeps one row per grant: its amount, what is left of it (net of what open
holds keep), when it expires, its priority and category, and whether it is still active. The
part of an account's balance no active grant accounts for is its *general* balance, so no
balance is migrated: every existing account is all general balance.

The ledger gains two entry types (``expiry``, ``void``), ``grant_key`` (the grant a grant,
expiry or void row is about) and ``credit_parts`` (what a credits movement drew from, or gave
back to, each grant: ``[{"grant": key or null, "amount": n}]``); a hold keeps its parts in
``billing_holds.credit_parts``. Two event types are added: ``credits.expiring`` and
``credits.expired``.

On PostgreSQL the enum labels are added outside the migration's transaction (a label added in
a transaction cannot be used before it commits); the ledger's new columns are nullable without
a default (a catalogue change, no rewrite) and its CHECK is added NOT VALID, then validated.

Downgrade refuses while any grant exists: grants and their ledger rows exist nowhere else.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_credit_grants"
down_revision: str | None = "0006_job_runs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_ENTRY_TYPES = (
    "charge",
    "refund",
    "grant",
    "reset",
    "subscription",
    "hold",
    "capture",
    "release",
    "expire",
)
GRANT_ENTRY_TYPES = ("expiry", "void")
OLD_EVENT_TYPES = (
    "credits.low",
    "credits.depleted",
    "freemium.exhausted",
    "subscription.exhausted",
    "subscription.expiring",
    "subscription.expired",
    "hold.expired",
)
GRANT_EVENT_TYPES = ("credits.expiring", "credits.expired")
CATEGORIES = ("paid", "promotional")
GRANT_STATUSES = ("active", "expired", "voided")

GRANT_CHECK = "ck_credits_ledger_grant_entry_names_its_grant"
GRANT_RULE = "entry_type NOT IN ('expiry', 'void') OR grant_key IS NOT NULL"
GRANT_FK = "fk_credits_ledger_grant_key_credit_grants"
ACTIVE = sa.text("status = 'active'")
CLOSURES = sa.text("entry_type IN ('expiry', 'void')")


def _enum(name: str, labels: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*labels, name=name, create_type=False, create_constraint=True)


def _bigint() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        with op.get_context().autocommit_block():
            for label in GRANT_ENTRY_TYPES:
                op.execute(f"ALTER TYPE ledger_entry_type_enum ADD VALUE IF NOT EXISTS '{label}'")
            for label in GRANT_EVENT_TYPES:
                op.execute(f"ALTER TYPE billing_event_type_enum ADD VALUE IF NOT EXISTS '{label}'")
        sa.Enum(*CATEGORIES, name="credit_category_enum").create(op.get_bind(), checkfirst=False)
        sa.Enum(*GRANT_STATUSES, name="grant_status_enum").create(op.get_bind(), checkfirst=False)

    op.create_table(
        "credit_grants",
        sa.Column("id", _bigint(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", _bigint(), nullable=False),
        sa.Column("idempotency_key", sa.String(320), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("priority", sa.SmallInteger(), nullable=False, server_default=sa.text("50")),
        sa.Column(
            "category",
            _enum("credit_category_enum", CATEGORIES),
            nullable=False,
            server_default=sa.text("'paid'"),
        ),
        sa.Column(
            "status",
            _enum("grant_status_enum", GRANT_STATUSES),
            nullable=False,
            server_default=sa.text("'active'"),
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expiring_notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_credit_grants"),
        sa.UniqueConstraint("idempotency_key", name="uq_credit_grants_idempotency_key"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_credit_grants_user_id_users", ondelete="RESTRICT"
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_credit_grants_amount_positive")),
        sa.CheckConstraint(
            "remaining >= 0 AND remaining <= amount", name=op.f("ck_credit_grants_remaining_within")
        ),
        sa.CheckConstraint(
            "priority BETWEEN 0 AND 100", name=op.f("ck_credit_grants_priority_within")
        ),
        sa.CheckConstraint(
            "(status = 'active') = (closed_at IS NULL)",
            name=op.f("ck_credit_grants_closed_when_closed"),
        ),
        sa.CheckConstraint(
            "status = 'active' OR remaining = 0", name=op.f("ck_credit_grants_closed_hold_nothing")
        ),
    )
    # An account's live grants (every credits movement reads them under the lock), and the
    # due ones of all accounts (the expiry sweep). Closed grants are most rows and neither.
    op.create_index(
        "ix_credit_grants_active_user_id",
        "credit_grants",
        ["user_id", "priority", "expires_at", "id"],
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    op.create_index(
        "ix_credit_grants_active_expires_at",
        "credit_grants",
        ["expires_at"],
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )

    if postgresql:
        op.add_column("credits_ledger", sa.Column("grant_key", sa.String(320)))
        op.add_column("credits_ledger", sa.Column("credit_parts", _json()))
        op.add_column("billing_holds", sa.Column("credit_parts", _json()))
        op.execute(
            f"ALTER TABLE credits_ledger ADD CONSTRAINT {GRANT_FK} FOREIGN KEY (grant_key)"
            " REFERENCES credit_grants (idempotency_key) ON DELETE RESTRICT NOT VALID"
        )
        op.execute(
            f"ALTER TABLE credits_ledger ADD CONSTRAINT {GRANT_CHECK}"
            f" CHECK ({GRANT_RULE}) NOT VALID"
        )
        op.execute(f"ALTER TABLE credits_ledger VALIDATE CONSTRAINT {GRANT_FK}")
        op.execute(f"ALTER TABLE credits_ledger VALIDATE CONSTRAINT {GRANT_CHECK}")
        # No row matches it yet: built at once, whatever the ledger's size.
        op.create_index(
            "ix_credits_ledger_closures",
            "credits_ledger",
            ["entry_type", "amount"],
            postgresql_where=CLOSURES,
        )
        return
    with op.batch_alter_table("billing_holds") as batch:
        batch.add_column(sa.Column("credit_parts", _json()))
    with op.batch_alter_table("billing_events") as batch:
        batch.alter_column(
            "type",
            existing_type=_enum("billing_event_type_enum", OLD_EVENT_TYPES),
            type_=_enum("billing_event_type_enum", OLD_EVENT_TYPES + GRANT_EVENT_TYPES),
            existing_nullable=False,
        )
    with op.batch_alter_table("credits_ledger") as batch:
        batch.add_column(sa.Column("grant_key", sa.String(320)))
        batch.add_column(sa.Column("credit_parts", _json()))
        batch.create_foreign_key(
            GRANT_FK, "credit_grants", ["grant_key"], ["idempotency_key"], ondelete="RESTRICT"
        )
        batch.create_check_constraint(op.f(GRANT_CHECK), GRANT_RULE)
        batch.alter_column(
            "entry_type",
            existing_type=_enum("ledger_entry_type_enum", OLD_ENTRY_TYPES),
            type_=_enum("ledger_entry_type_enum", OLD_ENTRY_TYPES + GRANT_ENTRY_TYPES),
            existing_nullable=False,
        )
    op.create_index(
        "ix_credits_ledger_closures",
        "credits_ledger",
        ["entry_type", "amount"],
        sqlite_where=CLOSURES,
    )


def _recreate_enum(table: str, column: str, name: str, labels: tuple[str, ...]) -> None:
    # PostgreSQL cannot drop an enum label: the type is made again without them.
    op.execute(f"ALTER TYPE {name} RENAME TO {name}_0007")
    sa.Enum(*labels, name=name).create(op.get_bind(), checkfirst=False)
    op.execute(
        f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {name} USING {column}::text::{name}"
    )
    op.execute(f"DROP TYPE {name}_0007")


def downgrade() -> None:
    bind = op.get_bind()
    grants = bind.execute(sa.text("SELECT count(*) FROM credit_grants")).scalar_one()
    if grants:
        raise RuntimeError(
            f"credit_grants holds {grants} grants recorded after revision 0007;"
            " they and their ledger rows exist nowhere else, so they are not dropped"
        )
    events = bind.execute(
        sa.text("SELECT count(*) FROM billing_events WHERE type IN :types").bindparams(
            sa.bindparam("types", expanding=True)
        ),
        {"types": list(GRANT_EVENT_TYPES)},
    ).scalar_one()
    if events:
        raise RuntimeError(f"billing_events holds {events} grant events recorded after 0007")
    op.drop_index("ix_credits_ledger_closures", table_name="credits_ledger")
    if bind.dialect.name == "postgresql":
        op.drop_constraint(op.f(GRANT_CHECK), "credits_ledger", type_="check")
        op.drop_constraint(op.f(GRANT_FK), "credits_ledger", type_="foreignkey")
        op.drop_column("credits_ledger", "credit_parts")
        op.drop_column("credits_ledger", "grant_key")
        op.drop_column("billing_holds", "credit_parts")
        # CHECKs that compare entry_type with a label of the old type go and come back with it.
        checks = {
            "ck_credits_ledger_refund_links_its_charge": (
                "(entry_type = 'refund') = (refund_of_id IS NOT NULL)"
            ),
            "ck_credits_ledger_hold_entry_links_its_hold": (
                "(entry_type IN ('hold', 'capture', 'release', 'expire')) = (hold_key IS NOT NULL)"
            ),
        }
        for name in checks:
            op.drop_constraint(op.f(name), "credits_ledger", type_="check")
        _recreate_enum("credits_ledger", "entry_type", "ledger_entry_type_enum", OLD_ENTRY_TYPES)
        for name, rule in checks.items():
            op.create_check_constraint(op.f(name), "credits_ledger", rule)
        _recreate_enum("billing_events", "type", "billing_event_type_enum", OLD_EVENT_TYPES)
    else:
        with op.batch_alter_table("credits_ledger") as batch:
            batch.drop_constraint(op.f(GRANT_CHECK), type_="check")
            batch.drop_constraint(GRANT_FK, type_="foreignkey")
            batch.drop_column("credit_parts")
            batch.drop_column("grant_key")
            batch.alter_column(
                "entry_type",
                existing_type=_enum("ledger_entry_type_enum", OLD_ENTRY_TYPES + GRANT_ENTRY_TYPES),
                type_=_enum("ledger_entry_type_enum", OLD_ENTRY_TYPES),
                existing_nullable=False,
            )
        with op.batch_alter_table("billing_events") as batch:
            batch.alter_column(
                "type",
                existing_type=_enum("billing_event_type_enum", OLD_EVENT_TYPES + GRANT_EVENT_TYPES),
                type_=_enum("billing_event_type_enum", OLD_EVENT_TYPES),
                existing_nullable=False,
            )
        # Not a batch: recreating billing_holds would drop a table the ledger refers to.
        # SQLite drops a plain column in place (3.35 and later).
        op.execute("ALTER TABLE billing_holds DROP COLUMN credit_parts")
    op.drop_index("ix_credit_grants_active_expires_at", table_name="credit_grants")
    op.drop_index("ix_credit_grants_active_user_id", table_name="credit_grants")
    op.drop_table("credit_grants")
    if bind.dialect.name == "postgresql":
        sa.Enum(name="grant_status_enum").drop(bind, checkfirst=False)
        sa.Enum(name="credit_category_enum").drop(bind, checkfirst=False)
