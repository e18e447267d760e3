"""the queue of user turns whose export records are to be built ahead (``turn_build_queue``), fed
by the revision triggers, and the build key each kind of kept record was last queued for

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 11:10:00

Whenever a user turn's ``revision`` is raised (migration 0003: anything its records are built
from changed), a trigger upserts the turn into ``turn_build_queue`` with its new revision. The
builder (:mod:`feedback.exports.ahead`) builds the queued turns' records, keeps them, and takes
a turn off the queue only if its revision is still the one it built, so a change made while it
built queues the turn again. ``record_builds`` remembers the build key each kind was queued for:
when the code or the pseudonym secret changes, every turn is queued once more.

``record_builds`` starts empty, so the builder's first run queues every user turn: the data
already there is built ahead too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_QUEUE = (
    "INSERT INTO turn_build_queue (user_turn_id, revision) VALUES (NEW.id, NEW.revision) "
    "ON CONFLICT (user_turn_id) DO UPDATE SET revision = excluded.revision"
)
_SQLITE_TRIGGER = (
    f"CREATE TRIGGER turn_build_queue_add AFTER UPDATE OF revision ON messages BEGIN {_QUEUE}; END"
)
_POSTGRESQL_FUNCTION = (
    "CREATE FUNCTION turn_build_queue_add() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    f"BEGIN\n{_QUEUE};\nRETURN NULL;\nEND $$"
)
_POSTGRESQL_TRIGGER = (
    "CREATE TRIGGER turn_build_queue_add AFTER UPDATE OF revision ON messages FOR EACH ROW "
    "WHEN (NEW.revision <> OLD.revision) EXECUTE FUNCTION turn_build_queue_add()"
)


def upgrade() -> None:
    op.create_table(
        "turn_build_queue",
        sa.Column("user_turn_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["user_turn_id"], ["messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_turn_id"),
    )
    op.create_table(
        "record_builds",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("build_key", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("kind"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_POSTGRESQL_FUNCTION)
        op.execute(_POSTGRESQL_TRIGGER)
    else:
        op.execute(_SQLITE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER turn_build_queue_add ON messages")
        op.execute("DROP FUNCTION turn_build_queue_add()")
    else:
        op.execute("DROP TRIGGER turn_build_queue_add")
    op.drop_table("record_builds")
    op.drop_table("turn_build_queue")
