"""``greenroom export``, ``report`` and ``actors stats``: the correction queue as training data,
plots, and the actors' reliability.

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
from feedback.exports.card import CardFacts, dataset_card, write_dataset_card
from feedback.exports.filters import check_dimensions
from feedback.exports.manifest import build_manifest, write_manifest
from feedback.exports.skips import classify, explain, unread_turns
from feedback.rubric import Rubric, RubricError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from bot.settings import Settings
    from feedback.exports import RecordBuilder, TurnTree
    from feedback.trust import TrustTable


__all__ = ["actor_table", "actors_app", "export_command", "report_command", "rubric_dimensions"]

actors_app = typer.Typer(no_args_is_help=True, help="Actors' reliability.")


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
    *,
    min_reviews: int | None = None,
    min_agreement: float | None = None,
    min_trust: float | None = None,
    dimensions: list[str] | None = None,
) -> ExportFilter:
    return ExportFilter(
        since=parse_time(since, option="--since") if since else None,
        until=parse_time(until, option="--until") if until else None,
        persona=persona,
        min_rating=min_rating,
        tags=tuple(tags or ()),
        min_reviews=min_reviews,
        min_agreement=min_agreement,
        min_trust=min_trust,
        dimensions=tuple(dimensions or ()),
    )


def _rubric(settings: Settings, persona: str | None) -> Rubric:
    """The deployment's rubric, with ``persona``'s card dimensions when it names one."""
    rubric = settings.rubric.rubric()
    if persona is None:
        return rubric
    from personas import PersonaRegistry

    registry = PersonaRegistry.load(settings.persona_search_dirs)
    if persona not in registry.names():
        return rubric
    try:
        return rubric.extended(registry.get(persona).greenroom.rubric)
    except RubricError:
        return rubric


def rubric_dimensions(settings: Settings) -> set[str]:
    """The deployment rubric's dimension names and those the loaded persona cards add."""
    from personas import PersonaRegistry

    registry = PersonaRegistry.load(settings.persona_search_dirs)
    return set(settings.rubric.rubric().names) | {
        str(dimension.get("name"))
        for name in registry.names()
        for dimension in registry.get(name).greenroom.rubric
    }


@dataclass
class _ReviewFacts:
    """What an export needs of the reviews: trust weights, and the card's facts."""

    trust: TrustTable
    facts: CardFacts


async def _review_facts(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, flt: ExportFilter
) -> _ReviewFacts:
    """Read the reviews once: every actor's trust weight, the agreement figures (of
    ``--persona``'s reviews when given), and check the ``--dimension`` names against the
    rubric, the cards and the dimensions reviews scored."""
    from feedback.review_data import OVERALL, dimension_agreement, load_reviews
    from feedback.trust import TrustTable, compute_actor_stats

    table = await load_reviews(sessions)
    rubric = _rubric(settings, flt.persona)
    if flt.dimensions:
        known = {*rubric_dimensions(settings), *table.dimensions, OVERALL}
        check_dimensions(flt, known)
    trust = TrustTable({a.actor_id: a.trust for a in compute_actor_stats(table)})
    if flt.persona is not None:
        table = await load_reviews(sessions, persona=flt.persona)
    facts = CardFacts(
        rubric={
            "version": rubric.version,
            "dimensions": [{"name": d.name, "label": d.label} for d in rubric.dimensions],
        },
        agreement=[figure.as_dict() for figure in dimension_agreement(table)],
        reviews=len(table),
        actors=int(table.frame["actor_id"].nunique()) if len(table) else 0,
    )
    return _ReviewFacts(trust, facts)


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
    min_reviews: Annotated[
        int | None, typer.Option(help="Only replies with at least this many reviews (1-100).")
    ] = None,
    min_agreement: Annotated[
        float | None,
        typer.Option(help="Only replies whose reviews agree at least this much (0-1)."),
    ] = None,
    min_trust: Annotated[
        float | None,
        typer.Option(help="Only replies whose deciding actors' mean trust reaches this (0-1)."),
    ] = None,
    dimension: Annotated[
        list[str] | None,
        typer.Option(
            help="Only replies whose consensus score passes, e.g. fidelity>=4 (repeat; "
            ">=, <=, >, <, =; overall: the reviews' rating)."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print record counts per format and persona.")
    ] = False,
) -> None:
    """Export corrections as training data (JSONL), streaming, with consent and redaction;
    writes a manifest beside each file and a dataset card (README.md) in the folder."""
    try:
        if fmt is not None:
            check_format(fmt)
        flt = _filter(
            since,
            until,
            persona,
            min_rating,
            tags,
            min_reviews=min_reviews,
            min_agreement=min_agreement,
            min_trust=min_trust,
            dimensions=dimension,
        )
        splits = parse_split(split) if split else None
    except ExportError as error:
        fail(str(error))
    skipped: dict[str, int] = {}
    if dry_run:
        formats = (fmt,) if fmt else FORMATS
        counts = _run(
            lambda sessions, key, settings: _dry_run(sessions, key, settings, flt, formats, skipped)
        )
        _print_counts(counts)
        _print_skipped(skipped)
        return
    if fmt is None:
        fail(f"--format is required; use one of: {', '.join(FORMATS)}")
    if out is None:
        fail("--out is required: the JSONL file to write")
    summary = _run(
        lambda sessions, key, settings: _export(
            sessions, key, settings, fmt, flt, out, splits, seed
        )
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
    card: Path | None = None


async def _export(
    sessions: async_sessionmaker[AsyncSession],
    secret: bytes,
    settings: Settings,
    fmt: str,
    flt: ExportFilter,
    out: Path,
    splits: dict[str, float] | None,
    seed: int,
) -> _Summary:
    """Export, then write each file's manifest and the folder's dataset card; the erasure
    feed's cursor is read first, so any erasure that raced the export is after it."""
    reviews = await _review_facts(sessions, settings, flt)
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
            trust=reviews.trust,
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
    facts = reviews.facts
    facts["erasure_cursor"] = cursor
    facts["skipped"] = reasons
    card = dataset_card(
        fmt=fmt,
        files={name: (path, counts[name]) for name, path in split_paths(out, splits).items()},
        flt=flt,
        exported_at=exported_at,
        facts=facts,
    )
    return _Summary(files, skipped, write_dataset_card(out, card))


def _print_summary(fmt: str, summary: _Summary) -> None:
    """Records and manifest per file; when turns gave no record, how many and why, with the
    fix for each reason (an export of 0 records always says why)."""
    console = Console(highlight=False, soft_wrap=True)
    for path, (count, manifest) in summary.files.items():
        console.print(f"wrote {count:,} {fmt} records to {path} (manifest: {manifest.name})")
    if summary.card is not None:
        console.print(f"wrote the dataset card {summary.card}")
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
    settings: Settings,
    flt: ExportFilter,
    formats: tuple[str, ...],
    skipped: dict[str, int],
) -> dict[str, dict[str, int]]:
    reviews = await _review_facts(sessions, settings, flt)
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
            trust=reviews.trust,
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


@actors_app.command("stats")
def actors_stats_command(
    persona: Annotated[str | None, typer.Option(help="Only this persona's reviews.")] = None,
) -> None:
    """Per actor (pseudonymised): reviews, agreement with the consensus, gold accuracy,
    median time to decision, live decisions, and trust weight."""
    from feedback.trust import actor_stats

    async def job(
        sessions: async_sessionmaker[AsyncSession], secret: bytes, _settings: Settings
    ) -> tuple[list[Any], bytes]:
        return await actor_stats(sessions, persona=persona), secret

    stats, secret = _run(job)
    Console().print(actor_table(stats, secret))


def actor_table(stats: list[Any], secret: bytes) -> Table:
    """The per-actor table (:class:`feedback.trust.ActorStats` rows), actors pseudonymised."""
    from feedback.redact import pseudonym

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    table = Table(
        "actor",
        "reviews",
        "agreement",
        "gold",
        "median review",
        "live decisions",
        "median live",
        "trust",
        title="Actors (trust: see README, How trust is computed)",
    )
    for actor in stats:
        gold = (
            "-"
            if not actor.gold_reviews
            else f"{actor.gold_correct}/{actor.gold_reviews} ({actor.gold_accuracy:.0%})"
        )
        table.add_row(
            pseudonym(actor.actor_id, secret, prefix="actor"),
            f"{actor.reviews:,}",
            "-" if actor.agreement is None else f"{share(actor.agreement)} of {actor.compared}",
            gold,
            seconds(actor.median_review_seconds),
            f"{actor.live_decisions:,}",
            seconds(actor.median_live_seconds),
            f"{actor.trust:.2f}",
        )
    if not stats:
        table.caption = "no reviews or live decisions yet"
    return table
