"""erasure tombstones for trainers (the erasure feed) and revocable leases

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 09:00:00

``erasure_tombstones`` keeps one row per record an erased user's data could have given, written
in the erasure's transaction and kept after the rows are gone; the trainer API serves it as the
erasure feed. ``leases.revoked_at`` marks a lease holding an erased record: it can no longer be
acknowledged. Nothing existing changes; the downgrade drops both.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasure_tombstones",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("record_key", sa.String(length=80), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.add_column("leases", sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # SQLite 3.35+ drops a column in place (no batch copy of a table others point at).
    op.execute("ALTER TABLE leases DROP COLUMN revoked_at")
    op.drop_table("erasure_tombstones")
