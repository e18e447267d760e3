"""The quality report of the correction queue: PNG plots and a short HTML page.

:func:`write_report` writes into a folder:

- ``ratings_over_time.png``: mean actor rating per day, one line per persona;
- ``rewrite_rate_by_depth.png``: among reviewed user turns, the share whose reply an actor
  rewrote, by the turn's depth in its conversation (the drift signal: a persona that loses
  its voice over long conversations gets rewritten more, the deeper it goes);
- ``tag_counts.png``: how often actors used each tag;
- ``actor_activity.png``: actions per actor (pseudonymised) and kind;
- ``agreement.png``: agreement between actors who rated the same reply live (Krippendorff's
  alpha, ordinal, and Gwet's AC1, from :mod:`feedback.agreement`), and the spread of their
  ratings;
- ``agreement_over_time.png``: per rubric dimension, the reviewers' AC1 (solid) and alpha
  (dashed) per day or week (:func:`feedback.review_data.agreement_over_time`);
- ``actor_reliability.png``: per actor (pseudonymised), the trust weight beside agreement with
  the consensus and gold accuracy (:mod:`feedback.trust`); the page has the full table;
- ``flags_vs_verdicts.png``: for model replies an actor decided on, how often a reply that the
  consistency checks flagged (``over_threshold``) was rewritten or regenerated, next to
  unflagged replies;
- ``index.html``: the plots and the figures behind them.

Everything is aggregated while streaming rows, so memory does not grow with the queue, except
the ratings of replies rated by two or more actors (kept for the agreement statistic) and the
reviews (one table row each, see :mod:`feedback.review_data`).
"""

from __future__ import annotations

import html
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from sqlalchemy import Text, and_, cast, exists, func, select
from sqlalchemy.orm import aliased

from feedback.agreement import Coefficients, coefficients
from feedback.corrections import TAGS
from feedback.models import Conversation, FeedbackEvent, MessageNode
from feedback.redact import pseudonym
from feedback.review_data import agreement_over_time, dimension_agreement, load_reviews
from feedback.trust import ActorStats, actor_stats

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import date

    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = [
    "DEPTH_BUCKETS",
    "ReportData",
    "ReportError",
    "collect_report_data",
    "render_report",
    "write_report",
]

_log = logging.getLogger(__name__)

#: Turn depths shown one by one up to 10, then in ranges (label, first depth, last depth).
DEPTH_BUCKETS: tuple[tuple[str, int, int], ...] = (
    *((str(depth), depth, depth) for depth in range(1, 11)),
    ("11-15", 11, 15),
    ("16-20", 16, 20),
    ("21-30", 21, 30),
    ("31-50", 31, 50),
    ("51+", 51, 10**9),
)
_DECISIONS = ("approve", "rewrite", "regenerate")
_STREAM_ROWS = 5000
_TOP_ACTORS = 15


class ReportError(Exception):
    """The report folder cannot be written; the message says why."""


@dataclass
class ReportData:
    """The aggregates behind the plots."""

    #: persona -> day -> (sum of ratings, count)
    ratings_by_day: dict[str, dict[date, list[int]]] = field(default_factory=dict)
    #: depth bucket label -> [reviewed turns, rewritten turns]
    depth: dict[str, list[int]] = field(default_factory=dict)
    tags: Counter[str] = field(default_factory=Counter)
    #: actor pseudonym -> kind -> count
    actors: dict[str, Counter[str]] = field(default_factory=dict)
    #: the ratings of each reply rated by two or more actors (latest rating per actor)
    rating_units: list[list[int]] = field(default_factory=list)
    #: flag kind (or ``none``) -> verdict -> count
    flag_verdicts: dict[str, Counter[str]] = field(default_factory=dict)
    #: Per actor, pseudonymised: ``(pseudonym, stats)``, most reviews first.
    actor_stats: list[tuple[str, ActorStats]] = field(default_factory=list)
    #: The reviewers' agreement per dimension and flag, over every review.
    review_agreement: list[Coefficients] = field(default_factory=list)
    #: ``(period, [(period start, figures), ...])`` of :func:`agreement_over_time`.
    agreement_series: tuple[str, list[tuple[pd.Timestamp, list[Coefficients]]]] = ("D", [])
    _live: Coefficients | None = None

    @property
    def live_agreement(self) -> Coefficients:
        """Agreement of the live ratings (:attr:`rating_units`): alpha (ordinal), AC1, AC2."""
        if self._live is None:
            width = max((len(unit) for unit in self.rating_units), default=0)
            matrix = np.full((len(self.rating_units), width), np.nan)
            for row, unit in enumerate(self.rating_units):
                matrix[row, : len(unit)] = unit
            self._live = coefficients("rating", matrix)
        return self._live


# -- collecting -----------------------------------------------------------------------------


def _bucket(depth: int) -> str:
    for label, first, last in DEPTH_BUCKETS:
        if first <= depth <= last:
            return label
    return DEPTH_BUCKETS[-1][0]


async def collect_report_data(
    sessions: async_sessionmaker[AsyncSession],
    *,
    persona: str | None,
    pseudonym_secret: bytes,
) -> ReportData:
    """Stream the queue once per plot and aggregate; ``persona`` limits every plot to one."""
    data = ReportData()
    async with sessions() as session:
        await _ratings_and_tags(session, data, persona)
        await _depth(session, data, persona)
        await _actors(session, data, persona, pseudonym_secret)
        await _agreement(session, data, persona)
        await _flags(session, data, persona)
    table = await load_reviews(sessions, persona=persona)
    data.review_agreement = dimension_agreement(table)
    data.agreement_series = agreement_over_time(table)
    data.actor_stats = [
        (pseudonym(actor.actor_id, pseudonym_secret, prefix="actor"), actor)
        for actor in await actor_stats(sessions, persona=persona, table=table)
    ]
    return data


def _persona_events(query: Any, persona: str | None) -> Any:
    return query if persona is None else query.where(FeedbackEvent.persona == persona)


async def _ratings_and_tags(session: AsyncSession, data: ReportData, persona: str | None) -> None:
    query = _persona_events(
        select(
            FeedbackEvent.persona,
            FeedbackEvent.created_at,
            FeedbackEvent.rating,
            cast(FeedbackEvent.tags, Text),
        ).where(FeedbackEvent.kind == "rate"),
        persona,
    )
    result = await session.stream(query.execution_options(yield_per=_STREAM_ROWS))
    async for name, created_at, rating, tags in result:
        if rating is not None:
            day = data.ratings_by_day.setdefault(name, {}).setdefault(created_at.date(), [0, 0])
            day[0] += rating
            day[1] += 1
        if tags and tags != "[]":
            data.tags.update(orjson.loads(tags))


async def _depth(session: AsyncSession, data: ReportData, persona: str | None) -> None:
    child = aliased(MessageNode)

    def verdict_on_child(*kinds: str) -> Any:
        return exists(
            select(FeedbackEvent.id)
            .join(child, child.id == FeedbackEvent.candidate_id)
            .where(child.parent_id == MessageNode.id, FeedbackEvent.kind.in_(kinds))
        )

    query = (
        select(
            MessageNode.conversation_id,
            verdict_on_child("approve", "rewrite", "regenerate", "rate"),
            verdict_on_child("rewrite"),
        )
        .join(Conversation, Conversation.id == MessageNode.conversation_id)
        .where(MessageNode.role == "user")
        .order_by(MessageNode.conversation_id, MessageNode.id)
    )
    if persona is not None:
        query = query.where(Conversation.persona == persona)
    data.depth = {label: [0, 0] for label, _, _ in DEPTH_BUCKETS}
    current, depth = None, 0
    result = await session.stream(query.execution_options(yield_per=_STREAM_ROWS))
    async for conversation_id, reviewed, rewritten in result:
        depth = depth + 1 if conversation_id == current else 1
        current = conversation_id
        if reviewed:
            counts = data.depth[_bucket(depth)]
            counts[0] += 1
            counts[1] += int(bool(rewritten))


async def _actors(
    session: AsyncSession, data: ReportData, persona: str | None, secret: bytes
) -> None:
    query = _persona_events(
        select(FeedbackEvent.actor_id, FeedbackEvent.kind, func.count()).group_by(
            FeedbackEvent.actor_id, FeedbackEvent.kind
        ),
        persona,
    )
    for actor_id, kind, count in await session.execute(query):
        name = actor_id if actor_id == "timeout" else pseudonym(actor_id, secret, prefix="actor")
        data.actors.setdefault(name, Counter())[kind] += count


async def _agreement(session: AsyncSession, data: ReportData, persona: str | None) -> None:
    query = _persona_events(
        select(FeedbackEvent.candidate_id, FeedbackEvent.actor_id, FeedbackEvent.rating)
        .where(FeedbackEvent.kind == "rate", FeedbackEvent.rating.is_not(None))
        .order_by(FeedbackEvent.candidate_id, FeedbackEvent.id),
        persona,
    )
    current: int | None = None
    by_actor: dict[str, int] = {}
    result = await session.stream(query.execution_options(yield_per=_STREAM_ROWS))
    async for candidate_id, actor_id, rating in result:
        if candidate_id != current:
            if len(by_actor) >= 2:
                data.rating_units.append(list(by_actor.values()))
            current, by_actor = candidate_id, {}
        by_actor[actor_id] = rating
    if len(by_actor) >= 2:
        data.rating_units.append(list(by_actor.values()))


async def _flags(session: AsyncSession, data: ReportData, persona: str | None) -> None:
    query = (
        select(MessageNode.id, cast(MessageNode.flags, Text), FeedbackEvent.kind)
        .join(FeedbackEvent, FeedbackEvent.candidate_id == MessageNode.id)
        .join(Conversation, Conversation.id == MessageNode.conversation_id)
        .where(
            and_(
                MessageNode.role == "assistant",
                MessageNode.origin == "model",
                FeedbackEvent.kind.in_(_DECISIONS),
            )
        )
        .order_by(MessageNode.id, FeedbackEvent.id)
    )
    if persona is not None:
        query = query.where(Conversation.persona == persona)
    last_node: int | None = None
    result = await session.stream(query.execution_options(yield_per=_STREAM_ROWS))
    async for node_id, flags, kind in result:
        if node_id == last_node:  # the first decision is the verdict
            continue
        last_node = node_id
        kinds = sorted(
            {
                str(flag.get("kind"))
                for flag in (orjson.loads(flags) if flags and flags != "[]" else [])
                if isinstance(flag, dict) and flag.get("over_threshold")
            }
        )
        for flag_kind in kinds or ["none"]:
            data.flag_verdicts.setdefault(flag_kind, Counter())[kind] += 1


# -- plotting -------------------------------------------------------------------------------


def _figure(width: float = 8.0, height: float = 4.5) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure, figure.subplots()


def _no_data(axes: Axes, what: str) -> None:
    axes.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", fontsize=14, color="grey")
    axes.set_axis_off()


def _plot_ratings(data: ReportData) -> Figure:
    figure, axes = _figure()
    axes.set_title("Mean actor rating per day")
    if not data.ratings_by_day:
        _no_data(axes, "ratings")
        return figure
    for persona, days in sorted(data.ratings_by_day.items()):
        ordered = sorted(days.items())
        axes.plot(
            [day for day, _ in ordered],
            [total / count for _, (total, count) in ordered],
            marker="o",
            markersize=3,
            label=persona,
        )
    axes.set_ylim(0.8, 5.2)
    axes.set_ylabel("mean rating (1-5)")
    axes.legend(loc="lower left")
    axes.grid(alpha=0.3)
    figure.autofmt_xdate()
    return figure


def _plot_depth(data: ReportData) -> Figure:
    figure, axes = _figure()
    axes.set_title("Rewrite rate by turn depth (reviewed turns)")
    labels = [label for label, _, _ in DEPTH_BUCKETS if data.depth.get(label, [0])[0]]
    if not labels:
        _no_data(axes, "reviewed turns")
        return figure
    rates = [data.depth[label][1] / data.depth[label][0] for label in labels]
    bars = axes.bar(labels, rates, color="#c0504d")
    for bar, label in zip(bars, labels, strict=True):
        axes.annotate(
            f"n={data.depth[label][0]}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    axes.set_xlabel("user turn depth in its conversation")
    axes.set_ylabel("share rewritten")
    axes.set_ylim(0, max(1.0, max(rates) * 1.15))
    return figure


def _plot_tags(data: ReportData) -> Figure:
    figure, axes = _figure()
    axes.set_title("Tags actors used")
    if not data.tags:
        _no_data(axes, "tags")
        return figure
    ordered = [tag for tag in TAGS if data.tags[tag]] + sorted(set(data.tags) - set(TAGS))
    axes.barh(ordered[::-1], [data.tags[tag] for tag in ordered[::-1]], color="#4f81bd")
    axes.set_xlabel("times used")
    return figure


def _plot_actors(data: ReportData) -> Figure:
    figure, axes = _figure(9, 5)
    axes.set_title(f"Actor activity (top {_TOP_ACTORS}, pseudonymised)")
    if not data.actors:
        _no_data(axes, "actor actions")
        return figure
    top = sorted(data.actors, key=lambda name: (-sum(data.actors[name].values()), name))
    top = top[:_TOP_ACTORS]
    kinds = sorted({kind for name in top for kind in data.actors[name]})
    left = [0] * len(top)
    for kind in kinds:
        counts = [data.actors[name][kind] for name in top]
        axes.barh(top[::-1], counts[::-1], left=left[::-1], label=kind)
        left = [a + b for a, b in zip(left, counts, strict=True)]
    axes.set_xlabel("actions")
    axes.legend(loc="lower right", fontsize=8)
    return figure


def _plot_agreement(data: ReportData) -> Figure:
    figure, axes = _figure()
    live = data.live_agreement
    axes.set_title(
        "Agreement on live ratings: Krippendorff's alpha (ordinal) "
        f"{_fmt(live.alpha)}, Gwet's AC1 {_fmt(live.ac1)}",
        fontsize=10,
    )
    if not data.rating_units:
        _no_data(axes, "replies rated by two or more actors")
        return figure
    spreads = Counter(max(unit) - min(unit) for unit in data.rating_units)
    xs = list(range(5))
    axes.bar(xs, [spreads[x] for x in xs], color="#9bbb59")
    axes.set_xticks(xs)
    axes.set_xlabel(f"rating spread (max - min) over {len(data.rating_units)} replies")
    axes.set_ylabel("replies")
    return figure


def _plot_flags(data: ReportData) -> Figure:
    figure, axes = _figure()
    axes.set_title("Consistency flags against actor verdicts (first decision)")
    if not data.flag_verdicts:
        _no_data(axes, "decided model replies")
        return figure
    kinds = sorted(data.flag_verdicts, key=lambda kind: (kind == "none", kind))
    bottom = [0.0] * len(kinds)
    colours = {"approve": "#9bbb59", "regenerate": "#f79646", "rewrite": "#c0504d"}
    for verdict in _DECISIONS:
        shares = [
            data.flag_verdicts[kind][verdict] / max(1, sum(data.flag_verdicts[kind].values()))
            for kind in kinds
        ]
        axes.bar(kinds, shares, bottom=bottom, label=verdict, color=colours[verdict])
        bottom = [a + b for a, b in zip(bottom, shares, strict=True)]
    axes.set_xticks(
        range(len(kinds)),
        [f"{kind}\nn={sum(data.flag_verdicts[kind].values())}" for kind in kinds],
    )
    axes.set_ylabel("share of replies")
    axes.legend(loc="upper right", fontsize=8)
    return figure


def _plot_agreement_over_time(data: ReportData) -> Figure:
    figure, axes = _figure()
    freq, series = data.agreement_series
    per = {"D": "day", "W": "week", "M": "month"}.get(freq, freq)
    axes.set_title(f"Reviewers' agreement per dimension and {per}: AC1 solid, alpha dashed")
    names = [figure.name for figure in data.review_agreement if figure.level == "ordinal"]
    if not series or not any(f.units for _, figures in series for f in figures):
        _no_data(axes, "items reviewed by two or more actors")
        return figure
    for index, name in enumerate(names):
        colour = f"C{index % 10}"
        points = [
            (start, f) for start, figures in series for f in figures if f.name == name and f.units
        ]
        if not points:
            continue
        days = [start.to_pydatetime() for start, _ in points]
        ac1 = [f.ac1 if f.ac1 is not None else np.nan for _, f in points]
        alpha = [f.alpha if f.alpha is not None else np.nan for _, f in points]
        axes.plot(days, ac1, marker="o", markersize=3, color=colour, label=name)
        axes.plot(days, alpha, linestyle="--", marker=".", color=colour)
    axes.set_ylim(-0.5, 1.05)
    axes.axhline(0, color="grey", linewidth=0.5)
    axes.set_ylabel("coefficient")
    axes.legend(loc="lower left", fontsize=8)
    axes.grid(alpha=0.3)
    figure.autofmt_xdate()
    return figure


def _plot_actor_reliability(data: ReportData) -> Figure:
    figure, axes = _figure(9, 5)
    axes.set_title(f"Actor reliability (top {_TOP_ACTORS} by reviews, pseudonymised)")
    rows = [(name, actor) for name, actor in data.actor_stats if actor.reviews][:_TOP_ACTORS]
    if not rows:
        _no_data(axes, "reviews")
        return figure
    names = [name for name, _ in rows][::-1]
    positions = np.arange(len(rows))
    height = 0.27
    series = (
        ("trust", [actor.trust for _, actor in rows], "#4f81bd"),
        ("agreement", [actor.agreement or 0.0 for _, actor in rows], "#9bbb59"),
        ("gold accuracy", [actor.gold_accuracy or 0.0 for _, actor in rows], "#f79646"),
    )
    for offset, (label, values, colour) in zip((height, 0, -height), series, strict=True):
        axes.barh(positions + offset, values[::-1], height=height, label=label, color=colour)
    axes.set_yticks(positions, names)
    axes.set_xlim(0, 1)
    axes.set_xlabel("share (trust: weight 0-1)")
    axes.legend(loc="lower right", fontsize=8)
    return figure


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


_PLOTS = (
    ("ratings_over_time.png", "Ratings over time per persona", _plot_ratings),
    ("rewrite_rate_by_depth.png", "Rewrite rate by turn depth (drift)", _plot_depth),
    ("tag_counts.png", "Tag counts", _plot_tags),
    ("actor_activity.png", "Actor activity", _plot_actors),
    ("agreement.png", "Agreement between actors", _plot_agreement),
    ("agreement_over_time.png", "Reviewers' agreement over time", _plot_agreement_over_time),
    ("actor_reliability.png", "Actor reliability", _plot_actor_reliability),
    ("flags_vs_verdicts.png", "Consistency flags against actor verdicts", _plot_flags),
)


def _html(data: ReportData, persona: str | None) -> str:
    rated_replies = len(data.rating_units)
    ratings = sum(count for days in data.ratings_by_day.values() for _, count in days.values())
    flagged = {
        kind: counts for kind, counts in sorted(data.flag_verdicts.items()) if kind != "none"
    }
    rows = [
        ("ratings", f"{ratings:,}"),
        ("replies rated by 2+ actors", f"{rated_replies:,}"),
        ("live ratings: Krippendorff's alpha (ordinal)", _fmt(data.live_agreement.alpha)),
        ("live ratings: Gwet's AC1", _fmt(data.live_agreement.ac1)),
        ("actors", f"{len(data.actors):,}"),
    ]
    for kind, counts in flagged.items():
        total = sum(counts.values())
        rows.append(
            (
                f"flagged {kind}: rewritten",
                f"{counts['rewrite']}/{total} ({counts['rewrite'] / total:.0%})",
            )
        )
    none = data.flag_verdicts.get("none")
    if none:
        total = sum(none.values())
        rows.append(
            ("unflagged: rewritten", f"{none['rewrite']}/{total} ({none['rewrite'] / total:.0%})")
        )
    scope = f"persona {persona}" if persona else "all personas"
    table = "\n".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in rows
    )
    images = (
        _agreement_table(data)
        + _agreement_over_time_table(data)
        + _actor_table(data)
        + "\n".join(
            f'<figure><img src="{name}" alt="{html.escape(title)}">'
            f"<figcaption>{html.escape(title)}</figcaption></figure>"
            for name, title, _ in _PLOTS
        )
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Greenroom quality report ({html.escape(scope)})</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}
th{{text-align:left;padding-right:1em}}img{{max-width:100%}}figure{{margin:2em 0}}
table.grid td{{padding:0 0.8em 0 0}}</style>
</head><body>
<h1>Greenroom quality report</h1>
<p>{html.escape(scope)}; actor ids are pseudonyms.</p>
<table>
{table}
</table>
{images}
</body></html>
"""


def _html_table(caption: str, header: Sequence[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return (
        f"<h2>{html.escape(caption)}</h2>\n<table class=grid>\n<tr>{head}</tr>\n{body}\n</table>\n"
    )


def _agreement_table(data: ReportData) -> str:
    """Reviewers' agreement per dimension and flag (every review)."""
    rows = [
        [
            figure.name,
            figure.level,
            f"{figure.units:,}",
            _fmt(figure.alpha),
            _fmt(figure.ac1),
            _fmt(figure.ac2),
            _fmt(figure.raw),
        ]
        for figure in data.review_agreement
    ]
    return _html_table(
        "Reviewers' agreement per dimension",
        ["dimension", "level", "items", "alpha", "AC1", "AC2", "raw agreement"],
        rows,
    )


#: Periods of agreement over time the page lists (the plot shows them all).
_PERIODS_LISTED = 12


def _agreement_over_time_table(data: ReportData) -> str:
    """AC1 / alpha per dimension for the latest periods."""
    freq, series = data.agreement_series
    names = [figure.name for figure in data.review_agreement if figure.level == "ordinal"]
    rows = []
    for start, figures in series[-_PERIODS_LISTED:]:
        by_name = {figure.name: figure for figure in figures}
        cells = [start.strftime("%Y-%m-%d")]
        for name in names:
            figure = by_name.get(name)
            cells.append(
                "-"
                if figure is None or not figure.units
                else f"{_fmt(figure.ac1)} / {_fmt(figure.alpha)} (n={figure.units})"
            )
        rows.append(cells)
    per = {"D": "day", "W": "week", "M": "month"}.get(freq, freq)
    return _html_table(
        f"Agreement per {per} (AC1 / alpha, items), latest {_PERIODS_LISTED}",
        [per, *names],
        rows,
    )


def _actor_table(data: ReportData) -> str:
    """Per actor: reviews, agreement, gold, times, live decisions, trust (see feedback.trust)."""

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    rows = [
        [
            name,
            f"{actor.reviews:,}",
            f"{share(actor.agreement)} of {actor.compared}",
            f"{share(actor.gold_accuracy)} of {actor.gold_reviews}",
            seconds(actor.median_review_seconds),
            f"{actor.live_decisions:,}",
            seconds(actor.median_live_seconds),
            f"{actor.trust:.2f}",
        ]
        for name, actor in data.actor_stats
    ]
    return _html_table(
        "Actors",
        [
            "actor",
            "reviews",
            "agreement with consensus",
            "gold accuracy",
            "median review",
            "live decisions",
            "median live",
            "trust",
        ],
        rows,
    )


def _prepare_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ReportError(f"cannot write the report to {out}: it is a file") from None
    except OSError as error:
        raise ReportError(f"cannot write the report to {out}: {error.strerror}") from None
    if not os.access(out, os.W_OK):
        raise ReportError(f"cannot write the report to {out}: permission denied")


def _write_atomically(path: Path, write: Any) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(descriptor)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def render_report(data: ReportData, out: Path, *, persona: str | None = None) -> Path:
    """Write the PNGs and ``index.html`` for ``data`` into ``out``; returns the page's path."""
    _prepare_folder(out)
    try:
        for name, _, plot in _PLOTS:
            figure = plot(data)
            _write_atomically(out / name, lambda path, f=figure: f.savefig(path, format="png"))
        page = out / "index.html"
        _write_atomically(page, lambda path: Path(path).write_text(_html(data, persona), "utf-8"))
    except OSError as error:
        raise ReportError(f"cannot write the report to {out}: {error.strerror}") from None
    return page


async def write_report(
    sessions: async_sessionmaker[AsyncSession],
    out: Path,
    *,
    persona: str | None = None,
    pseudonym_secret: bytes,
) -> Path:
    """Collect the aggregates and write the report into ``out``; returns ``index.html``'s path.

    Raises :class:`ReportError` (before reading the database) if ``out`` cannot be written.
    """
    _prepare_folder(out)
    data = await collect_report_data(sessions, persona=persona, pseudonym_secret=pseudonym_secret)
    return render_report(data, out, persona=persona)
