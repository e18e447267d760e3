"""A second process that builds the first part of each large API page.

Building a 10,000-record page is Python-bound (reading, cleaning and serialising records take
about the same), so one process uses one core however many the machine has. For a page of at
least ``min_records`` records, :func:`feedback.api.records.page` asks this helper for the
records of the first user turns after the cursor (about half the page, judged by the records
per turn of the last page of that format) while it builds the turns after those itself. The
helper sends its records serialised (orjson bytes), and the response includes them as they are
(:class:`orjson.Fragment`): the page is the same, byte for byte, as one process builds.

The helper is ``python -m feedback.api.page_worker`` (not :mod:`multiprocessing`, which would run
the caller's main module again). Protocol on its standard input and output: frames of a 4-byte
big-endian length and a pickle. The first frame is ``(database URL, pseudonym secret)``, so the
secret is never on a command line. Each request is ``(format, filter, after_id, last_id,
batch_size, keep records)``; the answer is ``("ok", turns read, [(turn key, [record bytes,
...]), ...])`` or ``("error", message)``. The helper exits when its input closes, so it never
outlives the API.

The helper answers the first frame with ``("ready",)`` once it has imported what it needs and
opened the database; until then, and whenever it is not running, pages are built in one
process (no page waits for a process to start).

Limits: one request at a time; a page that finds the helper busy (concurrent requests) is built
in one process. A helper that fails, dies or is cancelled mid-request is logged and dropped, its
page is built in one process, and a new helper starts in the background with the next large
page. An in-memory
SQLite database cannot be shared, so it gets no helper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import pickle
import signal
import struct
import sys
from typing import TYPE_CHECKING, Any, BinaryIO

from feedback.subprocesses import shared_database_url, start_module, stop_module

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from feedback.exports import ExportFilter
    from feedback.exports.cache import RecordFill

__all__ = [
    "DEFAULT_MIN_RECORDS",
    "HELPER_SHARE",
    "HelperError",
    "PageHelper",
    "Turn",
]

_log = logging.getLogger(__name__)

#: Pages asking for fewer records are built in one process: a round trip to the helper costs
#: a few milliseconds, and a small page takes little more.
DEFAULT_MIN_RECORDS = 2_000
#: The part of a page's records the helper builds. The API process also assembles the page
#: and serialises its body, so it takes the smaller share.
HELPER_SHARE = 0.5
#: Bytes a record (on average, in the last share of its format) from which a page of kept
#: records is read without the helper: handing such records over costs more than reading them.
#: Measured on PostgreSQL, 400k events: oasst pages (2.6 kB a record) p50 166-169 ms alone
#: against 188-191 ms with the helper; SFT (0.7 kB) 113 alone against 97 with it.
LARGE_RECORD_BYTES = 1_500
#: Seconds the helper has to answer (start-up, or a share of a page: a fraction of a second
#: is usual) before it is dropped as hung.
ANSWER_SECONDS = 60.0
#: Seconds before a helper that failed to start is tried again.
RETRY_SECONDS = 30
#: Largest frame either side accepts (a page's share of records is a few megabytes).
_MAX_FRAME = 1 << 30
_HEADER = struct.Struct(">I")

#: A user turn's records: its key (the user turn id) and the records, in order.
Turn = tuple[int, list[Any]]


class HelperError(RuntimeError):
    """The helper could not build its share (the page is then built in one process)."""


def _frame(value: Any) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def _check_size(size: int) -> int:
    if size > _MAX_FRAME:
        raise HelperError(f"a frame of {size} bytes is over the limit of {_MAX_FRAME}")
    return size


class PageHelper:
    """The API side of the helper: starts it, lends it to one page at a time, reads answers.

    A page calls :meth:`reserve` (``None``: build alone), then :meth:`turns` with the
    reservation, or :meth:`release` if it does not need the helper after all. A helper that is
    not running is started in the background by :meth:`reserve`; pages meanwhile are built
    alone, so no page waits for a process to start. A helper that failed to start is tried
    again after :data:`RETRY_SECONDS`.
    """

    def __init__(self, url: str, secret: bytes, *, min_records: int = DEFAULT_MIN_RECORDS) -> None:
        self.url = url
        self.min_records = min_records
        self._secret = secret
        self._process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._holder: object | None = None
        #: Records per user turn read, and ids spanned per record, by format, in the helper's
        #: last share of a page.
        self._yields: dict[str, float] = {}
        self._spans: dict[str, float] = {}
        #: By format, the id just before the first turn of the last share from the start.
        self._starts: dict[str, int] = {}
        #: By format, the bytes a record in the last share.
        self._record_bytes: dict[str, float] = {}

    @classmethod
    def for_sessions(
        cls,
        sessions: async_sessionmaker[AsyncSession],
        secret: bytes,
        *,
        min_records: int = DEFAULT_MIN_RECORDS,
    ) -> PageHelper | None:
        """A helper for the database of ``sessions``, or ``None`` for an in-memory one."""
        url = shared_database_url(sessions)
        return None if url is None else cls(url, secret, min_records=min_records)

    @property
    def pid(self) -> int | None:
        """The running helper's process id."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def start(self) -> None:
        """Start the helper if it is not running, and wait until it is ready (or failed)."""
        if self.pid is None:
            if self._starting is None:
                self._starting = asyncio.ensure_future(self._start())
            await asyncio.shield(self._starting)

    def reserve(self, limit: int) -> object | None:
        """The helper for one page of ``limit`` records, if the page is large enough and the
        helper is running and free; ``None`` otherwise (and a stopped helper starts)."""
        if limit < self.min_records or self._holder is not None:
            return None
        if self.pid is None:
            loop = asyncio.get_running_loop()
            if self._starting is None and loop.time() >= self._retry_at:
                self._starting = asyncio.ensure_future(self._start())
            return None
        self._holder = reservation = object()
        return reservation

    def release(self, reservation: object) -> None:
        """End a reservation (once its page is done with the helper); idempotent."""
        if self._holder is reservation:
            self._holder = None

    def share_turns(self, fmt: str, limit: int) -> int:
        """How many user turns to ask for: :data:`HELPER_SHARE` of ``limit`` records."""
        return max(1, math.ceil(limit * HELPER_SHARE / self._yields.get(fmt, 1.0)))

    def hands_over_large_records(self, fmt: str) -> bool:
        """Whether the last share of ``fmt`` held records of :data:`LARGE_RECORD_BYTES` or more
        on average (``False`` before any share)."""
        return self._record_bytes.get(fmt, 0.0) >= LARGE_RECORD_BYTES

    def estimated_share_end(self, fmt: str, after_id: int | None, limit: int) -> int | None:
        """Where the helper's share of a page after ``after_id`` ends, judged by the ids the
        last share of ``fmt`` spanned per record (no query); ``None`` before any share, and
        from the start (``after_id`` ``None``) before a share from the start, whose first turn
        it then starts from. A wrong guess costs balance between the processes, not records.

        Without a guess, the page asks the database where the share ends: for a preference
        format that counts each turn's replies (55 ms of a 166 ms openai-dpo page from the
        start on PostgreSQL, against 107 ms for a page from a cursor, at 400k events).
        """
        span = self._spans.get(fmt)
        if after_id is None:
            after_id = self._starts.get(fmt)
        if span is None or after_id is None:
            return None
        return after_id + max(1, math.ceil(limit * HELPER_SHARE * span))

    async def turns(
        self,
        reservation: object,
        fmt: str,
        flt: ExportFilter,
        after_id: int | None,
        last_id: int,
        batch_size: int,
        keep_records: bool = True,
    ) -> list[Turn]:
        """The records, serialised, of the user turns after ``after_id`` up to ``last_id``;
        ends the reservation. With ``keep_records`` the helper reads and keeps records as
        :func:`feedback.api.records.page` does. Raises :class:`HelperError` if the helper
        cannot answer."""
        try:
            process = self._process
            if self._holder is not reservation or process is None:
                raise HelperError("the page helper is not reserved for this page")
            request = (fmt, flt, after_id, last_id, batch_size, keep_records)
            answer = await self._ask(process, request)
        finally:
            self.release(reservation)
        if answer[0] != "ok":
            raise HelperError(f"the page helper failed: {answer[1]}")
        _, read, turns = answer
        records = sum(len(records) for _, records in turns)
        if read and records:
            self._yields[fmt] = records / read
            size = sum(len(record) for _, turn_records in turns for record in turn_records)
            self._record_bytes[fmt] = size / records
            # From the turns given, not up to ``last_id``: a share that reached the end of the
            # data (the last page) would teach a span that sends the next share far too far.
            self._spans[fmt] = (turns[-1][0] - (turns[0][0] - 1)) / records
            if after_id is None:
                self._starts[fmt] = turns[0][0] - 1
        return turns

    async def _ask(self, process: asyncio.subprocess.Process, request: Any) -> Any:
        assert process.stdin is not None and process.stdout is not None
        try:
            async with asyncio.timeout(ANSWER_SECONDS):
                process.stdin.write(_frame(request))
                await process.stdin.drain()
                size = _check_size(_HEADER.unpack(await process.stdout.readexactly(4))[0])
                return pickle.loads(await process.stdout.readexactly(size))
        except BaseException as error:
            # Out of step with the helper: it died, hung, or this request was cancelled.
            await self._drop(process)
            if isinstance(error, TimeoutError):
                raise HelperError(f"the page helper did not answer in {ANSWER_SECONDS} s") from None
            if isinstance(error, (OSError, EOFError, HelperError, pickle.PickleError)):
                raise HelperError(f"the page helper stopped: {error!r}") from None
            raise

    async def _start(self) -> None:
        process = None
        try:
            process = await start_module("feedback.api.page_worker")
            if await self._ask(process, (self.url, self._secret)) != ("ready",):
                raise HelperError("the page helper did not say it was ready")
            self._process = process
            _log.info("the page helper process (pid %d) is ready", process.pid)
        except (OSError, HelperError) as error:
            _log.warning(
                "pages are built in one process: the page helper did not start (%s); "
                "trying again in %d s",
                error,
                RETRY_SECONDS,
            )
            self._retry_at = asyncio.get_running_loop().time() + RETRY_SECONDS
            if process is not None:
                await self._drop(process)
        finally:
            self._starting = None

    async def _drop(self, process: asyncio.subprocess.Process) -> None:
        """Kill ``process`` (a helper out of step, or failing) and forget it."""
        if self._process is process:
            self._process = None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()

    async def close(self) -> None:
        """Stop the helper (it also stops by itself when this process ends)."""
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        process = self._process
        if process is not None:
            await stop_module(process, within=5, name="page helper")
            await self._drop(process)


# -- the helper process --------------------------------------------------------------------


def _read_frame(stream: BinaryIO) -> Any:
    """The next frame's value, or ``None`` once the input has closed."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    size = _check_size(_HEADER.unpack(header)[0])
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


async def _share(
    sessions: async_sessionmaker[AsyncSession],
    secret: bytes,
    request: tuple[str, ExportFilter, int | None, int, int, bool],
    retained: list[Any],
    kept: list[RecordFill],
) -> tuple[int, list[Turn]]:
    import orjson

    from feedback.exports import iter_turn_records
    from feedback.exports.cache import RecordFill

    fmt, flt, after_id, last_id, batch_size, keep_records = request
    fill = RecordFill.for_export(sessions, fmt, flt, secret, keep_records=keep_records)
    if fill is not None:
        kept.append(fill)
    turns: list[Turn] = []
    dumps = orjson.dumps
    source = iter_turn_records(
        sessions,
        fmt,
        flt,
        pseudonym_secret=secret,
        after_id=after_id,
        last_id=last_id,
        batch_size=batch_size,
        retain=retained,
        fill=fill,
    )
    async with contextlib.aclosing(source) as grouped:
        async for key, records in grouped:
            turns.append((key, [dumps(record) for record in records]))
    return sum(len(trees) for trees in retained), turns


async def _serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer requests until the input closes (see the module docstring)."""
    from feedback.database import create_engine, session_factory
    from feedback.exports.collector import collect_young, gc_paused

    start = _read_frame(requests)
    if start is None:
        return
    url, secret = start
    engine = create_engine(url)
    sessions = session_factory(engine)
    answers.write(_frame(("ready",)))
    answers.flush()
    try:
        while (request := _read_frame(requests)) is not None:
            retained: list[Any] = []
            turns: list[Turn] = []
            kept: list[RecordFill] = []
            with gc_paused():
                try:
                    read, turns = await _share(sessions, secret, request, retained, kept)
                    answer: tuple[Any, ...] = ("ok", read, turns)
                except Exception as error:
                    _log.exception("the page helper failed")
                    answer = ("error", f"{type(error).__name__}: {error}")
                answers.write(_frame(answer))
                answers.flush()
                # Freed after the answer went out, as the API frees its own pages.
                del answer, turns
                retained.clear()
                for fill in kept:
                    await fill.save()
            collect_young()
    finally:
        await engine.dispose()


def main() -> None:
    """Serve the API process on standard input and output (:mod:`feedback.api.page_worker`).

    Ctrl-C in a terminal reaches the whole process group: the helper ignores it and stops
    when the API closes its input, as the API shuts down.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_serve(sys.stdin.buffer, sys.stdout.buffer))
