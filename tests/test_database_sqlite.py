"""SQLite engines from feedback.database on plain aiosqlite: the per-turn engine and autocommit
sessions commit their block, long and streamed results come whole, a failed statement rolls back."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from feedback.database import autocommit, autocommit_engine, create_engine, session_factory

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine

_ROWS = 1000
_NUMBERS = text(
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < :count) "
    "SELECT x FROM n"
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
    yield engine
    await engine.dispose()


async def _values(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.execute(text("SELECT v FROM t ORDER BY id"))).scalars())


async def test_engines_connect_through_aiosqlite_itself(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        assert type(raw.driver_connection) is aiosqlite.Connection


async def test_long_and_streamed_results_come_whole_and_in_order(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        rows = (await connection.execute(_NUMBERS, {"count": _ROWS})).scalars().all()
        assert rows == list(range(1, _ROWS + 1))
        streamed = await connection.stream(_NUMBERS, {"count": _ROWS})
        first = await streamed.fetchone()
        parts = [len(part) async for part in streamed.partitions(100)]
        assert first is not None and first[0] == 1
        assert sum(parts) == _ROWS - 1


async def test_the_per_turn_engine_commits_its_block_on_sqlite(engine: AsyncEngine) -> None:
    per_turn = autocommit_engine(session_factory(engine))
    assert per_turn is engine  # no isolation switch on the pooled connection
    async with per_turn.begin() as connection:
        await connection.execute(text("INSERT INTO t (v) VALUES ('kept')"))
    assert await _values(engine) == ["kept"]


async def test_autocommit_sessions_commit_on_sqlite(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    async with autocommit(sessions) as session:
        assert (await session.execute(text("SELECT count(*) FROM t"))).scalar() == 0
    async with autocommit(sessions) as session:
        await session.execute(text("INSERT INTO t (v) VALUES ('kept')"))
    assert await _values(engine) == ["kept"]


async def test_a_failed_statement_rolls_back_and_the_connection_goes_on(
    engine: AsyncEngine,
) -> None:
    with pytest.raises(IntegrityError):
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO t (v) VALUES ('x')"))
            await connection.execute(text("INSERT INTO t (v) VALUES ('x')"))
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO t (v) VALUES ('y')"))
    assert await _values(engine) == ["y"]
