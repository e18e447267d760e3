"""aiosqlite with one trip to its thread per statement, for SQLAlchemy's ``sqlite+aiosqlite``.

aiosqlite runs each call on the connection's own thread and wakes the event loop with the
result. SQLAlchemy's adapter makes four such trips for a statement that returns rows (make the
cursor, execute, fetch all, close) and waits for each. Under the Discord load bench that was
most of what SQLite cost the bot. Here the cursor is made and the statement executed on the
thread in one trip, which also fetches the first :data:`PREFETCH` rows. ``close`` is queued on
the thread without waiting. Larger results, and server-side cursors (streamed exports), fetch
the rest with further trips as before. Installed by :func:`use_single_trip_cursors`, from
:func:`feedback.database.create_engine`.

Limits: it overrides aiosqlite's ``Connection.cursor`` and relies on its ``Cursor._cursor``,
``Connection._conn`` and ``Connection._tx`` (aiosqlite 0.22); the tests run every store
operation through it.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import TYPE_CHECKING, Any

import aiosqlite
from aiosqlite.context import contextmanager
from sqlalchemy import event

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["PREFETCH", "use_single_trip_cursors"]

#: Rows fetched in the same trip as the statement: bounds the memory of a streamed result.
PREFETCH = 256


class _SingleTripCursor(aiosqlite.Cursor):
    """A cursor whose sqlite3 cursor is made, and whose first rows are fetched, on the thread
    in the same trip as the statement."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        super().__init__(connection, None)  # type: ignore[arg-type]
        self._rows: list[Any] = []
        self._more = False

    def _run(self, method: str, sql: str, parameters: Any) -> tuple[list[Any], bool]:
        if self._cursor is None:
            self._cursor = self._conn._conn.cursor()
        getattr(self._cursor, method)(sql, parameters)
        if self._cursor.description is None:
            return [], False
        rows = self._cursor.fetchmany(PREFETCH)
        return rows, len(rows) == PREFETCH

    async def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> _SingleTripCursor:
        self._rows, self._more = await self._execute(self._run, "execute", sql, parameters or ())
        return self

    async def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> _SingleTripCursor:
        self._rows, self._more = await self._execute(self._run, "executemany", sql, parameters)
        return self

    async def fetchone(self) -> sqlite3.Row | None:
        if not self._rows and self._more:
            await self._fill(self.arraysize)
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        size = self.arraysize if size is None else size
        if len(self._rows) < size and self._more:
            await self._fill(size - len(self._rows))
        taken, self._rows = self._rows[:size], self._rows[size:]
        return taken

    async def fetchall(self) -> list[Any]:
        if self._more:
            self._rows += await self._execute(self._cursor.fetchall)
            self._more = False
        taken, self._rows = self._rows, []
        return taken

    async def _fill(self, size: int) -> None:
        size = max(size, PREFETCH)
        rows = await self._execute(self._cursor.fetchmany, size)
        self._more = len(rows) == size
        self._rows += rows

    async def close(self) -> None:
        """Queued on the connection's thread, not awaited: the next trip runs after it."""
        if self._cursor is not None:
            self._conn._tx.put_nowait((None, self._cursor.close))
        self._rows, self._more = [], False

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize if self._cursor is not None else 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        if self._cursor is not None:
            self._cursor.arraysize = value

    @property
    def description(self) -> tuple[tuple[Any, ...], ...] | None:
        return self._cursor.description if self._cursor is not None else None

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount if self._cursor is not None else -1

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid if self._cursor is not None else None


class _SingleTripConnection(aiosqlite.Connection):
    @contextmanager
    async def cursor(self) -> aiosqlite.Cursor:
        """A cursor at no cost: its sqlite3 cursor is made at its first statement."""
        return _SingleTripCursor(self)

    async def commit(self) -> None:
        """No trip when no transaction is open (a block that only read)."""
        if self._open_transaction():
            await super().commit()

    async def rollback(self) -> None:
        """No trip when no transaction is open: the pool rolls back every connection it gets
        back."""
        if self._open_transaction():
            await super().rollback()

    def _open_transaction(self) -> bool:
        # Read on the event loop's thread: nothing runs on the connection's thread meanwhile
        # but queued cursor closes (a pooled connection has one user, who awaits each trip).
        return self._connection is None or self._connection.in_transaction


def _connect(database: str, **kwargs: Any) -> _SingleTripConnection:
    connection = _SingleTripConnection(
        functools.partial(sqlite3.connect, database, **kwargs), iter_chunk_size=64
    )
    connection._thread.daemon = True  # as SQLAlchemy does for aiosqlite's own connections
    return connection


def use_single_trip_cursors(engine: AsyncEngine) -> None:
    """Connect ``engine`` (``sqlite+aiosqlite``) through :class:`_SingleTripConnection`, with the
    arguments SQLAlchemy's dialect computed for the URL."""

    @event.listens_for(engine.sync_engine, "do_connect")
    def _do_connect(dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        return dialect.dbapi.connect(*cargs, async_creator_fn=_connect, **cparams)
