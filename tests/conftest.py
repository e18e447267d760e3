"""Shared fixtures: a migrated database on SQLite and on the real PostgreSQL server.

Tests that take ``db_url`` run twice, once per backend. PostgreSQL tests use a database of their
own (created for the test session and dropped after it), emptied before each test.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import TYPE_CHECKING

import asyncpg
import pytest
import uvloop
from sqlalchemy import text

from feedback.database import create_engine, migrate, session_factory
from feedback.models import Base
from feedback.store import ConversationStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine

#: Loops a test marked ``asyncio(loop_factories=[...])`` may run on: uvloop's is the one
#: ``greenroom api`` serves on (see :func:`bot.cli_api.event_loop_factory`).
EVENT_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

POSTGRES_ADMIN_DSN = os.environ.get(
    "GREENROOM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The :data:`EVENT_LOOPS` for tests that name some; the others run on asyncio's loop."""
    marker = item.get_closest_marker("asyncio")
    if marker is not None and "loop_factories" in marker.kwargs:
        return EVENT_LOOPS
    return {"asyncio": EVENT_LOOPS["asyncio"]}


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test session's own on the real server, as an asyncpg SQLAlchemy URL."""
    name = f"greenroom_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database, once per backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'greenroom.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def db_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated, empty database."""
    engine = create_engine(db_url)
    await migrate(engine)
    if engine.dialect.name == "postgresql":
        tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
        async with engine.begin() as connection:
            await connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def store(db_engine: AsyncEngine) -> ConversationStore:
    """A conversation store over the migrated database."""
    return ConversationStore(session_factory(db_engine))
