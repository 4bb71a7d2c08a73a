"""Forget the 404s that grants and subscription activations remembered.

Revision ID: 0008_forget_grant_404s
Revises: 0007_credit_grants
Create Date: 2026-12-03

Until this release every keyed 404 (``user_not_found``) was the key's outcome for good. A
grant's or a subscription activation's no longer is: money paid for an account not opened yet
must go through under the same key (a payment's id) once ``billing.open_account`` opened it.
The answers remembered before would replay the 404 for ever, so they are deleted; a charge's
or a reserve's 404 stays (that job was refused).

Downgrade deletes nothing and restores nothing: a forgotten 404 is a key with no outcome,
which the previous release answers as a first request, as it answers any new key.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008_forget_grant_404s"
down_revision: str | None = "0007_credit_grants"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The operations a grant (``grant``, ``grant:<terms>``) and an activation
# (``subscription:<tier>``) are remembered under.
OPERATIONS = "(operation = 'grant' OR operation LIKE 'grant:%' OR operation LIKE 'subscription:%')"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        error = "response->>'error'"
    else:
        error = "json_extract(response, '$.error')"
    op.execute(
        f"DELETE FROM billing_requests WHERE {OPERATIONS} AND ledger_id IS NULL"
        f" AND {error} = 'user_not_found'"
    )


def downgrade() -> None:
    pass
