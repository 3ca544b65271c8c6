"""row revisions: the directory revision at which each clinic and location last changed

Revision ID: 0009_row_revisions
Revises: 0008_specialty_evidence
Create Date: 2026-12-04 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_row_revisions"
down_revision: str | None = "0008_specialty_evidence"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written before this revision read as changed at revision 0: every read model is
    # built from the whole directory once, and only later changes are read as deltas.
    for table in ("clinic", "location"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("revision", sa.Integer(), nullable=False, server_default="0")
            )
            batch_op.create_index(batch_op.f(f"ix_{table}_revision"), ["revision"], unique=False)


def downgrade() -> None:
    for table in ("location", "clinic"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_revision"))
            batch_op.drop_column("revision")
