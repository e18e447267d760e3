"""export records kept per user turn (``turn_records``), the turn revision that validates them,
and the triggers that raise it and drop the records whenever what they were built from changes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 08:30:00

The triggers are the one place that knows what an export record depends on, so no write path
(the bot's, an erasure's, a bulk load's) can leave a stale record or an erased text behind:

- a reply (assistant node) inserted, changed in a column records show, or deleted;
- a feedback event inserted, changed or deleted on a reply;
- a prompt snapshot's messages or model changed (erasure scrubs snapshots);
- the user turn itself, or its conversation's persona or scope, changed.

Each raises ``messages.revision`` of the user turn concerned, and raising it deletes that turn's
``turn_records`` rows in the same transaction.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: Reply columns that records show or are built from.
_REPLY_COLUMNS = (
    "parent_id, role, origin, author_id, content, state, prompt_snapshot_id, decided_by, created_at"
)
#: User-turn columns that records show or select by.
_TURN_COLUMNS = "conversation_id, role, author_id, author_name, content, created_at"
_EVENT_COLUMNS = "candidate_id, kind, actor_id, rating, tags, result_id"
_BUMP = "UPDATE messages SET revision = revision + 1 WHERE id"
_PARENT_OF = "(SELECT parent_id FROM messages WHERE id = {}.candidate_id)"

_SQLITE = [
    f"""CREATE TRIGGER turn_records_reply_insert AFTER INSERT ON messages
    WHEN NEW.role = 'assistant'
    BEGIN {_BUMP} = NEW.parent_id; END""",
    f"""CREATE TRIGGER turn_records_reply_update AFTER UPDATE OF {_REPLY_COLUMNS} ON messages
    WHEN NEW.role = 'assistant' OR OLD.role = 'assistant'
    BEGIN {_BUMP} IN (OLD.parent_id, NEW.parent_id); END""",
    f"""CREATE TRIGGER turn_records_reply_delete AFTER DELETE ON messages
    WHEN OLD.role = 'assistant'
    BEGIN {_BUMP} = OLD.parent_id; END""",
    f"""CREATE TRIGGER turn_records_turn_update AFTER UPDATE OF {_TURN_COLUMNS} ON messages
    WHEN NEW.role = 'user'
    BEGIN {_BUMP} = NEW.id; END""",
    """CREATE TRIGGER turn_records_drop AFTER UPDATE OF revision ON messages
    BEGIN DELETE FROM turn_records WHERE user_turn_id = NEW.id; END""",
    f"""CREATE TRIGGER turn_records_event_insert AFTER INSERT ON feedback_events
    WHEN NEW.candidate_id IS NOT NULL
    BEGIN {_BUMP} = {_PARENT_OF.format("NEW")}; END""",
    f"""CREATE TRIGGER turn_records_event_update AFTER UPDATE OF {_EVENT_COLUMNS}
    ON feedback_events
    BEGIN {_BUMP} IN ({_PARENT_OF.format("OLD")}, {_PARENT_OF.format("NEW")}); END""",
    f"""CREATE TRIGGER turn_records_event_delete AFTER DELETE ON feedback_events
    WHEN OLD.candidate_id IS NOT NULL
    BEGIN {_BUMP} = {_PARENT_OF.format("OLD")}; END""",
    f"""CREATE TRIGGER turn_records_snapshot_update AFTER UPDATE OF messages, model_name
    ON prompt_snapshots
    BEGIN {_BUMP} IN (SELECT parent_id FROM messages WHERE prompt_snapshot_id = NEW.id); END""",
    f"""CREATE TRIGGER turn_records_conversation_update AFTER UPDATE OF persona, scope
    ON conversations
    BEGIN {_BUMP} IN (SELECT id FROM messages WHERE conversation_id = NEW.id AND role = 'user');
    END""",
]
_SQLITE_TRIGGERS = [statement.split()[2] for statement in _SQLITE]


def _plpgsql(name: str, body: str) -> str:
    return (
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        f"BEGIN\n{body}\nRETURN NULL;\nEND $$"
    )


_POSTGRESQL_FUNCTIONS = {
    "turn_records_reply_changed": f"""
    IF TG_OP <> 'INSERT' THEN {_BUMP} = OLD.parent_id; END IF;
    IF TG_OP <> 'DELETE' THEN {_BUMP} = NEW.parent_id; END IF;""",
    "turn_records_turn_changed": f"{_BUMP} = NEW.id;",
    "turn_records_drop": "DELETE FROM turn_records WHERE user_turn_id = NEW.id;",
    "turn_records_event_changed": f"""
    IF TG_OP <> 'INSERT' THEN {_BUMP} = {_PARENT_OF.format("OLD")}; END IF;
    IF TG_OP <> 'DELETE' THEN {_BUMP} = {_PARENT_OF.format("NEW")}; END IF;""",
    "turn_records_snapshot_changed": (
        f"{_BUMP} IN (SELECT parent_id FROM messages WHERE prompt_snapshot_id = NEW.id);"
    ),
    "turn_records_conversation_changed": (
        f"{_BUMP} IN (SELECT id FROM messages WHERE conversation_id = NEW.id AND role = 'user');"
    ),
}
#: (trigger, event, table, condition, function)
_POSTGRESQL_TRIGGERS = [
    ("turn_records_reply_insert", "INSERT", "messages", "NEW.role = 'assistant'",
     "turn_records_reply_changed"),
    ("turn_records_reply_update", f"UPDATE OF {_REPLY_COLUMNS}", "messages",
     "NEW.role = 'assistant' OR OLD.role = 'assistant'", "turn_records_reply_changed"),
    ("turn_records_reply_delete", "DELETE", "messages", "OLD.role = 'assistant'",
     "turn_records_reply_changed"),
    ("turn_records_turn_update", f"UPDATE OF {_TURN_COLUMNS}", "messages",
     "NEW.role = 'user'", "turn_records_turn_changed"),
    ("turn_records_drop", "UPDATE OF revision", "messages", None, "turn_records_drop"),
    ("turn_records_event_insert", "INSERT", "feedback_events", None,
     "turn_records_event_changed"),
    ("turn_records_event_update", f"UPDATE OF {_EVENT_COLUMNS}", "feedback_events", None,
     "turn_records_event_changed"),
    ("turn_records_event_delete", "DELETE", "feedback_events", None,
     "turn_records_event_changed"),
    ("turn_records_snapshot_update", "UPDATE OF messages, model_name", "prompt_snapshots", None,
     "turn_records_snapshot_changed"),
    ("turn_records_conversation_update", "UPDATE OF persona, scope", "conversations", None,
     "turn_records_conversation_changed"),
]  # fmt: skip


def upgrade() -> None:
    op.add_column(
        "messages", sa.Column("revision", sa.Integer(), server_default="0", nullable=False)
    )
    op.create_index("ix_messages_prompt_snapshot_id", "messages", ["prompt_snapshot_id"])
    op.create_table(
        "turn_records",
        sa.Column("user_turn_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("build_key", sa.String(length=32), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["user_turn_id"], ["messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_turn_id", "kind"),
    )
    if op.get_bind().dialect.name == "postgresql":
        for name, body in _POSTGRESQL_FUNCTIONS.items():
            op.execute(_plpgsql(name, body))
        for name, event, table, condition, function in _POSTGRESQL_TRIGGERS:
            when = f" WHEN ({condition})" if condition else ""
            op.execute(
                f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW{when} "
                f"EXECUTE FUNCTION {function}()"
            )
    else:
        for statement in _SQLITE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, _event, table, _condition, _function in _POSTGRESQL_TRIGGERS:
            op.execute(f"DROP TRIGGER {name} ON {table}")
        for name in _POSTGRESQL_FUNCTIONS:
            op.execute(f"DROP FUNCTION {name}()")
    else:
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("turn_records")
    op.drop_index("ix_messages_prompt_snapshot_id", table_name="messages")
    op.drop_column("messages", "revision")
