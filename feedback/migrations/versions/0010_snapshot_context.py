"""the context message of each prompt snapshot's own turn, read with the history

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 12:00:00

``prompt_snapshots.context`` holds the content of the ``context`` message (triggered lore and
recalled memories) built for the snapshot's turn; the same text is in ``messages``. The history
read joins it, so the next turns' prompts keep each turn's context message in place and stay a
byte-identical prefix of one another. Existing snapshots get ``NULL`` (no backfill): their
turns simply carry no context message in later prompts. The downgrade drops the column.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("prompt_snapshots", sa.Column("context", sa.Text(), nullable=True))


def downgrade() -> None:
    # SQLite 3.35+ drops a column in place (no batch copy of a table others point at).
    op.execute("ALTER TABLE prompt_snapshots DROP COLUMN context")
