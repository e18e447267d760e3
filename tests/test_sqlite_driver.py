"""The single-trip aiosqlite connection behind every SQLite engine (feedback.sqlite_driver)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from feedback.database import autocommit, autocommit_engine, create_engine, session_factory
from feedback.sqlite_driver import PREFETCH, _SingleTripConnection

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine

_ROWS = PREFETCH * 3 + 7  # crosses the prefetch more than once, and not on its boundary
_NUMBERS = text(
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < :count) "
    "SELECT x FROM n"
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.sqlite3'}")
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
    yield engine
    await engine.dispose()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Trips to the connection's thread, by what ran there."""
    counts: Counter[str] = Counter()
    original = _SingleTripConnection._execute

    async def counting(self: _SingleTripConnection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(fn, "__name__", "call")
        counts[f"{name}:{args[1].split()[0]}" if name == "_run" else name] += 1
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(_SingleTripConnection, "_execute", counting)
    return counts


async def test_engines_connect_through_the_single_trip_connection(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        assert isinstance(raw.driver_connection, _SingleTripConnection)


async def test_results_longer_than_the_prefetch_come_whole_and_in_order(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as connection:
        rows = (await connection.execute(_NUMBERS, {"count": _ROWS})).scalars().all()
        assert rows == list(range(1, _ROWS + 1))
        streamed = await connection.stream(_NUMBERS, {"count": _ROWS})
        first = await streamed.fetchone()
        parts = [len(part) async for part in streamed.partitions(100)]
        assert first is not None and first[0] == 1
        assert sum(parts) == _ROWS - 1
        assert parts[:-1] == [100] * (len(parts) - 1)


async def test_one_trip_per_statement_and_none_to_commit_a_read(
    engine: AsyncEngine, trips: Counter[str]
) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("SELECT v FROM t"))
    assert trips == Counter({"_run:SELECT": 1})
    trips.clear()
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO t (v) VALUES ('a')"))
    assert trips == Counter({"_run:INSERT": 1, "commit": 1})


async def test_the_per_turn_engine_commits_on_sqlite_without_switching_isolation(
    engine: AsyncEngine, trips: Counter[str]
) -> None:
    per_turn = autocommit_engine(session_factory(engine))
    async with per_turn.begin() as connection:
        await connection.execute(text("INSERT INTO t (v) VALUES ('kept')"))
    assert "_run:PRAGMA" not in trips
    async with engine.connect() as connection:
        kept = (await connection.execute(text("SELECT v FROM t"))).scalars().all()
    assert kept == ["kept"]


async def test_autocommit_sessions_commit_on_sqlite_without_switching_isolation(
    engine: AsyncEngine, trips: Counter[str]
) -> None:
    sessions = session_factory(engine)
    async with autocommit(sessions) as session:
        await session.execute(text("SELECT v FROM t"))
    assert trips == Counter({"_run:SELECT": 1})  # a read: no trip to commit, no PRAGMA
    trips.clear()
    async with autocommit(sessions) as session:
        await session.execute(text("INSERT INTO t (v) VALUES ('kept')"))
    assert trips == Counter({"_run:INSERT": 1, "commit": 1})
    async with engine.connect() as connection:
        kept = (await connection.execute(text("SELECT v FROM t"))).scalars().all()
    assert kept == ["kept"]


async def test_a_failed_statement_rolls_back_and_the_connection_goes_on(
    engine: AsyncEngine,
) -> None:
    with pytest.raises(IntegrityError):
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO t (v) VALUES ('x')"))
            await connection.execute(text("INSERT INTO t (v) VALUES ('x')"))
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO t (v) VALUES ('y')"))
        values = (await connection.execute(text("SELECT v FROM t"))).scalars().all()
    assert values == ["y"]
