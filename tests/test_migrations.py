"""Migrations from a database made by an earlier head, on SQLite and PostgreSQL: 0007 from 0006
(every row of every kept table survives, the build-ahead wing is gone, and the bot and exports
work on the result), 0008, 0009 and 0010 from their predecessors with data, and the downgrades."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from feedback.corrections import CorrectionStore
from feedback.database import alembic_config, create_engine, migrate, session_factory
from feedback.exports import FORMATS, ExportFilter, iter_records
from feedback.models import Base, GoldItem, Review, ReviewItem, ReviewLease, UserPrivacy
from feedback.store import ConversationStore
from tests.conftest import POSTGRES_ADMIN_DSN, _admin
from tests.factories import ALICE_ACTOR, BOB_ACTOR, add_turn

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from sqlalchemy import Column, Table
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine

SECRET = b"migration-test-secret-0123456789"
PREVIOUS_HEAD = "0006"
DROPPED_TABLES = {"turn_records", "turn_build_queue", "record_builds"}
#: What 0009 adds: tables, and columns of existing tables.
TABLES_0009 = {"review_items", "review_leases", "reviews", "gold_items"}
COLUMNS_0009 = {
    "feedback_events": {"scores", "rubric_version", "unsafe"},
    "guild_settings": {"lead_role_id"},
}
#: What 0010 adds.
COLUMNS_0010 = {"prompt_snapshots": {"context"}}


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


@contextlib.asynccontextmanager
async def todays_columns(engine: AsyncEngine) -> AsyncIterator[None]:
    """Today's stores write, and today's exports read, every column and table today's models
    have; an older database gets the ones it lacks (columns nullable, tables empty) for the
    block, and loses them after it, so the migration under test starts from the older schema
    exactly."""

    def missing(connection: Connection) -> tuple[dict[str, list[Column[Any]]], list[Table]]:
        inspector = inspect(connection)
        present = {
            name: {column["name"] for column in inspector.get_columns(name)}
            for name in inspector.get_table_names()
        }
        columns = {
            table.name: [
                column for column in table.columns if column.name not in present[table.name]
            ]
            for table in Base.metadata.sorted_tables
            if table.name in present
        }
        tables = [table for table in Base.metadata.sorted_tables if table.name not in present]
        return columns, tables

    async with engine.connect() as connection:
        added, tables = await connection.run_sync(missing)
    async with engine.begin() as connection:
        for name, columns in added.items():
            for column in columns:
                kind = column.type.compile(dialect=engine.dialect)
                await connection.execute(
                    text(f"ALTER TABLE {name} ADD COLUMN {column.name} {kind}")
                )
        await connection.run_sync(Base.metadata.create_all, tables=tables)
    try:
        yield
    finally:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.drop_all, tables=tables)
            for name, columns in added.items():
                for column in columns:
                    await connection.execute(text(f"ALTER TABLE {name} DROP COLUMN {column.name}"))


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


async def kept_data(engine: AsyncEngine) -> dict[str, list[Any]]:
    """Every row of every table the models keep, in id order, without ``messages.revision``
    (only the tables and columns the database has: an older revision lacks later ones)."""
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
            names = [column.name for column in table.columns if column.name in present[table.name]]
            columns = ", ".join(names)
            order = ", ".join(column.name for column in table.primary_key.columns)
            result = await connection.execute(
                text(f"SELECT {columns} FROM {table.name} ORDER BY {order}")
            )
            data[table.name] = [dict(row._mapping) for row in result]
    return data


def without_later(
    data: dict[str, list[Any]], tables: set[str], columns: dict[str, set[str]]
) -> dict[str, list[Any]]:
    """``data`` without the named tables, and without the named columns of the others."""
    return {
        name: [
            {key: value for key, value in row.items() if key not in columns.get(name, ())}
            for row in rows
        ]
        for name, rows in data.items()
        if name not in tables
    }


def without_0009(data: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """``data`` as a database before 0009 holds it: without 0009's and 0010's additions."""
    return without_0010(without_later(data, TABLES_0009, COLUMNS_0009))


def without_0010(data: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """``data`` as a database before 0010 holds it: without the snapshots' own context."""
    return without_later(data, set(), COLUMNS_0010)


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
        data = await kept_data(engine)
        async with todays_columns(engine):
            exported = await records(engine)
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
        async with todays_columns(engine):
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
        data = without_0009(await kept_data(engine))
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

        await upgrade_to(engine, "0008")

        after = await kept_data(engine)
        assert after.pop("erasure_tombstones") == []
        assert {name: rows for name, rows in after.items() if name != "leases"} == {
            name: rows for name, rows in before.items() if name != "leases"
        }
        store = ConversationStore(session_factory(engine))
        async with todays_columns(engine):
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


async def test_0009_adds_rubric_scores_leads_reviews_and_gold_keeping_data(
    fresh_url: str,
) -> None:
    """From 0008 with data: the start-up migration adds the rubric columns (null on old rows),
    ``lead_role_id`` and the four review tables with their constraints; the downgrade takes
    exactly those away and keeps every other row."""
    engine = create_engine(fresh_url)
    try:
        await upgrade_to(engine, "0008")
        async with todays_columns(engine):
            await fill_new(engine)
        before = await kept_data(engine)
        assert before["feedback_events"] and not TABLES_0009 & before.keys()

        await migrate(engine)

        after = await kept_data(engine)
        assert {name: after[name] for name in TABLES_0009} == {name: [] for name in TABLES_0009}
        assert without_0009(after) == before
        assert all(
            row["scores"] is None and row["rubric_version"] is None and row["unsafe"] is None
            for row in after["feedback_events"]
        )
        candidate = after["feedback_events"][0]["candidate_id"]
        conversation = after["feedback_events"][0]["conversation_id"]
        sessions = session_factory(engine)
        async with sessions() as session:
            gold = GoldItem(
                candidate_id=candidate,
                scores={"fidelity": 4},
                unsafe=False,
                acceptable=True,
                rubric_version="0123456789ab",
                created_by="discord:9001",
            )
            session.add(gold)
            await session.flush()
            item = ReviewItem(
                candidate_id=candidate,
                conversation_id=conversation,
                reason="gold",
                reviews_needed=3,
                gold_id=gold.id,
            )
            session.add(item)
            await session.flush()
            now = datetime.now(UTC)
            session.add(ReviewLease(item_id=item.id, actor_id="discord:9002", expires_at=now))
            session.add(
                Review(
                    item_id=item.id,
                    actor_id="discord:9002",
                    rating=4,
                    scores={"fidelity": 5},
                    unsafe=False,
                    acceptable=True,
                    rubric_version="0123456789ab",
                    leased_at=now,
                )
            )
            await session.commit()
        # one review per actor per item, one item per reply
        for row in (
            Review(
                item_id=item.id,
                actor_id="discord:9002",
                rating=2,
                scores={},
                unsafe=True,
                acceptable=False,
                rubric_version="0123456789ab",
                leased_at=now,
            ),
            ReviewItem(
                candidate_id=candidate,
                conversation_id=conversation,
                reason="sample",
                reviews_needed=3,
            ),
        ):
            async with sessions() as session:
                session.add(row)
                with pytest.raises(IntegrityError):
                    await session.commit()
        # deleting the gold item keeps its review item, which stops pointing at it
        async with sessions() as session:
            await session.delete(await session.get(GoldItem, gold.id))
            await session.commit()
            assert (await session.get(ReviewItem, item.id)).gold_id is None  # type: ignore[union-attr]

        def down(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0008")

        async with engine.begin() as connection:
            await connection.run_sync(down)
        assert await kept_data(engine) == before
        async with engine.connect() as connection:
            columns = await connection.run_sync(
                lambda sync: {
                    name: {column["name"] for column in inspect(sync).get_columns(name)}
                    for name in COLUMNS_0009
                }
            )
        assert all(not columns[name] & added for name, added in COLUMNS_0009.items())
    finally:
        await engine.dispose()


async def test_0010_adds_the_snapshots_own_context_keeping_data(fresh_url: str) -> None:
    """From 0009 with data: ``prompt_snapshots.context`` arrives empty for the old snapshots
    (their turns keep no context message), every row stays, history reads and new turns work;
    the downgrade drops the column and keeps the rest."""
    engine = create_engine(fresh_url)
    try:
        await upgrade_to(engine, "0009")
        async with todays_columns(engine):
            await fill_new(engine)
        before = await kept_data(engine)

        await migrate(engine)

        assert without_0010(await kept_data(engine)) == before
        async with engine.connect() as connection:
            contexts = await connection.execute(text("SELECT context FROM prompt_snapshots"))
            assert set(contexts.scalars()) == {None}
        store = ConversationStore(session_factory(engine))
        turn = await add_turn(store, user_id="discord:1", text="again", state="sent")
        history = await store.history(turn.conversation_id, 10)
        assert [t.content for t in history] == ["hi", "again", "Evening."]
        assert [t.context for t in history] == [None, None, None]

        expected = without_0010(await kept_data(engine))

        def down(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0009")

        async with engine.begin() as connection:
            await connection.run_sync(down)
            columns = await connection.run_sync(
                lambda sync: [c["name"] for c in inspect(sync).get_columns("prompt_snapshots")]
            )
        assert "context" not in columns
        assert await kept_data(engine) == expected
    finally:
        await engine.dispose()
