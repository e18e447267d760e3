"""Streaming exports: records in a stable order, JSONL files written atomically, dry-run counts.

Order and keys: records come in user-turn id order, and within a turn in the order
:class:`~feedback.exports.records.RecordBuilder` makes them. The key yielded with each record is
its user turn's id: records of one turn share it and come together, so a pager that resumes with
``after_id=<last key it finished>`` never splits or repeats a turn.

Files: each output goes to a temporary file in the same folder (``.NAME.XXXX.tmp``) and is
renamed over ``NAME`` only when the whole export succeeded, so a failed or interrupted export
leaves no partial file behind.

Splits: a record goes to a split by a keyed hash of ``seed`` and its conversation id, so a
conversation's turns stay in one split (no context shared between train and test) and the same
data and seed give the same files byte for byte.

Large exports use two cores: a helper process (``python -m feedback.exports.helper``) writes the
second half of the user turns, by id, into its own temporary files, which are appended to the
first half's at the end; the files are the same as one process writes. Building records is
Python-bound (reading, cleaning and serialising cost about the same per turn), so a second
process is the one way past what one core does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from feedback.exports.cache import RecordFill
from feedback.exports.collector import collect_young, gc_paused
from feedback.exports.filters import FORMATS, ExportError, check_format
from feedback.exports.records import RecordBuilder
from feedback.exports.tree import (
    DEFAULT_BATCH_SIZE,
    KeptTurn,
    count_turns,
    iter_turn_trees,
    turn_id_range,
)
from feedback.subprocesses import shared_database_url, start_module

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from feedback.exports.filters import ExportFilter

__all__ = [
    "dry_run_counts",
    "export_to_file",
    "iter_records",
    "iter_turn_record_batches",
    "iter_turn_records",
    "progress_total",
    "record_to_jsonl",
    "split_paths",
]

_log = logging.getLogger(__name__)

_WRITE_CHUNK = 512
#: Trees built between two turns of the event loop, so the next page's reads (see
#: :func:`~feedback.exports.tree.iter_turn_trees`) progress while this page is built.
_YIELD_EVERY = 128
_LINE = orjson.OPT_APPEND_NEWLINE
#: Pages between two collections of the young generations while records are built: each
#: walks every live young object (two pages of trees), so once a page cost 5 % of an export;
#: the few cycles of the database layer wait a little longer to be freed.
_COLLECT_EVERY = 8
#: Selected user turns (by id span; ids are shared with replies, so it overstates them) from
#: which an export takes a helper process: starting one costs about a second of imports.
PARALLEL_MIN_TURNS = 50_000


def record_to_jsonl(record: dict[str, Any]) -> str:
    """One JSON line (no trailing newline): compact, UTF-8, keys in the record's order."""
    return orjson.dumps(record).decode("utf-8")


async def iter_records(
    sessions: async_sessionmaker[AsyncSession],
    fmt: str,
    flt: ExportFilter,
    *,
    pseudonym_secret: bytes,
    **options: Any,
) -> AsyncIterator[tuple[int, Any]]:
    """``(user turn id, record)`` of format ``fmt``, one record at a time, in a stable order
    (the options are :func:`iter_turn_records`')."""
    turns = iter_turn_records(sessions, fmt, flt, pseudonym_secret=pseudonym_secret, **options)
    async with contextlib.aclosing(turns):
        async for key, records in turns:
            for record in records:
                yield key, record


async def iter_turn_records(
    sessions: async_sessionmaker[AsyncSession],
    fmt: str,
    flt: ExportFilter,
    *,
    pseudonym_secret: bytes,
    **options: Any,
) -> AsyncIterator[tuple[int, list[Any]]]:
    """``(user turn id, its records)`` of format ``fmt`` for each user turn that gives at least
    one, in a stable order (the options are :func:`iter_turn_record_batches`')."""
    batches = iter_turn_record_batches(
        sessions, fmt, flt, pseudonym_secret=pseudonym_secret, **options
    )
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for turn in batch:
                yield turn


async def iter_turn_record_batches(
    sessions: async_sessionmaker[AsyncSession],
    fmt: str,
    flt: ExportFilter,
    *,
    pseudonym_secret: bytes,
    after_id: int | None = None,
    last_id: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prefetch: bool = True,
    read_ahead_until: int | None = None,
    read_two_ahead: bool = False,
    retain: list[Any] | None = None,
    fill: RecordFill | None = None,
) -> AsyncIterator[list[tuple[int, list[Any]]]]:
    """``(user turn id, its records)`` of format ``fmt`` for each user turn after ``after_id``
    (up to ``last_id`` included, when given) that gives at least one, in a stable order, a
    list for each page of turns read (a loop over a page costs less than a yield a turn).

    Each record is a dict, or, with a ``fill``, an :class:`orjson.Fragment` of its JSON line
    (the bytes ``orjson.dumps`` gives the dict, and the newline that ends it in a kept row:
    whitespace to JSON; cutting it off copied every record, 45 ms for a 26 MB oasst page):
    turns with valid kept records are not built again, and the records of the others are added
    to ``fill``, which the caller saves when it suits it (see :mod:`feedback.exports.cache`).

    With ``prefetch`` the next page of ``batch_size`` turns is read while the caller consumes
    this one (two pages in memory; wasted if the caller stops early), until
    ``read_ahead_until`` turns were read, and also the page after the next with
    ``read_two_ahead`` (see :func:`~feedback.exports.tree.iter_turn_trees`).
    Each page of trees read is appended to ``retain`` when it is given, so the caller decides
    when they are freed (freeing a page of trees costs about a third of building its records).
    """
    check_format(fmt)
    builder = RecordBuilder(flt, pseudonym_secret=pseudonym_secret)
    pages = iter_turn_trees(
        sessions,
        flt,
        after_id=after_id,
        last_id=last_id,
        batch_size=batch_size,
        times=builder.needs_times(fmt),
        prefetch=prefetch,
        read_ahead_until=read_ahead_until,
        min_replies=builder.min_replies(fmt),
        cache=None if fill is None else fill.key,
        read_two_ahead=read_two_ahead,
    )
    dumps, fragment = orjson.dumps, orjson.Fragment
    async with contextlib.aclosing(pages):
        async for page in pages:
            if retain is not None:
                retain.append(page)
            batch: list[tuple[int, list[Any]]] = []
            for index, tree in enumerate(page):
                if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                if type(tree) is KeptTurn:
                    if not tree.size:
                        continue
                    if tree.size == 1:
                        records: list[Any] = [fragment(tree.records)]
                    else:
                        records = [fragment(line) for line in tree.records.splitlines(True)]
                elif fill is None:
                    records = builder.records(tree, fmt)
                else:
                    built = [dumps(record) + b"\n" for record in builder.records(tree, fmt)]
                    fill.add(tree.user_turn_id, tree.revision, built)
                    records = [fragment(line) for line in built]
                if records:
                    batch.append((tree.user_turn_id, records))
            if batch:
                yield batch


async def progress_total(
    sessions: async_sessionmaker[AsyncSession], flt: ExportFilter, formats: tuple[str, ...]
) -> int:
    """The user turns an export (or dry run) of ``formats`` reads: the total of the turns its
    ``progress`` callback reports (preference formats read only turns with two replies)."""
    for fmt in formats:
        check_format(fmt)
    return await count_turns(sessions, flt, min_replies=_min_replies(formats))


def _min_replies(formats: tuple[str, ...]) -> int:
    """Replies a turn needs to give a record of any of ``formats`` (what a pass over them
    reads, see :meth:`RecordBuilder.min_replies`)."""
    return min(RecordBuilder.min_replies(fmt) for fmt in formats)


def split_paths(out: Path, split: dict[str, float] | None) -> dict[str, Path]:
    """Output file per split: ``out`` itself (key ``all``), or ``STEM.NAME.SUFFIX`` beside it."""
    if not split:
        return {"all": out}
    return {name: out.with_name(f"{out.stem}.{name}{out.suffix}") for name in split}


def _split_chooser(split: dict[str, float] | None, seed: int) -> Callable[[int], str]:
    if not split:
        return lambda _conversation_id: "all"
    bounds: list[tuple[float, str]] = []
    total = 0.0
    for name, fraction in split.items():
        total += fraction
        bounds.append((total, name))
    last = bounds[-1][1]
    salt = str(seed).encode()
    chosen: dict[int, str] = {}

    def choose(conversation_id: int) -> str:
        name = chosen.get(conversation_id)
        if name is not None:
            return name
        digest = hashlib.blake2b(str(conversation_id).encode(), key=salt[:64], digest_size=8)
        point = int.from_bytes(digest.digest(), "big") / 2**64
        name = next((name for bound, name in bounds if point < bound), last)
        if len(chosen) < 100_000:
            chosen[conversation_id] = name
        return name

    return choose


def _check_output(out: Path) -> None:
    if out.is_dir():
        raise ExportError(f"cannot write {out}: it is a folder")


def _open_temporary(path: Path) -> tuple[IO[bytes], Path]:
    folder = path.parent
    if not folder.is_dir():
        raise ExportError(f"cannot write {path}: the folder {folder} does not exist")
    try:
        descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise ExportError(f"cannot write {path}: {error.strerror or error}") from None
    return os.fdopen(descriptor, "wb", buffering=1 << 20), Path(name)


async def export_to_file(
    sessions: async_sessionmaker[AsyncSession],
    fmt: str,
    flt: ExportFilter,
    out: Path,
    *,
    split: dict[str, float] | None = None,
    seed: int = 0,
    pseudonym_secret: bytes,
    progress: Callable[[int], None] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    parallel_min_turns: int = PARALLEL_MIN_TURNS,
    keep_records: bool = True,
) -> dict[str, int]:
    """Write the export as JSONL; returns the record count per split (``all`` without split).

    When the selected user turns span at least ``parallel_min_turns`` ids, a helper process
    exports the second half of them into its own temporary files while this one exports the
    first half; its files are appended to these (same bytes as one process would write, in
    the same order). A database the helper cannot open (in-memory SQLite) is exported in one
    process.

    ``progress`` is called with the number of user turns read, page by page (the helper's
    turns when it finishes). Raises :class:`ExportError` for a bad format or an output that
    cannot be written; on any error (or cancellation) the helper is stopped, the temporary
    files are removed and nothing is renamed into place.

    With ``keep_records`` (and a filter that allows it), turns whose records were kept by an
    earlier export or page are not built again, and the records built now are kept (see
    :mod:`feedback.exports.cache`); the files are the same either way.
    """
    check_format(fmt)
    targets = split_paths(out, split)
    _check_output(out)
    files: dict[str, tuple[IO[bytes], Path]] = {}
    helper: _Helper | None = None
    try:
        for name, path in targets.items():
            files[name] = _open_temporary(path)
        part = _Part(fmt, flt, pseudonym_secret, split, seed, batch_size, keep_records)
        helper = await _start_helper(sessions, part, targets, parallel_min_turns)
        counts = await part.write(
            sessions,
            {name: handle for name, (handle, _) in files.items()},
            progress=progress,
            last_id=None if helper is None else helper.after_id,
        )
        if helper is not None:
            helper_counts, helper_turns = await helper.result()
            for name, (handle, _) in files.items():
                _append(handle, helper.paths[name])
                counts[name] += helper_counts[name]
            if progress is not None:
                progress(helper_turns)
        for handle, _ in files.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        for name, (_, temporary) in files.items():
            os.chmod(temporary, 0o644)
            os.replace(temporary, targets[name])
        files.clear()
    except OSError as error:
        raise ExportError(f"cannot write {out}: {error.strerror or error}") from None
    finally:
        if helper is not None:
            helper.stop()
        for handle, temporary in files.values():
            handle.close()
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
    _log.info("exported %s to %s: %s", fmt, out, counts)
    return counts


@dataclass(frozen=True)
class _Part:
    """What one process of an export writes: everything but the database and the files."""

    fmt: str
    flt: ExportFilter
    pseudonym_secret: bytes
    split: dict[str, float] | None
    seed: int
    batch_size: int
    keep_records: bool = True

    async def write(
        self,
        sessions: async_sessionmaker[AsyncSession],
        handles: dict[str, IO[bytes]],
        *,
        progress: Callable[[int], None] | None = None,
        after_id: int | None = None,
        last_id: int | None = None,
    ) -> dict[str, int]:
        """Records of the user turns after ``after_id`` up to ``last_id`` into ``handles``
        (one per split); returns the record count per split."""
        builder = RecordBuilder(self.flt, pseudonym_secret=self.pseudonym_secret)
        choose = _split_chooser(self.split, self.seed)
        counts = dict.fromkeys(handles, 0)
        buffers: dict[str, list[bytes]] = {name: [] for name in handles}
        dumps = orjson.dumps
        fill = RecordFill.for_export(
            sessions, self.fmt, self.flt, self.pseudonym_secret, keep_records=self.keep_records
        )
        read = 0
        with gc_paused():
            pages = iter_turn_trees(
                sessions,
                self.flt,
                after_id=after_id,
                last_id=last_id,
                batch_size=self.batch_size,
                times=builder.needs_times(self.fmt),
                min_replies=builder.min_replies(self.fmt),
                cache=None if fill is None else fill.key,
            )
            async with contextlib.aclosing(pages):
                async for page in pages:
                    read += 1
                    if read % _COLLECT_EVERY == 0:
                        collect_young()
                    for index, tree in enumerate(page):
                        if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                            await asyncio.sleep(0)
                        if type(tree) is KeptTurn:
                            if not tree.size:
                                continue
                            name = choose(tree.conversation_id)
                            buffer = buffers[name]
                            buffer.append(tree.records)
                            counts[name] += tree.size
                        else:
                            lines = [
                                dumps(record, option=_LINE)
                                for record in builder.records(tree, self.fmt)
                            ]
                            if fill is not None:
                                fill.add(tree.user_turn_id, tree.revision, lines)
                            if not lines:
                                continue
                            name = choose(tree.conversation_id)
                            buffer = buffers[name]
                            buffer.extend(lines)
                            counts[name] += len(lines)
                        if len(buffer) >= _WRITE_CHUNK:
                            handles[name].write(b"".join(buffer))
                            buffer.clear()
                    if fill is not None:
                        await fill.save()
                    if progress is not None:
                        progress(len(page))
        for name, buffer in buffers.items():
            handles[name].write(b"".join(buffer))
        return counts


@dataclass
class _Helper:
    """The process exporting the user turns after ``after_id`` into ``paths`` (one per split)."""

    process: asyncio.subprocess.Process
    after_id: int
    paths: dict[str, Path]

    async def result(self) -> tuple[dict[str, int], int]:
        """Its record counts per split and the user turns it read, once it is done."""
        output, errors = await self.process.communicate()
        if self.process.returncode != 0:
            last = errors.decode(errors="replace").strip().splitlines()[-1:]
            raise ExportError(f"the export's helper process failed: {' '.join(last)}")
        counts, turns = orjson.loads(output)
        return counts, turns

    def stop(self) -> None:
        """End the process if it still runs, and remove its files."""
        if self.process.returncode is None:
            self.process.kill()
        for path in self.paths.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


async def _start_helper(
    sessions: async_sessionmaker[AsyncSession],
    part: _Part,
    targets: dict[str, Path],
    min_turns: int,
) -> _Helper | None:
    """A helper for the second half of the selected user turns, if they are many enough.

    It runs ``python -m feedback.exports.helper`` (not :mod:`multiprocessing`, which would run
    the caller's main module again) and reads its job, pickled, on standard input.
    """
    url = shared_database_url(sessions)
    if url is None:
        return None
    first, last = await turn_id_range(sessions, part.flt)
    if first is None or last is None or last - first < min_turns:
        return None
    after_id = (first + last) // 2
    paths: dict[str, Path] = {}
    try:
        for name, path in targets.items():
            handle, paths[name] = _open_temporary(path)
            handle.close()
        process = await start_module("feedback.exports.helper", capture_errors=True)
    except BaseException:
        for temporary in paths.values():
            temporary.unlink()
        raise
    assert process.stdin is not None
    process.stdin.write(pickle.dumps((url, part, after_id, paths)))
    process.stdin.close()
    return _Helper(process, after_id, paths)


async def run_helper(job: bytes) -> tuple[dict[str, int], int]:
    """The helper process's work (see :func:`_start_helper`): export the user turns after the
    job's ``after_id`` into its files; returns the counts per split and the turns read."""
    from feedback.database import create_engine, session_factory

    url, part, after_id, paths = pickle.loads(job)
    engine = create_engine(url)
    turns = 0

    def count(read: int) -> None:
        nonlocal turns
        turns += read

    handles = {name: path.open("wb", buffering=1 << 20) for name, path in paths.items()}
    try:
        sessions = session_factory(engine)
        counts = await part.write(sessions, handles, progress=count, after_id=after_id)
    finally:
        for handle in handles.values():
            handle.close()
        await engine.dispose()
    return counts, turns


def _append(handle: IO[bytes], path: Path) -> None:
    """Append the file at ``path`` to ``handle`` inside the kernel (no copy through Python)."""
    handle.flush()
    with path.open("rb") as source:
        left = os.fstat(source.fileno()).st_size
        while left > 0:
            copied = os.copy_file_range(source.fileno(), handle.fileno(), left)
            if copied == 0:
                raise OSError(f"{path} ended early")
            left -= copied


async def dry_run_counts(
    sessions: async_sessionmaker[AsyncSession],
    flt: ExportFilter,
    *,
    pseudonym_secret: bytes,
    formats: tuple[str, ...] = FORMATS,
    progress: Callable[[int], None] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, dict[str, int]]:
    """How many records each format would have, per persona (format -> persona -> count)."""
    for fmt in formats:
        check_format(fmt)
    builder = RecordBuilder(flt, pseudonym_secret=pseudonym_secret)
    counts: dict[str, dict[str, int]] = {fmt: {} for fmt in formats}
    times = any(builder.needs_times(fmt) for fmt in formats)
    min_replies = _min_replies(formats)
    read = 0
    with gc_paused():
        pages = iter_turn_trees(
            sessions, flt, batch_size=batch_size, times=times, min_replies=min_replies
        )
        async with contextlib.aclosing(pages):
            async for page in pages:
                read += 1
                if read % _COLLECT_EVERY == 0:
                    collect_young()
                for index, tree in enumerate(page):
                    if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                        await asyncio.sleep(0)
                    per_kind: dict[str, int] = {}
                    for fmt in formats:
                        kind = _KIND[fmt]
                        if kind not in per_kind:
                            per_kind[kind] = len(builder.records(tree, fmt))
                        if per_kind[kind]:
                            by_persona = counts[fmt]
                            by_persona[tree.persona] = (
                                by_persona.get(tree.persona, 0) + per_kind[kind]
                            )
                if progress is not None:
                    progress(len(page))
    return {fmt: dict(sorted(by_persona.items())) for fmt, by_persona in counts.items()}


#: Formats that hold the same records in another shape count once.
_KIND = {
    "openai-sft": "sft",
    "trl-sft": "sft",
    "openai-dpo": "dpo",
    "trl-dpo": "dpo",
    "trl-kto": "kto",
    "oasst": "oasst",
}
