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

from feedback.exports.collector import collect_young, gc_paused
from feedback.exports.filters import FORMATS, ExportError, check_format
from feedback.exports.records import RecordBuilder
from feedback.exports.tree import DEFAULT_BATCH_SIZE, iter_turn_trees

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from feedback.exports.filters import ExportFilter

__all__ = [
    "dry_run_counts",
    "export_to_file",
    "iter_records",
    "record_to_jsonl",
    "split_paths",
]

_log = logging.getLogger(__name__)

_WRITE_CHUNK = 512
#: Trees built between two turns of the event loop, so the next page's reads (see
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
    after_id: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prefetch: bool = True,
) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """``(user turn id, record)`` of format ``fmt`` after ``after_id``, in a stable order.

    With ``prefetch`` the next page of ``batch_size`` turns is read while the caller consumes
    this one (two pages in memory; wasted if the caller stops early).
    """
    check_format(fmt)
    builder = RecordBuilder(flt, pseudonym_secret=pseudonym_secret)
    pages = iter_turn_trees(
        sessions,
        flt,
        after_id=after_id,
        batch_size=batch_size,
        times=builder.needs_times(fmt),
        prefetch=prefetch,
    )
    async with contextlib.aclosing(pages):
        async for page in pages:
            for index, tree in enumerate(page):
                if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                for record in builder.records(tree, fmt):
                    yield tree.user_turn_id, record


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
) -> dict[str, int]:
    """Write the export as JSONL; returns the record count per split (``all`` without split).

    ``progress`` is called with the number of user turns read, page by page. Raises
    :class:`ExportError` for a bad format or an output that cannot be written; on any error
    (or cancellation) the temporary files are removed and nothing is renamed into place.
    """
    check_format(fmt)
    targets = split_paths(out, split)
    _check_output(out)
    choose = _split_chooser(split, seed)
    builder = RecordBuilder(flt, pseudonym_secret=pseudonym_secret)
    files: dict[str, tuple[IO[bytes], Path]] = {}
    counts = dict.fromkeys(targets, 0)
    with gc_paused():
        try:
            for name, path in targets.items():
                files[name] = _open_temporary(path)
            buffers: dict[str, list[bytes]] = {name: [] for name in targets}
            dumps = orjson.dumps
            pages = iter_turn_trees(
                sessions, flt, batch_size=batch_size, times=builder.needs_times(fmt)
            )
            async with contextlib.aclosing(pages):
                async for page in pages:
                    collect_young()
                    for index, tree in enumerate(page):
                        if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                            await asyncio.sleep(0)
                        records = builder.records(tree, fmt)
                        if not records:
                            continue
                        name = choose(tree.conversation_id)
                        buffer = buffers[name]
                        for record in records:
                            buffer.append(dumps(record, option=_LINE))
                        counts[name] += len(records)
                        if len(buffer) >= _WRITE_CHUNK:
                            files[name][0].write(b"".join(buffer))
                            buffer.clear()
                    if progress is not None:
                        progress(len(page))
            for name, buffer in buffers.items():
                files[name][0].write(b"".join(buffer))
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
    with gc_paused():
        pages = iter_turn_trees(sessions, flt, batch_size=batch_size, times=times)
        async with contextlib.aclosing(pages):
            async for page in pages:
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
