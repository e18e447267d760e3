"""conversations, prompt snapshots, message tree

Revision ID: 0001
Revises:
Create Date: 2026-11-26 04:05:59.134796
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transport", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=128), nullable=False),
        sa.Column("persona", sa.String(length=64), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("transport", "scope", "persona"),
    )
    op.create_table(
        "prompt_snapshots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("persona", sa.String(length=64), nullable=False),
        sa.Column("persona_version", sa.String(length=64), nullable=False),
        sa.Column("memories", sa.JSON(), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("author_id", sa.String(length=128), nullable=False),
        sa.Column("author_name", sa.String(length=128), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("prompt_snapshot_id", sa.Integer(), nullable=True),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["parent_id"], ["messages.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["prompt_snapshot_id"], ["prompt_snapshots.id"], ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_author_id", ["author_id"], unique=False)
        batch_op.create_index(
            "ix_messages_conversation_id_id", ["conversation_id", "id"], unique=False
        )
        batch_op.create_index("ix_messages_parent_id", ["parent_id"], unique=False)

    op.create_table(
        "channel_settings",
        sa.Column("channel_key", sa.String(length=64), nullable=False),
        sa.Column("guild_key", sa.String(length=64), nullable=True),
        sa.Column("persona", sa.String(length=64), nullable=True),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("channel_key"),
    )
    op.create_index("ix_channel_settings_guild_key", "channel_settings", ["guild_key"])


def downgrade() -> None:
    op.drop_index("ix_channel_settings_guild_key", table_name="channel_settings")
    op.drop_table("channel_settings")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_parent_id")
        batch_op.drop_index("ix_messages_conversation_id_id")
        batch_op.drop_index("ix_messages_author_id")

    op.drop_table("messages")
    op.drop_table("prompt_snapshots")
    op.drop_table("conversations")
