"""kept export records compressed with lz4 on PostgreSQL

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 18:15:00

A page or an export of kept records reads each body out of TOAST storage, decompressed. With
PostgreSQL's default (pglz), reading the bodies of a 10,000-record oasst page (26 MB) took
37-42 ms, against 25 ms with lz4, for the same size on disk (485 against 501 MB for the oasst
and SFT rows at 400k events). Rows written before keep pglz until they are built again. Servers
built without lz4, and SQLite (which does not compress), are left as they are.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_HAS_LZ4 = text(
    "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
)


def _set_compression(method: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql" and bind.execute(_HAS_LZ4).scalar():
        op.execute(f"ALTER TABLE turn_records ALTER COLUMN body SET COMPRESSION {method}")


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("pglz")
