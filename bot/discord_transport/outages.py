"""Riding out dependency outages: which errors mean "the database is unreachable", a bounded
retry for one unit of work, and the health state that ``/healthz`` reports.

The retry is for work that must not be lost (a user's message): it keeps calling the work with
a capped exponential backoff while the error is a connection-level one, logs once when an
outage starts and once when it ends (not per attempt), and gives up after a total time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = [
    "DATABASE_UNAVAILABLE",
    "DependencyState",
    "HealthState",
    "OutageGaveUpError",
    "is_connection_error",
    "is_database_error",
    "is_database_outage",
    "retry_through_outage",
]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: What an actor or a user is told when the database cannot be reached.
DATABASE_UNAVAILABLE = (
    "The database is unavailable right now, so nothing was recorded. Please try again in a moment."
)

#: First and largest pause between attempts, in seconds.
_FIRST_DELAY_S = 0.25
_MAX_DELAY_S = 2.0


def _chain(error: BaseException) -> list[BaseException]:
    """``error``, what it wraps (``orig``) and its causes, without cycles (at most 8)."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending and len(seen) < 8:
        current = pending.pop(0)
        if current is None or any(current is known for known in seen):
            continue
        seen.append(current)
        pending.extend([getattr(current, "orig", None), current.__cause__, current.__context__])
    return seen


def is_connection_error(error: BaseException) -> bool:
    """Whether ``error`` says the database (or its network) is unreachable, not that a query is
    wrong: SQLAlchemy's ``OperationalError``/``InterfaceError``/``DisconnectionError`` or a
    ``DBAPIError`` that invalidated its connection, asyncpg's connection and shutdown errors,
    and ``OSError`` (refused, reset, timed out). Looks through wrapped errors and causes.

    Limit: SQLite reports some non-network problems as ``OperationalError`` too (a missing
    table); those are retried until the retry's total time runs out.
    """
    from sqlalchemy import exc as sa_exc

    try:
        from asyncpg import exceptions as pg_exc

        asyncpg_errors: tuple[type[BaseException], ...] = (
            pg_exc.PostgresConnectionError,
            pg_exc.OperatorInterventionError,
            pg_exc.TooManyConnectionsError,
        )
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        asyncpg_errors = ()
    for link in _chain(error):
        if isinstance(link, sa_exc.DBAPIError) and link.connection_invalidated:
            return True
        if isinstance(
            link,
            sa_exc.OperationalError
            | sa_exc.InterfaceError
            | sa_exc.DisconnectionError
            | OSError
            | ConnectionError
            | TimeoutError,
        ):
            return True
        if asyncpg_errors and isinstance(link, asyncpg_errors):
            return True
    return False


_DATABASE_PACKAGES = frozenset({"sqlalchemy", "asyncpg", "aiosqlite", "sqlite3"})


def _raised_in(error: BaseException, packages: frozenset[str]) -> bool:
    """Whether ``error``'s type or one of the frames it passed through belongs to ``packages``
    (a bare ``ConnectionRefusedError`` from asyncpg's connect is raised in asyncpg's code)."""
    if type(error).__module__.split(".")[0] in packages:
        return True
    frame = error.__traceback__
    while frame is not None:
        module = frame.tb_frame.f_globals.get("__name__", "")
        if module.split(".")[0] in packages:
            return True
        frame = frame.tb_next
    return False


def is_database_error(error: BaseException) -> bool:
    """Whether the database driver or SQLAlchemy raised ``error`` (or something it wraps)."""
    return any(_raised_in(link, _DATABASE_PACKAGES) for link in _chain(error))


def is_database_outage(error: BaseException) -> bool:
    """Whether ``error`` is the database being unreachable (not a bad query, not the network
    to Discord): what actors and command users are told to retry later."""
    return is_connection_error(error) and is_database_error(error)


def _describe(error: BaseException | str) -> str:
    """A short, safe line for an error: the driver's error type and first line, never the SQL
    or its parameters (SQLAlchemy's message carries both, and parameters hold user text)."""
    if isinstance(error, str):
        return error[:200]
    base = getattr(error, "orig", None) or error
    first = (str(base).splitlines() or [""])[0]
    return f"{type(base).__name__}: {first}"[:200]


@dataclass
class DependencyState:
    """One dependency as last seen: ``state`` and since when, the last error, counters."""

    name: str
    state: Literal["ok", "down", "unknown", "off"] = "unknown"
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    last_error_at: float | None = None
    last_ok_at: float | None = None
    outages: int = 0

    def ok(self) -> bool:
        """Record a success; returns ``True`` when this ends an outage."""
        now = time.time()
        ended = self.state == "down"
        if self.state != "ok":
            self.state, self.since = "ok", now
        self.last_ok_at = now
        return ended

    def failed(self, error: BaseException | str) -> bool:
        """Record a failure; returns ``True`` when this starts an outage."""
        now = time.time()
        started = self.state != "down"
        if started:
            self.state, self.since = "down", now
            self.outages += 1
        self.last_error, self.last_error_at = _describe(error), now
        return started

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe view (times as Unix seconds)."""
        return {
            "state": self.state,
            "since": round(self.since, 3),
            "last_ok_at": round(self.last_ok_at, 3) if self.last_ok_at else None,
            "last_error": self.last_error,
            "last_error_at": round(self.last_error_at, 3) if self.last_error_at else None,
            "outages": self.outages,
        }


@dataclass
class HealthState:
    """What the running bot has seen of its dependencies (the health cog adds live probes).

    ``database`` follows the message retries, ``model`` the last generation, ``memory`` the last
    recall: a reply's flags say which of them failed.
    """

    database: DependencyState = field(default_factory=lambda: DependencyState("database"))
    model: DependencyState = field(default_factory=lambda: DependencyState("model"))
    memory: DependencyState = field(default_factory=lambda: DependencyState("memory"))
    #: Messages waiting out a database outage right now.
    waiting: int = 0

    def observe_reply(self, reply: Any) -> None:
        """Learn from an engine result: a fallback means the model failed, a
        ``memory_unavailable`` flag that recall did. Results without flags are ignored."""
        flags = getattr(reply, "flags", None)
        if flags is None:
            return
        generation = next((f for f in flags if f.get("kind") == "generation_failed"), None)
        if generation is not None:
            if self.model.failed(f"generation failed: {generation.get('reason')}"):
                _log.warning("model outage: answering with fallback lines")
        elif self.model.ok():
            _log.warning("model answering again")
        if self.memory.state == "off":
            return
        recall = next((f for f in flags if f.get("kind") == "memory_unavailable"), None)
        if recall is not None:
            if self.memory.failed(str(recall.get("error", "recall failed"))):
                _log.warning("memory outage: answering without memories")
        elif self.memory.ok():
            _log.warning("memory answering again")


class OutageGaveUpError(Exception):
    """The work kept failing on connection errors for longer than the retry allowed."""


async def retry_through_outage(
    work: Callable[[int], Awaitable[_T]],
    *,
    what: str,
    total_s: float,
    state: DependencyState | None = None,
    health: HealthState | None = None,
) -> _T:
    """Run ``work(attempt)`` (attempt 0, 1, ...) until it returns, retrying only connection
    errors (:func:`is_connection_error`) with a backoff from 0.25 s doubling to 2 s.

    Logs once when an outage starts and once when it ends, through ``state`` (shared by all
    callers, so many waiting messages make two log lines, not one per attempt). Raises
    :class:`OutageGaveUpError` (the last error chained) after ``total_s`` seconds; any other
    error propagates at once. ``total_s`` 0 means one attempt.
    """
    state = state if state is not None else DependencyState("database")
    deadline = time.monotonic() + total_s
    delay = _FIRST_DELAY_S
    attempt = 0
    waiting = False
    try:
        while True:
            try:
                result = await work(attempt)
            except Exception as error:
                if not is_connection_error(error):
                    raise
                if not is_database_error(error):
                    _log.info("%s: network error (%s); retrying", what, type(error).__name__)
                elif state.failed(error):
                    _log.warning(
                        "%s unreachable (%s); holding work and retrying for up to %.0f s",
                        state.name,
                        type(error).__name__,
                        total_s,
                    )
                if not waiting and health is not None:
                    health.waiting += 1
                    waiting = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _log.error(
                        "gave up on %s after %d attempts over %.0f s: %s",
                        what,
                        attempt + 1,
                        total_s,
                        state.last_error or type(error).__name__,
                    )
                    raise OutageGaveUpError(
                        f"{what}: still failing after {total_s:g} s ({type(error).__name__})"
                    ) from error
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, _MAX_DELAY_S)
                attempt += 1
                continue
            down_since = state.since if state.state == "down" else None
            if state.ok() and down_since is not None:
                _log.warning(
                    "%s reachable again after %.1f s down (%s done after %d attempts)",
                    state.name,
                    time.time() - down_since,
                    what,
                    attempt + 1,
                )
            return result
    finally:
        if waiting and health is not None:
            health.waiting -= 1
