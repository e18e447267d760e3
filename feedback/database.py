"""Database engines, sessions and migrations.

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) when the URL names it. Alembic
migrations are applied at start-up by :func:`migrate`, over the application's own async engine.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = [
    "DatabaseError",
    "alembic_config",
    "autocommit",
    "autocommit_engine",
    "create_engine",
    "migrate",
    "session_factory",
]

_log = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).with_name("migrations")


class DatabaseError(Exception):
    """The database cannot be reached or prepared; the message names the URL (without secrets)."""


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; NORMAL sync is durable across process crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _json_text(value: Any) -> str:
    """JSON columns through orjson: every turn stores its prompt snapshot (some 50 messages),
    and the standard library's encoder showed in a busy bot's profile (``bench/RESULTS.md``)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``.

    SQLite gets its folder created, WAL, and one pooled connection: SQLite has a single writer,
    so the process's sessions queue for that connection instead of failing with "database is
    locked" under load (other processes still wait on ``busy_timeout``).
    """
    kwargs.setdefault("json_serializer", _json_text)
    kwargs.setdefault("json_deserializer", orjson.loads)
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("pool_size", 1)
        kwargs.setdefault("max_overflow", 0)
        kwargs.setdefault("pool_timeout", 60)
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
        return engine
    # No pre-ping (a round trip per checkout on every turn): a connection that died with a
    # PostgreSQL restart fails its statement, and the callers' outage retry gets a fresh one.
    # 20 pooled connections: a busy bot has one statement in flight per active channel, and an
    # overflow connection is opened and closed per checkout (a new server process each time).
    kwargs.setdefault("pool_pre_ping", False)
    kwargs.setdefault("pool_size", 20)
    return create_async_engine(url, **kwargs)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep their objects readable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


@contextlib.asynccontextmanager
async def autocommit(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session for reads and single-statement writes, with no transaction round trips.

    On PostgreSQL each statement commits on its own (``AUTOCOMMIT``: no ``BEGIN``/``COMMIT``/
    ``ROLLBACK``). On SQLite the block is one transaction committed at its end: switching the
    pooled SQLite connection to autocommit and back costs three trips to its thread. Only for
    reads and single-statement writes, which are atomic by themselves; a write of several
    statements that must land together needs a normal session.
    """
    async with sessions() as session:
        if session.bind is not None and session.bind.dialect.name == "sqlite":
            async with session.begin():
                yield session
            return
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


def autocommit_engine(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    """The sessions' engine for Core statements on the per-turn path (a Core connection costs a
    third of a session's CPU per statement: no unit of work, no transaction events). Shares the
    engine's pool. Use it as ``async with engine.begin()``.

    On PostgreSQL each statement commits on its own (``AUTOCOMMIT``): no ``BEGIN``/``COMMIT``
    round trips. On SQLite the block is one transaction, committed at its end: switching a
    pooled SQLite connection to autocommit and back costs three trips to aiosqlite's thread
    around every use (the isolation level twice, then a ``PRAGMA``).
    """
    engine = sessions.kw["bind"]
    if engine.dialect.name == "sqlite":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def alembic_config() -> Config:
    """Alembic's configuration, pointing at the migrations shipped inside this package."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema up to the newest migration; raises :class:`DatabaseError` if unreachable."""
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade)
    except (OSError, ConnectionError) as error:
        raise DatabaseError(
            f"cannot reach the database at {engine.url.render_as_string(hide_password=True)}: "
            f"{error}"
        ) from error
    except Exception as error:
        if type(error).__module__.startswith(("sqlalchemy", "asyncpg", "sqlite3")):
            raise DatabaseError(
                f"cannot prepare the database at "
                f"{engine.url.render_as_string(hide_password=True)}: {error}"
            ) from error
        raise
