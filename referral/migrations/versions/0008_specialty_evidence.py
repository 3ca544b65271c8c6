"""specialty evidence (offered / not offered, with a source); referral reach and why

Revision ID: 0008_specialty_evidence
Revises: 0007_directory_revision
Create Date: 2026-12-04 16:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0008_specialty_evidence"
down_revision: str | None = "0007_directory_revision"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("clinic_specialty", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("offered", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(
            sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )
    with op.batch_alter_table("referral", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reach_km", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("reach_basis", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True)
        )
        batch_op.add_column(sa.Column("match_why", sa.JSON(), nullable=True))
    _round_stored_distances()


def _round_stored_distances() -> None:
    """Distances stored before this revision were measured from the patient's exact origin,
    to the metre: rounded to whole kilometres they no longer locate the patient more
    precisely than the stored (coarsened) origin does (docs/matching.md)."""
    referral = sa.table(
        "referral",
        sa.column("id", sa.String()),
        sa.column("match_distance_km", sa.Float()),
        sa.column("alternatives", sa.JSON()),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(referral.c.id, referral.c.match_distance_km, referral.c.alternatives)
    ).all()
    for referral_id, distance, alternatives in rows:
        rounded = [
            {**item, "distance_km": float(round(item["distance_km"]))}
            if isinstance(item, dict) and isinstance(item.get("distance_km"), int | float)
            else item
            for item in alternatives or []
        ]
        connection.execute(
            sa.update(referral)
            .where(referral.c.id == referral_id)
            .values(
                match_distance_km=None if distance is None else float(round(distance)),
                alternatives=rounded,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("referral", schema=None) as batch_op:
        batch_op.drop_column("match_why")
        batch_op.drop_column("reach_basis")
        batch_op.drop_column("reach_km")
    with op.batch_alter_table("clinic_specialty", schema=None) as batch_op:
        batch_op.drop_column("source")
        batch_op.drop_column("offered")
