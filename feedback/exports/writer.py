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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from feedback.exports.filters import FORMATS, ExportError, check_format
from feedback.exports.records import RecordBuilder
from feedback.exports.tree import DEFAULT_BATCH_SIZE, count_turns, iter_turn_trees

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from feedback.exports.cleaning import TextCleaner
    from feedback.exports.filters import ExportFilter
    from feedback.exports.tree import TurnTree
    from feedback.trust import TrustTable

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
#: Trees built between two turns of the event loop (a chunk), so the next page's reads (see
#: :func:`~feedback.exports.tree.iter_turn_trees`) progress while this page is built.
_YIELD_EVERY = 128
_LINE = orjson.OPT_APPEND_NEWLINE


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
    batch_size: int = DEFAULT_BATCH_SIZE,
    prefetch: bool = True,
    read_ahead_until: int | None = None,
    cleaner: TextCleaner | None = None,
    trust: TrustTable | None = None,
) -> AsyncIterator[list[tuple[int, list[Any]]]]:
    """``(user turn id, its records)`` of format ``fmt`` for each user turn after ``after_id``
    that gives at least one, in a stable order, a list for each chunk of turns read (a loop
    over a chunk costs less than a yield a turn). Each record is a dict.

    With ``prefetch`` the next page of ``batch_size`` turns is read while the caller consumes
    this one (two pages in memory; wasted if the caller stops early), until
    ``read_ahead_until`` turns were read (see :func:`~feedback.exports.tree.iter_turn_trees`).
    A ``cleaner`` made with the same secret may be shared between calls (its memo is reused).
    ``trust`` gives the actors' trust weights records carry (unmeasured actors' without it).
    """
    pages = _turn_record_pages(
        sessions,
        fmt,
        flt,
        pseudonym_secret=pseudonym_secret,
        after_id=after_id,
        batch_size=batch_size,
        prefetch=prefetch,
        read_ahead_until=read_ahead_until,
        cleaner=cleaner,
        trust=trust,
    )
    async with contextlib.aclosing(pages):
        async for _read, page in pages:
            batch = [(tree.user_turn_id, records) for tree, records in page]
            if batch:
                yield batch


async def _turn_record_pages(
    sessions: async_sessionmaker[AsyncSession],
    fmt: str,
    flt: ExportFilter,
    *,
    pseudonym_secret: bytes,
    after_id: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prefetch: bool = True,
    read_ahead_until: int | None = None,
    skipped: dict[str, int] | None = None,
    on_empty: Callable[[RecordBuilder, TurnTree], None] | None = None,
    cleaner: TextCleaner | None = None,
    trust: TrustTable | None = None,
) -> AsyncIterator[tuple[int, list[tuple[TurnTree, list[dict[str, Any]]]]]]:
    """The one read path of exports and API pages: user turns read by
    :func:`~feedback.exports.tree.iter_turn_trees` with the query ``fmt`` needs (times only
    for oasst, only turns with two replies for the preference formats), in chunks of
    :data:`_YIELD_EVERY`: the number of turns in the chunk and each tree that gives records of
    ``fmt``, with its records. Small chunks let a consumer write records out and drop them
    while they are young (the cyclic collector's young pass then finds few survivors), and
    let the next page's reads progress in between. ``skipped`` counts the turns left out, by
    reason (see :data:`~feedback.exports.records.SKIP_REASONS`); ``on_empty`` is called with
    each tree read that gives none."""
    check_format(fmt)
    builder = RecordBuilder(
        flt, pseudonym_secret=pseudonym_secret, skipped=skipped, cleaner=cleaner, trust=trust
    )
    pages = iter_turn_trees(
        sessions,
        flt,
        after_id=after_id,
        batch_size=batch_size,
        times=builder.needs_times(fmt),
        prefetch=prefetch,
        read_ahead_until=read_ahead_until,
        min_replies=builder.min_replies(fmt),
    )
    build = builder.records
    async with contextlib.aclosing(pages):
        async for trees in pages:
            for start in range(0, len(trees), _YIELD_EVERY):
                if start:
                    await asyncio.sleep(0)
                chunk = trees[start : start + _YIELD_EVERY]
                built: list[tuple[TurnTree, list[dict[str, Any]]]] = []
                for tree in chunk:
                    records = build(tree, fmt)
                    if records:
                        built.append((tree, records))
                    elif on_empty is not None:
                        on_empty(builder, tree)
                yield len(chunk), built


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
    skipped: dict[str, int] | None = None,
    on_empty: Callable[[RecordBuilder, TurnTree], None] | None = None,
    trust: TrustTable | None = None,
) -> dict[str, int]:
    """Write the export as JSONL; returns the record count per split (``all`` without split).

    ``progress`` is called with the number of user turns read, page by page; ``skipped``, if
    given, receives the number of turns left out by reason (conflicting verdicts, prompts
    stored before example markers); ``on_empty`` is called with each turn read that gave no
    record (see :mod:`feedback.exports.skips`); ``trust`` gives the actors' trust weights. Raises
    :class:`ExportError` for a bad format or an output that cannot be written; on any error
    (or cancellation) the temporary files are removed and nothing is renamed into place.
    """
    check_format(fmt)
    targets = split_paths(out, split)
    _check_output(out)
    files: dict[str, tuple[IO[bytes], Path]] = {}
    try:
        for name, path in targets.items():
            files[name] = _open_temporary(path)
        counts = await _write(
            sessions,
            fmt,
            flt,
            {name: handle for name, (handle, _) in files.items()},
            choose=_split_chooser(split, seed),
            pseudonym_secret=pseudonym_secret,
            progress=progress,
            batch_size=batch_size,
            skipped=skipped,
            on_empty=on_empty,
            trust=trust,
        )
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
        for handle, temporary in files.values():
            handle.close()
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
    _log.info("exported %s to %s: %s", fmt, out, counts)
    return counts


async def _write(
    sessions: async_sessionmaker[AsyncSession],
    fmt: str,
    flt: ExportFilter,
    handles: dict[str, IO[bytes]],
    *,
    choose: Callable[[int], str],
    pseudonym_secret: bytes,
    progress: Callable[[int], None] | None,
    batch_size: int,
    skipped: dict[str, int] | None = None,
    on_empty: Callable[[RecordBuilder, TurnTree], None] | None = None,
    trust: TrustTable | None = None,
) -> dict[str, int]:
    """Every record of ``fmt`` as a JSON line into the handle of its split; the count per
    split."""
    counts = dict.fromkeys(handles, 0)
    buffers: dict[str, list[bytes]] = {name: [] for name in handles}
    dumps = orjson.dumps
    pages = _turn_record_pages(
        sessions,
        fmt,
        flt,
        pseudonym_secret=pseudonym_secret,
        batch_size=batch_size,
        skipped=skipped,
        on_empty=on_empty,
        trust=trust,
    )
    async with contextlib.aclosing(pages):
        async for read, page in pages:
            for tree, records in page:
                name = choose(tree.conversation_id)
                buffer = buffers[name]
                buffer.extend([dumps(record, option=_LINE) for record in records])
                counts[name] += len(records)
                if len(buffer) >= _WRITE_CHUNK:
                    handles[name].write(b"".join(buffer))
                    buffer.clear()
            if progress is not None:
                progress(read)
    for name, buffer in buffers.items():
        handles[name].write(b"".join(buffer))
    return counts


async def dry_run_counts(
    sessions: async_sessionmaker[AsyncSession],
    flt: ExportFilter,
    *,
    pseudonym_secret: bytes,
    formats: tuple[str, ...] = FORMATS,
    progress: Callable[[int], None] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    skipped: dict[str, int] | None = None,
    trust: TrustTable | None = None,
) -> dict[str, dict[str, int]]:
    """How many records each format would have, per persona (format -> persona -> count);
    ``skipped`` and ``trust`` as in :func:`export_to_file`."""
    for fmt in formats:
        check_format(fmt)
    builder = RecordBuilder(flt, pseudonym_secret=pseudonym_secret, skipped=skipped, trust=trust)
    counts: dict[str, dict[str, int]] = {fmt: {} for fmt in formats}
    times = any(builder.needs_times(fmt) for fmt in formats)
    min_replies = _min_replies(formats)
    pages = iter_turn_trees(
        sessions, flt, batch_size=batch_size, times=times, min_replies=min_replies
    )
    async with contextlib.aclosing(pages):
        async for page in pages:
            for start in range(0, len(page), _YIELD_EVERY):
                if start:
                    await asyncio.sleep(0)
                for tree in page[start : start + _YIELD_EVERY]:
                    _count_tree(builder, tree, formats, counts)
            if progress is not None:
                progress(len(page))
    return {fmt: dict(sorted(by_persona.items())) for fmt, by_persona in counts.items()}


def _count_tree(
    builder: RecordBuilder,
    tree: TurnTree,
    formats: tuple[str, ...],
    counts: dict[str, dict[str, int]],
) -> None:
    """Add the records ``tree`` gives in each of ``formats`` to its persona's counts."""
    per_kind: dict[str, int] = {}
    for fmt in formats:
        kind = _KIND[fmt]
        if kind not in per_kind:
            per_kind[kind] = len(builder.records(tree, fmt))
        if per_kind[kind]:
            by_persona = counts[fmt]
            by_persona[tree.persona] = by_persona.get(tree.persona, 0) + per_kind[kind]


#: Formats that hold the same records in another shape count once.
_KIND = {
    "openai-sft": "sft",
    "trl-sft": "sft",
    "openai-dpo": "dpo",
    "trl-dpo": "dpo",
    "trl-kto": "kto",
    "oasst": "oasst",
}
