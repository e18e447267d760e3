"""rubric scores on feedback events, leads, the review queue, reviews and gold items

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-09 09:00:00

``feedback_events`` gains ``scores``, ``rubric_version`` and ``unsafe`` (an actor's live rubric
scores, event kind ``score``); ``guild_settings`` gains ``lead_role_id``. New tables:
``review_items`` (finished turns waiting for overlapping reviews), ``review_leases``,
``reviews`` and ``gold_items``. Existing rows keep their values (the new columns are null).

On SQLite the columns go with ``ALTER TABLE ... DROP COLUMN`` (SQLite 3.35 or newer), not
Alembic's batch copy: recreating ``feedback_events`` with foreign keys on would run the
``ON DELETE`` actions of the rows that point at it. The downgrade drops everything 0009 added.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("feedback_events", sa.Column("scores", sa.JSON(), nullable=True))
    op.add_column(
        "feedback_events", sa.Column("rubric_version", sa.String(length=16), nullable=True)
    )
    op.add_column("feedback_events", sa.Column("unsafe", sa.Boolean(), nullable=True))
    op.add_column("guild_settings", sa.Column("lead_role_id", sa.String(length=32), nullable=True))
    op.create_table(
        "gold_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("unsafe", sa.Boolean(), nullable=False),
        sa.Column("acceptable", sa.Boolean(), nullable=False),
        sa.Column("rubric_version", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(["candidate_id"], ["messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("candidate_id"),
    )
    op.create_table(
        "review_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("live_actor_id", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("reviews_needed", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("gold_id", sa.Integer(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["candidate_id"], ["messages.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["gold_id"], ["gold_items.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("candidate_id"),
    )
    op.create_index("ix_review_items_status_id", "review_items", ["status", "id"])
    op.create_index("ix_review_items_conversation_id", "review_items", ["conversation_id"])
    op.create_index("ix_review_items_gold_id", "review_items", ["gold_id"])
    op.create_table(
        "review_leases",
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("actor_id", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(["item_id"], ["review_items.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("item_id", "actor_id"),
    )
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("actor_id", sa.String(length=128), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("unsafe", sa.Boolean(), nullable=False),
        sa.Column("acceptable", sa.Boolean(), nullable=False),
        sa.Column("rubric_version", sa.String(length=16), nullable=False),
        sa.Column("leased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(["item_id"], ["review_items.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("item_id", "actor_id"),
    )
    op.create_index("ix_reviews_actor_id", "reviews", ["actor_id"])


def downgrade() -> None:
    op.drop_table("reviews")
    op.drop_table("review_leases")
    op.drop_table("review_items")
    op.drop_table("gold_items")
    # SQLite 3.35+ drops a column in place (no batch copy of a table others point at).
    op.execute("ALTER TABLE guild_settings DROP COLUMN lead_role_id")
    for column in ("unsafe", "rubric_version", "scores"):
        op.execute(f"ALTER TABLE feedback_events DROP COLUMN {column}")
