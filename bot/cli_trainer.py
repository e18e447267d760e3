"""``greenroom export`` and ``report``: the correction queue as training data and plots.

Typer command functions; ``bot/cli.py`` registers them (``app.command("export")(export_command)``).
Bad input (unknown format, inverted time range, bad split, unwritable output) ends the command
with one line on standard error and exit code 2, and leaves no partial file behind.

The pseudonym key (the HMAC key of ``user_…``/``actor_…``/``name_…`` pseudonyms) comes from
:func:`bot.runtime.pseudonym_secret`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.cli_common import err_console, fail, with_database
from bot.runtime import pseudonym_secret
from bot.settings import ConfigError, load_settings
from feedback.erasure import encode_feed_cursor, feed_position
from feedback.exports import (
    FORMATS,
    ExportError,
    ExportFilter,
    check_format,
    dry_run_counts,
    export_to_file,
    parse_split,
    parse_time,
    progress_total,
    split_paths,
)
from feedback.exports.manifest import build_manifest, write_manifest
from feedback.exports.skips import classify, explain, unread_turns

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from bot.settings import Settings
    from feedback.exports import RecordBuilder, TurnTree


__all__ = ["export_command", "report_command"]

#: The environment variable that holds the pseudonym secret (until a setting exists).


def _run(
    job: Callable[[async_sessionmaker[AsyncSession], bytes, Settings], Awaitable[Any]],
) -> Any:
    """Open the configured database, run ``job`` with the pseudonym key and the settings,
    errors as one line."""
    try:
        settings = load_settings()
        secret = pseudonym_secret(settings)
    except ConfigError as error:
        fail(str(error))
    return with_database(
        settings, lambda sessions: job(sessions, secret, settings), user_errors=(ExportError,)
    )


def _filter(
    since: str | None,
    until: str | None,
    persona: str | None,
    min_rating: int | None,
    tags: list[str] | None,
) -> ExportFilter:
    return ExportFilter(
        since=parse_time(since, option="--since") if since else None,
        until=parse_time(until, option="--until") if until else None,
        persona=persona,
        min_rating=min_rating,
        tags=tuple(tags or ()),
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


def export_command(
    fmt: Annotated[
        str | None,
        typer.Option("--format", help=f"One of: {', '.join(FORMATS)}.", show_default=False),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="JSONL file to write (split files go beside it).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only turns from this time (ISO 8601, inclusive).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only turns before this time (ISO 8601, exclusive).")
    ] = None,
    persona: Annotated[str | None, typer.Option(help="Only this persona.")] = None,
    min_rating: Annotated[
        int | None, typer.Option(help="Mean rating (1-5) from which a rated reply is good [4].")
    ] = None,
    tags: Annotated[
        list[str] | None,
        typer.Option(help="Only records whose reply carries one of these tags (repeat or a,b)."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Split by conversation, e.g. train=0.9,test=0.1.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split assignment.")] = 0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print record counts per format and persona.")
    ] = False,
) -> None:
    """Export corrections as training data (JSONL), streaming, with consent and redaction."""
    try:
        if fmt is not None:
            check_format(fmt)
        flt = _filter(since, until, persona, min_rating, tags)
        splits = parse_split(split) if split else None
    except ExportError as error:
        fail(str(error))
    skipped: dict[str, int] = {}
    if dry_run:
        formats = (fmt,) if fmt else FORMATS
        counts = _run(
            lambda sessions, key, _settings: _dry_run(sessions, key, flt, formats, skipped)
        )
        _print_counts(counts)
        _print_skipped(skipped)
        return
    if fmt is None:
        fail(f"--format is required; use one of: {', '.join(FORMATS)}")
    if out is None:
        fail("--out is required: the JSONL file to write")
    summary = _run(
        lambda sessions, key, _settings: _export(sessions, key, fmt, flt, out, splits, seed)
    )
    _print_summary(fmt, summary)


def _print_skipped(skipped: dict[str, int]) -> None:
    """One line per reason turns were left out of the records (see ``SKIP_REASONS``)."""
    for reason, turns in sorted(skipped.items()):
        noun = "turn" if turns == 1 else "turns"
        Console().print(f"{turns:,} {noun} skipped: {reason}", highlight=False, soft_wrap=True)


@dataclass
class _Summary:
    """What an export wrote (records and manifest per file) and the user turns it skipped."""

    files: dict[Path, tuple[int, Path]]
    skipped: Counter[str]


async def _export(
    sessions: async_sessionmaker[AsyncSession],
    secret: bytes,
    fmt: str,
    flt: ExportFilter,
    out: Path,
    splits: dict[str, float] | None,
    seed: int,
) -> _Summary:
    """Export, then write each file's manifest; the erasure feed's cursor is read first, so
    any erasure that raced the export is after it."""
    cursor = encode_feed_cursor(await feed_position(sessions))
    exported_at = datetime.now(UTC)
    skipped: Counter[str] = Counter(await unread_turns(sessions, flt, fmt))
    left_out: dict[str, int] = {}  # turns the record builder left out, by its reason
    accounted = 0

    def on_empty(builder: RecordBuilder, tree: TurnTree) -> None:
        nonlocal accounted
        if sum(left_out.values()) > accounted:  # the builder left this turn out and said why
            accounted = sum(left_out.values())
            return
        skipped[classify(builder, tree, fmt)] += 1

    total = await progress_total(sessions, flt, (fmt,))
    with _progress() as progress:
        task = progress.add_task(f"export {fmt}", total=total)
        counts = await export_to_file(
            sessions,
            fmt,
            flt,
            out,
            split=splits,
            seed=seed,
            pseudonym_secret=secret,
            progress=lambda turns: progress.advance(task, turns),
            skipped=left_out,
            on_empty=on_empty,
        )
    skipped.update(left_out)
    reasons = {k: v for k, v in skipped.most_common() if k != "outside_filter"}
    files: dict[Path, tuple[int, Path]] = {}
    for name, path in split_paths(out, splits).items():
        manifest = build_manifest(
            fmt=fmt,
            flt=flt,
            records=counts[name],
            erasure_cursor=cursor,
            exported_at=exported_at,
            split=None if name == "all" else name,
            seed=None if name == "all" else seed,
            skipped=reasons,
        )
        files[path] = (counts[name], write_manifest(path, manifest))
    return _Summary(files, skipped)


def _print_summary(fmt: str, summary: _Summary) -> None:
    """Records and manifest per file; when turns gave no record, how many and why, with the
    fix for each reason (an export of 0 records always says why)."""
    console = Console(highlight=False, soft_wrap=True)
    for path, (count, manifest) in summary.files.items():
        console.print(f"wrote {count:,} {fmt} records to {path} (manifest: {manifest.name})")
    written = sum(count for count, _ in summary.files.values())
    skipped = Counter(summary.skipped)
    outside = skipped.pop("outside_filter", 0)
    if written == 0 and not skipped:
        if outside:
            console.print(
                f"0 records: no user turn matches --since/--until/--persona "
                f"({outside:,} stored turns are outside them)"
            )
        else:
            console.print("0 records: no user turns are stored yet")
        return
    if not skipped:
        return
    turns = sum(skipped.values())
    console.print(f"{turns:,} user turns gave no {fmt} record:")
    for reason, count in skipped.most_common():
        console.print(f"  {count:,} {explain(reason)}")


async def _dry_run(
    sessions: async_sessionmaker[AsyncSession],
    secret: bytes,
    flt: ExportFilter,
    formats: tuple[str, ...],
    skipped: dict[str, int],
) -> dict[str, dict[str, int]]:
    total = await progress_total(sessions, flt, formats)
    with _progress() as progress:
        task = progress.add_task("count", total=total)
        return await dry_run_counts(
            sessions,
            flt,
            pseudonym_secret=secret,
            formats=formats,
            progress=lambda turns: progress.advance(task, turns),
            skipped=skipped,
        )


def _print_counts(counts: dict[str, dict[str, int]]) -> None:
    table = Table("format", "persona", "records")
    for fmt, by_persona in counts.items():
        if not by_persona:
            table.add_row(fmt, "-", "0")
        for persona, count in by_persona.items():
            table.add_row(fmt, persona, f"{count:,}")
        if len(by_persona) > 1:
            table.add_row(fmt, "[b]all[/]", f"[b]{sum(by_persona.values()):,}[/]")
    Console().print(table)


def report_command(
    out: Annotated[Path, typer.Option(help="Folder to write the plots and index.html into.")],
    persona: Annotated[str | None, typer.Option(help="Only this persona.")] = None,
) -> None:
    """Plot ratings, rewrite rate by turn depth, tags, actors, agreement and flag verdicts."""
    from feedback.report import ReportError, write_report

    def job(
        sessions: async_sessionmaker[AsyncSession], secret: bytes, _settings: Settings
    ) -> Awaitable[Path]:
        return write_report(sessions, out, persona=persona, pseudonym_secret=secret)

    try:
        page = _run(job)
    except ReportError as error:  # raised before any database work for a bad folder
        fail(str(error))
    Console().print(f"wrote {page}", highlight=False, soft_wrap=True)
