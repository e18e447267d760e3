"""kept export records by kind in turn order (``ix_turn_records_kind``), so exports and pages of a
kind that is built ahead read its kept rows directly

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 13:40:00

With every turn built ahead (:mod:`feedback.exports.ahead`), an export or a page reads the kind's
kept rows in turn order and builds only the queued turns (``_read_kept`` in
:mod:`feedback.exports.tree`). Those reads walk this index instead of every user turn, which for
the preference kinds also skips the turns with one reply without counting their replies.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_turn_records_kind", "turn_records", ["kind", "user_turn_id"])


def downgrade() -> None:
    op.drop_index("ix_turn_records_kind", table_name="turn_records")
