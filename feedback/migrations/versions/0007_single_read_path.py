"""one read path for exports: drop the records built ahead (the revision triggers, the build
queue, the kept-record tables, ``messages.revision`` and the index only the triggers used)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 09:00:00

Exports and API pages build every record from the conversation trees as they read them
(:mod:`feedback.exports.tree`), so nothing built ahead is read any more. Every other table,
column and row is kept. The kept records are derived data: dropping them loses nothing.

On SQLite ``messages.revision`` goes with ``ALTER TABLE ... DROP COLUMN`` (SQLite 3.35 or
newer), not Alembic's batch copy: recreating ``messages`` with foreign keys on would run the
``ON DELETE`` actions of the rows that point at it.

The downgrade runs the upgrades of 0003 to 0006 again: the triggers, queue and empty kept-record
tables come back, and the old records builder queues every turn on its first run.
"""

from __future__ import annotations

from alembic import context, op
from alembic.script import ScriptDirectory

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: The triggers of migrations 0003 and 0004, by table (PostgreSQL needs the table to drop one).
_TRIGGERS = {
    "messages": (
        "turn_records_reply_insert",
        "turn_records_reply_update",
        "turn_records_reply_delete",
        "turn_records_turn_update",
        "turn_records_drop",
        "turn_build_queue_add",
    ),
    "feedback_events": (
        "turn_records_event_insert",
        "turn_records_event_update",
        "turn_records_event_delete",
    ),
    "prompt_snapshots": ("turn_records_snapshot_update",),
    "conversations": ("turn_records_conversation_update",),
}
#: The PostgreSQL functions those triggers ran.
_FUNCTIONS = (
    "turn_records_reply_changed",
    "turn_records_turn_changed",
    "turn_records_drop",
    "turn_records_event_changed",
    "turn_records_snapshot_changed",
    "turn_records_conversation_changed",
    "turn_build_queue_add",
)
_TABLES = ("turn_records", "turn_build_queue", "record_builds")


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, triggers in _TRIGGERS.items():
        for trigger in triggers:
            on = f" ON {table}" if postgresql else ""
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}{on}")
    if postgresql:
        for function in _FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    for table in _TABLES:
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DROP INDEX IF EXISTS ix_messages_prompt_snapshot_id")
    op.execute("ALTER TABLE messages DROP COLUMN revision")


def downgrade() -> None:
    scripts = ScriptDirectory.from_config(context.config)
    for number in ("0003", "0004", "0005", "0006"):
        module = scripts.get_revision(number).module  # type: ignore[union-attr]
        module.upgrade()
