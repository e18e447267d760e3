"""Export records built ahead: changed turns get their kept records before anyone asks for them.

Why: building records is most of an export's cost (at a million events, 15-46k records/s
built, against 37-180k served from kept rows, see ``bench/bench_export.py``), and a turn changes
rarely. Built here, in
the background, as corrections arrive, each change costs one build, and trainers' exports and
API pages find the records kept (:mod:`feedback.exports.cache`).

How:

- **Queue.** A trigger (migration 0004) upserts a user turn into ``turn_build_queue`` with its
  new revision whenever the revision is raised, which is whenever anything its records are built
  from changes (migration 0003).
- **Build.** :func:`build_queued` reads the queue in id order, a batch at a time, reads each
  batch's trees once, and builds the records of every kind asked for. In one transaction (while
  the next batch is built) it keeps them and takes the turns off the queue, but only the turns
  whose revision is still the one read from the queue: the save refuses a turn that changed
  (see :func:`~feedback.exports.cache.save_rows`), and such a turn stays queued for the
  next run.
- **Keys.** ``record_builds`` holds the build key each kind was queued for. A kind whose key
  differs (new code, a new pseudonym secret, a kind never built) queues every user turn with a
  reply once (:func:`queue_stale_kinds`); rows of the old key are replaced as they are rebuilt.
- **Built ahead means complete.** While a kind's ``record_builds`` key is the running one,
  every user turn that could give records of it has a valid kept row or is queued:

  - marking a kind queues every user turn with a reply, in the same transaction;
  - a change raises the turn's revision, which deletes its rows and queues it, in the change's
    transaction;
  - the builder builds every turn it takes off the queue, whatever its author's consent
    (consent is applied when records are read, so a change of consent needs no rebuild), and
    the transaction that takes turns off the queue unmarks every kind it did not build under
    its key (another builder's formats, older code).

  Exports and pages of such a kind read its kept rows and build only the queued turns
  (:func:`~feedback.exports.tree.iter_turn_trees`). Deleting kept rows by hand breaks this:
  delete ``record_builds`` with them (exports then build, and the builder queues everything).
- **Tidying.** A run that took many turns off the queue (:data:`VACUUM_AFTER`, a rebuild after
  an upgrade or a new pseudonym secret) ends with ``VACUUM (ANALYZE)`` of the kept rows and the
  queue on PostgreSQL: it left a dead row for every row it replaced and every turn it took off
  the queue, and the first reads after it paid for them (hint bits and dead index entries
  marked a page at a time). Side by side after a full rebuild, 10,000-record pages had p99
  238 against 319 ms (oasst), 171 against 196 (trl-sft) and 184 against 218 (openai-dpo); the
  vacuum added 4-5 s to a 35-45 s oasst rebuild. Autovacuum would do it later, where it is on.
- **Where it runs.** ``greenroom api`` runs :func:`watch` in a child process at low priority
  (:class:`AheadBuilder`), so pages keep the cores first; ``greenroom build-records`` runs it
  in the foreground (once, or ``--watch``).

Limits: turns whose author has not consented are built too (their rows are read by no export
until the author consents, and an erasure deletes them). Preference kinds skip turns with one
reply, as their exports do. The queue holds at most one small row a turn, built or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import delete, func, or_, select, text
from sqlalchemy.exc import SQLAlchemyError

from feedback.database import autocommit_engine, create_engine, dialect_name, session_factory
from feedback.exports.cache import KINDS, CacheKey, build_key, save_rows
from feedback.exports.collector import collect_young, gc_paused
from feedback.exports.filters import ExportFilter, check_format
from feedback.exports.records import RecordBuilder
from feedback.exports.tree import TurnTree, iter_turn_trees
from feedback.models import RecordBuild, TurnBuildQueue
from feedback.subprocesses import shared_database_url, start_module, stop_module

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = [
    "BUILD_BATCH",
    "VACUUM_AFTER",
    "AheadBuilder",
    "BuildStats",
    "build_queued",
    "is_built_ahead",
    "queue_stale_kinds",
    "queued_count",
    "vacuum_kept_rows",
    "watch",
]

_log = logging.getLogger(__name__)

#: Queued turns built and kept per transaction (a few MB of oasst records at most).
BUILD_BATCH = 500
#: Turns taken off the queue by one run from which it ends with ``VACUUM (ANALYZE)``.
VACUUM_AFTER = 20_000
#: Seconds between two looks at the queue when it was empty.
DEFAULT_INTERVAL = 2.0
#: Seconds before a builder process that stopped is started again.
RESTART_SECONDS = 30.0

_QUEUE_ALL = text(
    """
    INSERT INTO turn_build_queue (user_turn_id, revision)
    SELECT id, revision FROM messages AS turn
    WHERE role = 'user' AND EXISTS (
        SELECT 1 FROM messages AS reply
        WHERE reply.parent_id = turn.id AND reply.role = 'assistant'
    )
    ON CONFLICT (user_turn_id) DO NOTHING
    """
)
_DEQUEUE = text("DELETE FROM turn_build_queue WHERE user_turn_id = :id AND revision = :revision")
_VACUUM = text("VACUUM (ANALYZE) turn_records, turn_build_queue")
_SET_KEY = text(
    "INSERT INTO record_builds (kind, build_key) VALUES (:kind, :build_key) "
    "ON CONFLICT (kind) DO UPDATE SET build_key = excluded.build_key"
)


@dataclass(slots=True)
class BuildStats:
    """What one :func:`build_queued` run did."""

    #: Queued turns taken off the queue (built, or giving no record of any kind).
    turns: int = 0
    #: Kept rows written (one per turn and kind).
    rows: int = 0
    #: Records in them.
    records: int = 0


def _kinds(formats: Iterable[str]) -> dict[str, str]:
    """One format per kind of kept row (both SFT formats are one kind)."""
    kinds: dict[str, str] = {}
    for fmt in formats:
        check_format(fmt)
        kinds.setdefault(KINDS[fmt], fmt)
    return kinds


async def queued_count(sessions: async_sessionmaker[AsyncSession]) -> int:
    """User turns waiting to be built."""
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(TurnBuildQueue)) or 0)


async def is_built_ahead(sessions: async_sessionmaker[AsyncSession], key: CacheKey) -> bool:
    """Whether ``key``'s kind is built ahead under its build key (its kept rows and the queue
    hold every turn, see above)."""
    async with sessions() as session:
        found = await session.scalar(
            select(RecordBuild.kind).where(
                RecordBuild.kind == key.kind, RecordBuild.build_key == key.build_key
            )
        )
    return found is not None


async def queue_stale_kinds(
    sessions: async_sessionmaker[AsyncSession], formats: Iterable[str], pseudonym_secret: bytes
) -> int:
    """Queue every user turn with a reply if a kind of ``formats`` was last queued for another
    build key (or never); how many turns were added to the queue."""
    kinds = _kinds(formats)
    key = build_key(pseudonym_secret)
    async with sessions() as session:
        known = dict((await session.execute(select(RecordBuild.kind, RecordBuild.build_key))).all())
        stale = [kind for kind in kinds if known.get(kind) != key]
        if not stale:
            return 0
        added = (await session.execute(_QUEUE_ALL)).rowcount or 0
        await session.execute(_SET_KEY, [{"kind": kind, "build_key": key} for kind in stale])
        await session.commit()
    _log.info("queued %d turns to build %s records ahead", added, ", ".join(stale))
    return added


async def build_queued(
    sessions: async_sessionmaker[AsyncSession],
    formats: Iterable[str],
    *,
    pseudonym_secret: bytes,
    batch_size: int = BUILD_BATCH,
    progress: Callable[[int], None] | None = None,
) -> BuildStats:
    """Build and keep the records of ``formats`` for every turn queued when the run reaches it,
    and take the turns off the queue (each batch in one transaction, kept while the next batch
    is built). Turns queued again while it runs, behind its position, wait for the next run.
    A run of :data:`VACUUM_AFTER` turns or more ends with :func:`vacuum_kept_rows`.

    Raises the database's error if a batch cannot be kept; the batches kept before stay kept.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    batches = _Batches(
        sessions,
        _kinds(formats),
        RecordBuilder(ExportFilter(), pseudonym_secret=pseudonym_secret),
        build_key(pseudonym_secret),
    )
    stats = BuildStats()
    keeping: asyncio.Future[None] | None = None
    position = 0
    try:
        with gc_paused():
            while queued := await batches.next_queued(position, batch_size):
                position = queued[-1][0]
                rows = await batches.build(queued, stats)
                if keeping is not None:
                    await keeping
                keeping = asyncio.ensure_future(batches.keep(rows, queued))
                stats.turns += len(queued)
                stats.rows += len(rows)
                del rows
                collect_young()
                if progress is not None:
                    progress(len(queued))
            if keeping is not None:
                await keeping
                keeping = None
    finally:
        if keeping is not None and not keeping.done():
            keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keeping
    if stats.turns >= VACUUM_AFTER:
        await vacuum_kept_rows(sessions)
    return stats


async def vacuum_kept_rows(sessions: async_sessionmaker[AsyncSession]) -> bool:
    """``VACUUM (ANALYZE)`` the kept rows and the queue on PostgreSQL (see Tidying above);
    whether it ran. SQLite keeps no dead rows to clear. A failure is logged, not raised: the
    records are kept, and autovacuum can still tidy them."""
    if dialect_name(sessions) != "postgresql":
        return False
    try:
        # VACUUM cannot run inside a transaction block: AUTOCOMMIT runs it alone.
        async with autocommit_engine(sessions).connect() as connection:
            await connection.execute(_VACUUM)
    except SQLAlchemyError as error:
        _log.warning("the kept records were not vacuumed after a large build: %s", error)
        return False
    _log.info("vacuumed the kept records and the build queue after a large build")
    return True


@dataclass(slots=True)
class _Batches:
    """What :func:`build_queued` does to one batch of queued turns."""

    sessions: async_sessionmaker[AsyncSession]
    #: One format per kind of kept row.
    kinds: dict[str, str]
    builder: RecordBuilder
    build_key: str

    async def next_queued(self, position: int, size: int) -> list[tuple[int, int]]:
        """Up to ``size`` queued ``(turn id, revision)`` after ``position``, in id order."""
        async with self.sessions() as session:
            rows = await session.execute(
                select(TurnBuildQueue.user_turn_id, TurnBuildQueue.revision)
                .where(TurnBuildQueue.user_turn_id > position)
                .order_by(TurnBuildQueue.user_turn_id)
                .limit(size)
            )
            return [(turn, revision) for turn, revision in rows]

    async def build(self, queued: list[tuple[int, int]], stats: BuildStats) -> list[dict[str, Any]]:
        """The kept rows of the queued turns (one read of their trees), kind by kind."""
        builder = self.builder
        keys = {kind: CacheKey(kind, self.build_key) for kind in self.kinds}
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        revisions = dict(queued)
        by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in self.kinds}
        pages = iter_turn_trees(
            self.sessions,
            ExportFilter(),
            only_ids=list(revisions),
            batch_size=len(revisions),
            prefetch=False,
            any_author=True,
        )
        async with contextlib.aclosing(pages):
            async for page in pages:
                for tree in page:
                    assert isinstance(tree, TurnTree)  # read without a cache key
                    for kind, fmt in self.kinds.items():
                        if len(tree.replies) < RecordBuilder.min_replies(fmt):
                            continue
                        lines = [
                            dumps(record, option=newline) for record in builder.records(tree, fmt)
                        ]
                        stats.records += len(lines)
                        by_kind[kind].append(
                            keys[kind].row(tree.user_turn_id, revisions[tree.user_turn_id], lines)
                        )
        # Kind by kind: an export reads one kind, so its rows lie together on disk (with the
        # kinds interleaved turn by turn, a kept PostgreSQL openai-sft export ran at 39k
        # records/s at a million events, against 52-63k kind by kind).
        return [row for rows in by_kind.values() for row in rows]

    async def keep(self, rows: list[dict[str, Any]], queued: list[tuple[int, int]]) -> None:
        """Keep ``rows`` and take the turns still at their queued revision off the queue, in
        one transaction (the save itself skips a turn that changed). The kinds this run does
        not build under its key stop counting as built ahead in the same transaction: their
        rows of these turns were not made."""
        async with self.sessions() as session:
            if rows:
                await save_rows(session, rows)
            await session.execute(
                _DEQUEUE, [{"id": turn, "revision": revision} for turn, revision in queued]
            )
            await session.execute(
                delete(RecordBuild).where(
                    or_(
                        RecordBuild.kind.not_in(list(self.kinds)),
                        RecordBuild.build_key != self.build_key,
                    )
                )
            )
            await session.commit()


async def watch(
    sessions: async_sessionmaker[AsyncSession],
    formats: Iterable[str],
    *,
    pseudonym_secret: bytes,
    stop: asyncio.Event,
    interval: float = DEFAULT_INTERVAL,
    on_build: Callable[[BuildStats], None] | None = None,
) -> None:
    """Build queued turns until ``stop`` is set, looking again every ``interval`` seconds once
    the queue is empty. A failing run (the database down, a locked file) is logged and tried
    again after ``interval``; nothing is lost, the turns stay queued. Stale kinds are queued
    once (the build key cannot change while this process runs)."""
    formats = tuple(formats)
    stale_queued = False
    while not stop.is_set():
        try:
            if not stale_queued:
                await queue_stale_kinds(sessions, formats, pseudonym_secret)
                stale_queued = True
            stats = await build_queued(sessions, formats, pseudonym_secret=pseudonym_secret)
        except (SQLAlchemyError, OSError) as error:
            _log.warning("records are not built ahead this time (trying again): %s", error)
        else:
            if stats.turns and on_build is not None:
                on_build(stats)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


class AheadBuilder:
    """Runs :func:`watch` in a child process (``python -m feedback.exports.ahead``) at low
    priority, for as long as the API serves, starting it again if it stops."""

    def __init__(
        self, url: str, pseudonym_secret: bytes, formats: tuple[str, ...], *, interval: float
    ) -> None:
        self.url = url
        self.formats = formats
        self.interval = interval
        self._secret = pseudonym_secret
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    def for_sessions(
        cls,
        sessions: async_sessionmaker[AsyncSession],
        pseudonym_secret: bytes,
        formats: tuple[str, ...],
        *,
        interval: float = DEFAULT_INTERVAL,
    ) -> AheadBuilder | None:
        """A builder for the database of ``sessions``, or ``None`` when there is nothing to
        build or another process cannot open it (in-memory SQLite)."""
        url = shared_database_url(sessions)
        if not formats or url is None:
            return None
        return cls(url, pseudonym_secret, formats, interval=interval)

    @property
    def pid(self) -> int | None:
        """The builder process's id while it runs."""
        process = self._process
        return None if process is None or process.returncode is not None else process.pid

    async def start(self) -> None:
        """Start the process and keep it running in the background."""
        self._task = asyncio.create_task(self._supervise(), name="records-ahead")

    async def _supervise(self) -> None:
        while not self._closing:
            try:
                process = self._process = await start_module("feedback.exports.ahead")
                assert process.stdin is not None
                config = {
                    "url": self.url,
                    "secret": self._secret.hex(),
                    "formats": list(self.formats),
                    "interval": self.interval,
                }
                process.stdin.write(json.dumps(config).encode() + b"\n")
                await process.stdin.drain()
                _log.info("records are built ahead by process %d", process.pid)
                code = await process.wait()
            except OSError as error:
                code = None
                _log.warning("the records builder did not start: %s", error)
            if self._closing:
                return
            _log.warning(
                "the records builder stopped (exit code %s); starting it again in %d s",
                code,
                RESTART_SECONDS,
            )
            await asyncio.sleep(RESTART_SECONDS)

    async def close(self) -> None:
        """Stop the process: it finishes the batch it is keeping (or is killed after 10 s)."""
        self._closing = True
        process = self._process
        if process is not None and process.returncode is None:
            await stop_module(process, within=10, name="records builder")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- the builder process -------------------------------------------------------------------


async def _serve(config: dict[str, Any]) -> None:
    engine = create_engine(config["url"])
    sessions = session_factory(engine)
    stop = asyncio.Event()

    async def wait_for_parent() -> None:
        # The parent closes our input when it stops, and the pipe ends if it dies.
        await asyncio.to_thread(sys.stdin.buffer.read)
        stop.set()

    parent = asyncio.create_task(wait_for_parent())
    try:
        await watch(
            sessions,
            config["formats"],
            pseudonym_secret=bytes.fromhex(config["secret"]),
            stop=stop,
            interval=float(config["interval"]),
            on_build=lambda stats: _log.info(
                "built ahead: %d turns, %d records", stats.turns, stats.records
            ),
        )
    finally:
        parent.cancel()
        await engine.dispose()


def main() -> None:
    """Build records ahead for the process that started this one (:class:`AheadBuilder`),
    reading its settings as one JSON line on standard input, until that input closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(10)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    config = json.loads(sys.stdin.buffer.readline())
    asyncio.run(_serve(config))


if __name__ == "__main__":
    main()
