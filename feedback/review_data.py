"""The reviews as one table, read in one streamed query, and their consensus per item.

:func:`load_reviews` reads every review (``reviews`` joined with its ``review_items``), with its
rubric scores spread into one column per dimension, into a pandas frame: what the agreement
figures (:mod:`feedback.agreement`), the actors' reliability (:mod:`feedback.trust`) and the
report compute from. 100,000 reviews take a few MB.

Consensus (the rule of issue 25, shared with the review queue): per dimension, the median of the
reviewers' scores rounded half up; for ``acceptable`` and ``unsafe``, the majority value, none on
a tie.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import orjson
import pandas as pd
from sqlalchemy import Text, cast, select

from feedback.agreement import FLAG_CATEGORIES, Coefficients, coefficients, unit_matrix
from feedback.models import Conversation, GoldItem, Review, ReviewItem

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = [
    "FLAGS",
    "OVERALL",
    "ReviewTable",
    "dimension_agreement",
    "load_reviews",
    "round_half_up",
]

_log = logging.getLogger(__name__)

#: The overall 1-5 rating every review carries, agreed on like a rubric dimension.
OVERALL = "overall"
#: The verdict flags every review carries (nominal).
FLAGS = ("acceptable", "unsafe")
#: Fixed columns of the frame; every other column is a rubric dimension.
_BASE_COLUMNS = (
    "item_id",
    "actor_id",
    "created_at",
    "leased_at",
    OVERALL,
    "acceptable",
    "unsafe",
    "rubric_version",
    "gold_id",
    "status",
)


def round_half_up(value: float) -> int:
    """``2.5`` -> 3, ``3.5`` -> 4 (Python's ``round`` would give 2 and 4)."""
    return math.floor(value + 0.5)


@dataclass
class ReviewTable:
    """Every review read, one row each (``frame``), and the gold items they were served."""

    #: Columns: ``item_id``, ``actor_id``, ``created_at`` and ``leased_at`` (UTC timestamps),
    #: ``overall`` (the review's rating), ``acceptable`` and ``unsafe`` (0/1 floats),
    #: ``rubric_version``, ``gold_id`` (or NaN), ``status`` (the item's), then one float
    #: column per rubric dimension (NaN where the review did not score it).
    frame: pd.DataFrame
    #: The rubric dimensions seen, in the order they first appear.
    dimensions: list[str] = field(default_factory=list)
    #: gold id -> ``(acceptable, unsafe, {dimension: score})``.
    gold: dict[int, tuple[bool, bool, dict[str, int]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    def consensus(self) -> pd.DataFrame:
        """Per item (index ``item_id``): ``reviews``, the consensus of each dimension and of
        ``overall`` (median, half up), ``acceptable``/``unsafe`` (majority; NaN on a tie) and
        ``agreement`` (the share of reviews agreeing with the majority ``acceptable``)."""
        frame = self.frame
        grouped = frame.groupby("item_id", sort=True)
        medians = grouped[[OVERALL, *self.dimensions]].median()
        result = np.floor(medians + 0.5)
        result.insert(0, "reviews", grouped.size())
        for flag in FLAGS:
            share = grouped[flag].mean()
            result[flag] = np.where(share > 0.5, 1.0, np.where(share < 0.5, 0.0, np.nan))
            if flag == "acceptable":
                result["agreement"] = np.maximum(share, 1 - share)
        return result


async def load_reviews(
    sessions: async_sessionmaker[AsyncSession],
    *,
    persona: str | None = None,
    since: datetime | None = None,
) -> ReviewTable:
    """Every review (of ``persona``'s conversations; given at or after ``since``), and the gold
    items among their items. One query for the reviews, one for the gold items."""
    query = (
        select(
            Review.item_id,
            Review.actor_id,
            # As text, parsed by pandas in one go: a timestamp converted row by row costs
            # more than the rest of the read (SQLite keeps naive UTC, PostgreSQL adds +00).
            cast(Review.created_at, Text),
            cast(Review.leased_at, Text),
            Review.rating,
            Review.acceptable,
            Review.unsafe,
            Review.rubric_version,
            ReviewItem.gold_id,
            ReviewItem.status,
            cast(Review.scores, Text),
        )
        .join(ReviewItem, ReviewItem.id == Review.item_id)
        .order_by(Review.id)
    )
    if persona is not None:
        query = query.join(Conversation, Conversation.id == ReviewItem.conversation_id).where(
            Conversation.persona == persona
        )
    if since is not None:
        query = query.where(Review.created_at >= since)  # the column, not its text
    gold: dict[int, tuple[bool, bool, dict[str, int]]] = {}
    async with sessions() as session:
        # One fetch, not a stream: a streamed row costs a greenlet switch, and 100,000 rows
        # are a few MB.
        rows = (await (await session.connection()).execute(query)).all()
        gold_ids = {row[8] for row in rows if row[8] is not None}
        if gold_ids:
            gold_rows = await session.execute(
                select(
                    GoldItem.id, GoldItem.acceptable, GoldItem.unsafe, cast(GoldItem.scores, Text)
                ).where(GoldItem.id.in_(sorted(gold_ids)))
            )
            for gold_id, acceptable, unsafe, raw in gold_rows:
                gold[gold_id] = (bool(acceptable), bool(unsafe), _scores(raw))
    frame = pd.DataFrame.from_records(
        [row[:10] for row in rows], columns=list(_BASE_COLUMNS), nrows=len(rows)
    )
    for name in (OVERALL, "acceptable", "unsafe", "gold_id"):
        frame[name] = frame[name].astype(float)
    for name in ("created_at", "leased_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")
    loads = orjson.loads
    scores = pd.DataFrame.from_records(
        [loads(row[10]) if row[10] else {} for row in rows], nrows=len(rows)
    )
    dimensions = [name for name in scores.columns if name not in _BASE_COLUMNS]
    for name in dimensions:  # a dimension may not shadow a column (the rubric forbids it)
        frame[name] = pd.to_numeric(scores[name], errors="coerce").to_numpy(dtype=float)
    return ReviewTable(frame, dimensions, gold)


def _scores(raw: str | None) -> dict[str, int]:
    if not raw or raw in ("null", "{}"):
        return {}
    data = orjson.loads(raw)
    return {
        str(name): int(value)
        for name, value in data.items()
        if isinstance(value, int) and not isinstance(value, bool)
    }


def dimension_agreement(table: ReviewTable) -> list[Coefficients]:
    """The agreement figures of every rubric dimension, the overall rating, and the flags."""
    frame = table.frame
    items = frame["item_id"].to_numpy()
    figures = [
        coefficients(name, unit_matrix(items, frame[name].to_numpy(dtype=float)))
        for name in (*table.dimensions, OVERALL)
    ]
    figures += [
        coefficients(
            flag,
            unit_matrix(items, frame[flag].to_numpy(dtype=float)),
            level="nominal",
            categories=FLAG_CATEGORIES,
        )
        for flag in FLAGS
    ]
    return figures


def agreement_over_time(
    table: ReviewTable, *, freq: str | None = None
) -> tuple[str, list[tuple[pd.Timestamp, list[Coefficients]]]]:
    """:func:`dimension_agreement` per period, an item in the period of its last review:
    ``(freq, [(period start, figures), ...])``. ``freq`` is a pandas period (``D``, ``W``,
    ``M``); by default days for up to 31 days of reviews, else weeks."""
    frame = table.frame
    if frame.empty:
        return freq or "D", []
    finished = frame.groupby("item_id")["created_at"].transform("max")
    if freq is None:
        span = finished.max() - finished.min()
        freq = "D" if span <= pd.Timedelta(days=31) else "W"
    periods = finished.dt.tz_convert(None).dt.to_period(freq)
    series = []
    for period, rows in frame.groupby(periods, sort=True):
        part = ReviewTable(rows, table.dimensions, table.gold)
        series.append((period.start_time.tz_localize("UTC"), dimension_agreement(part)))
    return freq, series
