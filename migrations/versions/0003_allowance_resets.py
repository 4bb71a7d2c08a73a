"""Allowance resets get a journal of their own, out of the credits ledger.

Revision ID: 0003_allowance_resets
Revises: 0002_refunds_and_internal_keys
Create Date: 2026-11-26

A reset moves no money, yet as a ledger row it paid for a sequence value, three index entries
and a foreign-key check: six times the cost of the UPDATE that does the reset. From here on a
reset is recorded in ``allowance_resets``, keyed by (account, allowance, period start), which
is also what makes it idempotent per period. The reset rows already in the ledger stay there
(the ledger is append-only) and are copied into the journal, so the journal holds every reset.

Downgrade drops the journal, but refuses while it holds resets recorded after this upgrade:
those exist nowhere else, and discarding an audit record is not a downgrade's call.
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0003_allowance_resets"
down_revision: str | None = "0002_refunds_and_internal_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Reset rows in the ledger are keyed billing:reset:<source>:<user id>:<period start, epoch µs>.
KEY_PREFIX = "billing:reset:"


def _source_enum() -> sa.Enum:
    return sa.Enum(
        "subscription",
        "freemium",
        "credits",
        "admin",
        name="ledger_source_enum",
        create_type=False,
        create_constraint=True,
    )


def _bigint() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "allowance_resets",
        sa.Column("user_id", _bigint(), nullable=False, autoincrement=False),
        sa.Column("source", _source_enum(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("restored", sa.Integer(), nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("user_id", "source", "period_start", name="pk_allowance_resets"),
        sa.CheckConstraint(
            "source IN ('freemium', 'subscription')",
            name=op.f("ck_allowance_resets_source_is_allowance"),
        ),
        sa.CheckConstraint("restored > 0", name=op.f("ck_allowance_resets_restored_positive")),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(
            f"""
            INSERT INTO allowance_resets (user_id, source, period_start, restored, recorded_at)
            SELECT user_id, source,
                   timestamptz '1970-01-01 00:00:00+00'
                       + split_part(idempotency_key, ':', 5)::bigint * interval '1 microsecond',
                   amount, created_at
            FROM credits_ledger
            WHERE entry_type = 'reset' AND amount > 0
              AND idempotency_key LIKE '{KEY_PREFIX}%'
            """
        )
        return
    journal = sa.table(
        "allowance_resets",
        sa.column("user_id"),
        sa.column("source"),
        sa.column("period_start", sa.DateTime(timezone=True)),
        sa.column("restored"),
        # Copied as stored: SQLite keeps the ledger's timestamp as text already.
        sa.column("recorded_at"),
    )
    rows = bind.execute(
        sa.text(
            "SELECT user_id, source, idempotency_key, amount, created_at FROM credits_ledger"
            " WHERE entry_type = 'reset' AND amount > 0"
        )
    ).all()
    records = [
        {
            "user_id": row.user_id,
            "source": row.source,
            "period_start": _period_start(row.idempotency_key),
            "restored": row.amount,
            "recorded_at": row.created_at,
        }
        for row in rows
        if row.idempotency_key.startswith(KEY_PREFIX)
    ]
    if records:
        op.bulk_insert(journal, records)


def _period_start(key: str) -> datetime:
    return EPOCH + timedelta(microseconds=int(key.split(":")[4]))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        only_here = bind.execute(
            sa.text(
                f"""
                SELECT count(*) FROM allowance_resets AS r
                WHERE NOT EXISTS (
                    SELECT 1 FROM credits_ledger AS l
                    WHERE l.idempotency_key = '{KEY_PREFIX}' || r.source || ':' || r.user_id
                        || ':' || (extract(epoch FROM r.period_start) * 1000000)::bigint)
                """
            )
        ).scalar_one()
    else:
        keys = set(
            bind.execute(
                sa.text("SELECT idempotency_key FROM credits_ledger WHERE entry_type = 'reset'")
            ).scalars()
        )
        journal = bind.execute(
            sa.select(
                sa.column("user_id"), sa.column("source"), sa.column("period_start")
            ).select_from(sa.table("allowance_resets"))
        ).all()
        only_here = sum(
            1
            for user_id, source, start in journal
            if _ledger_key(user_id, source, start) not in keys
        )
    if only_here:
        raise RuntimeError(
            f"allowance_resets holds {only_here} resets recorded after revision 0003;"
            " they exist nowhere else, so it is not dropped"
        )
    op.drop_table("allowance_resets")


def _ledger_key(user_id: int, source: str, period_start: datetime | str) -> str:
    if isinstance(period_start, str):
        period_start = datetime.fromisoformat(period_start)
    if period_start.tzinfo is None:
        period_start = period_start.replace(tzinfo=UTC)
    micros = (period_start - EPOCH) // timedelta(microseconds=1)
    return f"{KEY_PREFIX}{source}:{user_id}:{micros}"
