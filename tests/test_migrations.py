"""Migrations from databases made by earlier revisions, on SQLite and PostgreSQL: every row of
every kept table survives (0007 drops the build-ahead wing, 0008 adds the erasure feed, 0009
the snapshots' own context message), and the bot and exports work on the result.

The stores of today write columns a later revision adds: an older database is filled through
them with those columns added for the fill and dropped again (:func:`todays_columns`).
"""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from alembic import command
from sqlalchemy import inspect, text

from feedback.corrections import CorrectionStore
from feedback.database import alembic_config, create_engine, migrate, session_factory
from feedback.exports import FORMATS, ExportFilter, iter_records
from feedback.models import Base, UserPrivacy
from feedback.store import ConversationStore
from tests.conftest import POSTGRES_ADMIN_DSN, _admin
from tests.factories import ALICE_ACTOR, BOB_ACTOR, add_turn

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection
    from pathlib import Path

    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine

SECRET = b"migration-test-secret-0123456789"
PREVIOUS_HEAD = "0006"
DROPPED_TABLES = {"turn_records", "turn_build_queue", "record_builds"}
#: Columns the stores write that later revisions add, as ``(table, column, SQL type)``.
LATER_COLUMNS = (("prompt_snapshots", "context", "TEXT"),)


@pytest.fixture(params=["sqlite", "postgresql"])
async def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a database nothing has migrated yet (PostgreSQL: one of its own)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.sqlite3'}"
        return
    name = f"greenroom_migration_{uuid.uuid4().hex[:10]}"
    await _admin(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def upgrade_to(engine: AsyncEngine, revision: str) -> None:
    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def fill(engine: AsyncEngine) -> None:
    """Turns, replies, snapshots and every kind of event through the stores (the 0006 triggers
    fire on each), with some kept records as the old exports left them."""
    sessions = session_factory(engine)
    store, corrections = ConversationStore(sessions), CorrectionStore(sessions)
    async with sessions() as session:
        session.add_all(UserPrivacy(user_id=f"discord:{n}", consent=True) for n in range(3))
        await session.commit()
    for n in range(6):
        turn = await add_turn(store, user_id=f"discord:{n % 3}", text=f"hello {n}", state="held")
        if n % 3 == 0:
            await corrections.approve(turn.candidate_id, actor=ALICE_ACTOR, key=f"a{n}")
        elif n % 3 == 1:
            await corrections.rewrite(
                turn.candidate_id, actor=BOB_ACTOR, text=f"better {n}", key=f"r{n}"
            )
        else:
            await corrections.rate(
                turn.candidate_id, actor=ALICE_ACTOR, rating=4, tags=["funny"], key=f"t{n}"
            )
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO turn_records (user_turn_id, kind, build_key, revision, body) "
                "SELECT id, 'sft', 'old-key', revision, :body FROM messages WHERE role = 'user'"
            ),
            {"body": b'{"messages":[]}\n'},
        )
        await connection.execute(
            text("INSERT INTO record_builds (kind, build_key) VALUES ('sft', 'old-key')")
        )


@contextlib.asynccontextmanager
async def todays_columns(engine: AsyncEngine) -> AsyncIterator[None]:
    """An older database with the columns of :data:`LATER_COLUMNS` it lacks, while the stores
    of today fill it; they are dropped again (with what was written to them) on the way out."""

    def missing(sync: Connection) -> list[tuple[str, str, str]]:
        inspector = inspect(sync)
        return [
            (table, column, kind)
            for table, column, kind in LATER_COLUMNS
            if column not in {c["name"] for c in inspector.get_columns(table)}
        ]

    async with engine.begin() as connection:
        added = await connection.run_sync(missing)
        for table, column, kind in added:
            await connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))
    try:
        yield
    finally:
        async with engine.begin() as connection:
            for table, column, _ in added:
                await connection.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))


async def kept_data(engine: AsyncEngine, *, without: Collection[str] = ()) -> dict[str, list[Any]]:
    """Every row of every table the models keep, in id order, without ``messages.revision``
    (only the tables and columns the database has: an older revision lacks later ones) and
    the ``table.column`` names in ``without``."""
    data: dict[str, list[Any]] = {}
    async with engine.connect() as connection:
        present = await connection.run_sync(
            lambda sync: {
                name: {column["name"] for column in inspect(sync).get_columns(name)}
                for name in inspect(sync).get_table_names()
            }
        )
        for table in Base.metadata.sorted_tables:
            if table.name not in present:
                continue
            names = [
                column.name
                for column in table.columns
                if column.name in present[table.name] and str(column) not in without
            ]
            columns = ", ".join(names)
            order = ", ".join(column.name for column in table.primary_key.columns)
            result = await connection.execute(
                text(f"SELECT {columns} FROM {table.name} ORDER BY {order}")
            )
            data[table.name] = [tuple(row) for row in result]
    return data


async def records(engine: AsyncEngine) -> dict[str, list[Any]]:
    sessions = session_factory(engine)
    return {
        fmt: [
            item
            async for item in iter_records(sessions, fmt, ExportFilter(), pseudonym_secret=SECRET)
        ]
        for fmt in FORMATS
    }


def wing(connection: Connection) -> dict[str, Any]:
    """What is left of the build-ahead wing: tables, the revision column, triggers, functions."""
    inspector = inspect(connection)
    dialect = connection.dialect.name
    if dialect == "postgresql":
        triggers = connection.exec_driver_sql(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
        ).scalars()
        functions = connection.exec_driver_sql(
            "SELECT proname FROM pg_proc WHERE proname LIKE 'turn_%'"
        ).scalars()
    else:
        triggers = connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        ).scalars()
        functions = iter(())
    return {
        "tables": sorted(DROPPED_TABLES & set(inspector.get_table_names())),
        "columns": [
            c["name"] for c in inspector.get_columns("messages") if c["name"] == "revision"
        ],
        "indexes": [
            index["name"]
            for index in inspector.get_indexes("messages")
            if index["name"] == "ix_messages_prompt_snapshot_id"
        ],
        "triggers": sorted(triggers),
        "functions": sorted(functions),
    }


async def test_upgrade_from_the_previous_head_keeps_data_and_drops_the_wing(
    fresh_url: str,
) -> None:
    engine = create_engine(fresh_url)
    try:
        await upgrade_to(engine, PREVIOUS_HEAD)
        async with todays_columns(engine):
            await fill(engine)
        async with engine.connect() as connection:
            before_wing = await connection.run_sync(wing)
        # the database really is the old one: its wing is there and the triggers ran
        assert before_wing["tables"] == sorted(DROPPED_TABLES)
        assert before_wing["columns"] == ["revision"] and before_wing["triggers"]
        async with engine.connect() as connection:
            queued = await connection.scalar(text("SELECT count(*) FROM turn_build_queue"))
        assert queued == 6
        data, exported = await kept_data(engine), await records(engine)
        assert len(data["messages"]) == 14 and len(data["feedback_events"]) == 6
        assert all(exported[fmt] for fmt in ("trl-sft", "trl-kto", "oasst", "trl-dpo"))

        await upgrade_to(engine, "0007")

        async with engine.connect() as connection:
            assert await connection.run_sync(wing) == {
                "tables": [],
                "columns": [],
                "indexes": [],
                "triggers": [],
                "functions": [],
            }
            version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
        assert version == "0007"
        assert await kept_data(engine) == data
        assert await records(engine) == exported
        # writes that fired the dropped triggers work, and are exported
        store = ConversationStore(session_factory(engine))
        corrections = CorrectionStore(session_factory(engine))
        async with todays_columns(engine):
            turn = await add_turn(store, user_id="discord:0", text="after", state="held")
            await corrections.rewrite(turn.candidate_id, actor=BOB_ACTOR, text="new", key="after")
            assert len((await records(engine))["trl-sft"]) == len(exported["trl-sft"]) + 1
    finally:
        await engine.dispose()


async def test_downgrade_brings_the_previous_schema_back(fresh_url: str) -> None:
    engine = create_engine(fresh_url)
    try:
        await migrate(engine)
        await fill_new(engine)
        data = await kept_data(engine, without={"prompt_snapshots.context"})  # 0009's
        assert data.pop("erasure_tombstones") == []  # 0008's, gone with the downgrade

        def down(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, PREVIOUS_HEAD)

        async with engine.begin() as connection:
            await connection.run_sync(down)
            restored = await connection.run_sync(wing)
        assert restored["tables"] == sorted(DROPPED_TABLES)
        assert restored["columns"] == ["revision"] and len(restored["triggers"]) == 11
        assert await kept_data(engine) == data
    finally:
        await engine.dispose()


async def fill_new(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    store, corrections = ConversationStore(sessions), CorrectionStore(sessions)
    turn = await add_turn(store, user_id="discord:1", text="hi", state="held")
    await corrections.approve(turn.candidate_id, actor=ALICE_ACTOR, key="k")


async def test_0008_adds_tombstones_and_lease_revocation_keeping_data(fresh_url: str) -> None:
    """From 0007 with data: the bot's start-up migration adds the erasure feed's table and
    ``leases.revoked_at``, keeps every row, and an erasure then leaves tombstones; the
    downgrade takes both away again and keeps the rest."""
    engine = create_engine(fresh_url)
    try:
        await upgrade_to(engine, "0007")
        async with todays_columns(engine):
            await fill_new(engine)
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        assert "erasure_tombstones" not in tables
        before = await kept_data(engine)
        assert before["messages"] and before["feedback_events"]

        await migrate(engine)

        after = await kept_data(engine, without={"prompt_snapshots.context"})
        assert after.pop("erasure_tombstones") == []
        assert {name: rows for name, rows in after.items() if name != "leases"} == {
            name: rows for name, rows in before.items() if name != "leases"
        }
        store = ConversationStore(session_factory(engine))
        assert await store.delete_data_for_user(requester="user", user_id="discord:1") > 0
        async with engine.connect() as connection:
            keys = (
                await connection.execute(text("SELECT record_key FROM erasure_tombstones"))
            ).scalars()
            assert "oasst:1" in set(keys)

        def down(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0007")

        async with engine.begin() as connection:
            await connection.run_sync(down)
            tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
            columns = await connection.run_sync(
                lambda sync: [c["name"] for c in inspect(sync).get_columns("leases")]
            )
        assert "erasure_tombstones" not in tables and "revoked_at" not in columns
    finally:
        await engine.dispose()


async def test_0009_adds_the_snapshots_own_context_keeping_data(fresh_url: str) -> None:
    """From 0008 with data: ``prompt_snapshots.context`` arrives empty for the old snapshots
    (their turns keep no context message), every row stays, history reads and new turns work;
    the downgrade drops the column and keeps the rest."""
    engine = create_engine(fresh_url)
    try:
        await upgrade_to(engine, "0008")
        async with todays_columns(engine):
            await fill_new(engine)
        before = await kept_data(engine)

        await migrate(engine)

        assert await kept_data(engine, without={"prompt_snapshots.context"}) == before
        async with engine.connect() as connection:
            contexts = await connection.execute(text("SELECT context FROM prompt_snapshots"))
            assert set(contexts.scalars()) == {None}
        store = ConversationStore(session_factory(engine))
        turn = await add_turn(store, user_id="discord:1", text="again", state="sent")
        history = await store.history(turn.conversation_id, 10)
        assert [t.content for t in history] == ["hi", "again", "Evening."]
        assert [t.context for t in history] == [None, None, None]

        expected = await kept_data(engine, without={"prompt_snapshots.context"})

        def down(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0008")

        async with engine.begin() as connection:
            await connection.run_sync(down)
            columns = await connection.run_sync(
                lambda sync: [c["name"] for c in inspect(sync).get_columns("prompt_snapshots")]
            )
        assert "context" not in columns
        assert await kept_data(engine) == expected
    finally:
        await engine.dispose()
