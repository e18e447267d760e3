"""How far each actor's verdicts can be trusted: agreement, gold accuracy, volume, speed.

Per actor (:class:`ActorStats`):

- **agreement with the consensus**: among their reviews of items that two or more actors
  reviewed, the share that agrees with the item's consensus (see
  :mod:`feedback.review_data`): the same ``acceptable`` and ``unsafe`` as the majority (a tied
  flag is not checked) and every rubric dimension they scored within 1 point of the median.
  The consensus includes the actor's own review, as it is the consensus trainers receive;
- **gold accuracy**: among their reviews of gold items, the share that is right
  (:func:`feedback.reviews.gold_correct`: the same ``acceptable`` and ``unsafe`` as the gold
  verdict, and every dimension the gold item scores within 1 point; one they did not score is
  wrong);
- **volume**: reviews given, and live decisions (approve, rewrite, regenerate, takeover);
- **median time to decision**: of reviews, from the lease to the review
  (``created_at - leased_at``); of live decisions, from the held reply's creation (its hold
  starts then) to the decision.

The **trust weight**, in [0, 1] (:func:`trust_weight`)::

    evidence = (2 * gold_correct + agreeing + 1) / (2 * gold_reviews + compared + 2)
    speed    = min(1, median review seconds / 5)       (1 with no timed review)
    trust    = evidence * speed

``evidence`` is the mean of a Beta(1, 1) posterior over "this actor's verdict is right", where a
gold review counts twice (its answer is known; a consensus can be wrong) and a consensus check
once. So an actor nobody has measured has 0.5, and volume moves it away from 0.5 as evidence
accrues: 3 agreeing reviews give 0.8, 30 give 0.97. ``speed`` scales down actors whose median
review takes under :data:`FAST_SECONDS`, too little time to read a reply and its context
(rubber-stamping agrees with a consensus it is part of). Live decisions are not timed against
it: approving a short reply at once is fine.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from feedback.models import FeedbackEvent, MessageNode
from feedback.review_data import ReviewTable, load_reviews
from feedback.reviews import Verdict, gold_correct

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = [
    "FAST_SECONDS",
    "GOLD_WEIGHT",
    "LIVE_DECISIONS",
    "UNMEASURED_TRUST",
    "ActorStats",
    "TrustTable",
    "actor_stats",
    "compute_actor_stats",
    "load_live_decisions",
    "load_trust",
    "trust_weight",
]

_log = logging.getLogger(__name__)

#: How many consensus checks one gold review is worth.
GOLD_WEIGHT = 2.0
#: The prior (one right and one wrong verdict): an unmeasured actor's evidence is 0.5.
_PRIOR_RIGHT, _PRIOR_TOTAL = 1.0, 2.0
#: A median review time under this many seconds scales trust down in proportion.
FAST_SECONDS = 5.0
#: Event kinds that decide a held reply live.
LIVE_DECISIONS = ("approve", "rewrite", "regenerate", "takeover")
#: The trust weight of an actor with no measured verdict.
UNMEASURED_TRUST = _PRIOR_RIGHT / _PRIOR_TOTAL
_STREAM_ROWS = 5000
#: Points a score may be off the consensus or the gold score and still agree.
_TOLERANCE = 1.0


def trust_weight(
    *,
    agreeing: int,
    compared: int,
    gold_correct: int,
    gold_reviews: int,
    median_review_seconds: float | None,
) -> float:
    """The trust weight in [0, 1] (see the module docstring for the formula and why)."""
    evidence = (GOLD_WEIGHT * gold_correct + agreeing + _PRIOR_RIGHT) / (
        GOLD_WEIGHT * gold_reviews + compared + _PRIOR_TOTAL
    )
    speed = 1.0
    if median_review_seconds is not None:
        speed = min(1.0, max(0.0, median_review_seconds) / FAST_SECONDS)
    return evidence * speed


@dataclass(frozen=True, slots=True)
class ActorStats:
    """One actor's measured reliability (see the module docstring)."""

    actor_id: str
    reviews: int
    #: Reviews of items two or more actors reviewed, and how many agreed with the consensus.
    compared: int
    agreeing: int
    gold_reviews: int
    gold_correct: int
    median_review_seconds: float | None
    live_decisions: int
    median_live_seconds: float | None
    trust: float

    @property
    def agreement(self) -> float | None:
        """Share of compared reviews agreeing with the consensus."""
        return self.agreeing / self.compared if self.compared else None

    @property
    def gold_accuracy(self) -> float | None:
        """Share of gold reviews that were right."""
        return self.gold_correct / self.gold_reviews if self.gold_reviews else None


@dataclass(frozen=True, slots=True)
class TrustTable:
    """Trust weights by actor id; :data:`UNMEASURED_TRUST` for an actor never measured."""

    weights: Mapping[str, float]

    def of(self, actor_id: str) -> float:
        """The actor's trust weight."""
        return self.weights.get(actor_id, UNMEASURED_TRUST)


def _review_checks(table: ReviewTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per review: compared with a consensus, agreeing with it, and right on gold (NaN when
    not a gold review)."""
    frame = table.frame
    if frame.empty:
        empty = np.zeros(0, dtype=bool)
        return empty, empty, np.zeros(0)
    consensus = table.consensus()
    joined = consensus.reindex(frame["item_id"].to_numpy())
    compared = joined["reviews"].to_numpy() >= 2
    agrees = np.ones(len(frame), dtype=bool)
    for flag in ("acceptable", "unsafe"):
        majority = joined[flag].to_numpy()
        agrees &= np.isnan(majority) | (frame[flag].to_numpy() == majority)
    for name in table.dimensions:
        given, median = frame[name].to_numpy(), joined[name].to_numpy()
        agrees &= np.isnan(given) | np.isnan(median) | (np.abs(given - median) <= _TOLERANCE)
    gold = np.full(len(frame), np.nan)
    gold_ids = frame["gold_id"].to_numpy()
    rows = np.flatnonzero(~np.isnan(gold_ids))
    acceptables = frame["acceptable"].to_numpy()[rows]
    unsafes = frame["unsafe"].to_numpy()[rows]
    given_scores = {name: frame[name].to_numpy()[rows] for name in table.dimensions}
    for position, index in enumerate(rows):
        answer = table.gold.get(int(gold_ids[index]))
        if answer is None:
            continue
        acceptable, unsafe, scores = answer
        given = {
            name: int(values[position])
            for name, values in given_scores.items()
            if not np.isnan(values[position])
        }
        review = Verdict(None, given, bool(unsafes[position]), bool(acceptables[position]), "")
        gold[index] = float(gold_correct(review, Verdict(None, scores, unsafe, acceptable, "")))
    return compared, agrees & compared, gold


def compute_actor_stats(
    table: ReviewTable, live: Mapping[str, Iterable[float]] | None = None
) -> list[ActorStats]:
    """Every actor's stats from their reviews and their live decisions' times (seconds), most
    reviews first."""
    frame = table.frame
    compared, agreeing, gold = _review_checks(table)
    seconds = (frame["created_at"] - frame["leased_at"]).dt.total_seconds().to_numpy()
    live_times = {actor: list(times) for actor, times in (live or {}).items()}
    per_actor: dict[str, dict[str, float | int | list[float]]] = {}
    if not frame.empty:
        by_actor = (
            frame.assign(
                _compared=compared,
                _agreeing=agreeing,
                _gold=~np.isnan(gold),
                _right=np.nan_to_num(gold) > 0,
                _seconds=seconds,
            )
            .groupby("actor_id", sort=False)
            .agg(
                reviews=("item_id", "size"),
                compared=("_compared", "sum"),
                agreeing=("_agreeing", "sum"),
                gold_reviews=("_gold", "sum"),
                gold_correct=("_right", "sum"),
                median_seconds=("_seconds", "median"),
            )
        )
        for actor_id, row in by_actor.iterrows():
            per_actor[str(actor_id)] = row.to_dict()
    stats = []
    for actor_id in sorted(set(per_actor) | set(live_times)):
        row = per_actor.get(actor_id, {})
        median_review = row.get("median_seconds")
        median_review = None if median_review is None else float(median_review)  # type: ignore[arg-type]
        times = live_times.get(actor_id, [])
        counts = {
            name: int(row.get(name, 0))  # type: ignore[call-overload]
            for name in ("reviews", "compared", "agreeing", "gold_reviews", "gold_correct")
        }
        stats.append(
            ActorStats(
                actor_id=actor_id,
                median_review_seconds=median_review,
                live_decisions=len(times),
                median_live_seconds=statistics.median(times) if times else None,
                trust=trust_weight(
                    agreeing=counts["agreeing"],
                    compared=counts["compared"],
                    gold_correct=counts["gold_correct"],
                    gold_reviews=counts["gold_reviews"],
                    median_review_seconds=median_review,
                ),
                **counts,
            )
        )
    stats.sort(key=lambda actor: (-actor.reviews, -actor.live_decisions, actor.actor_id))
    return stats


async def load_live_decisions(
    sessions: async_sessionmaker[AsyncSession], *, persona: str | None = None
) -> dict[str, list[float]]:
    """Seconds from a held reply's creation to each actor's live decision on it."""
    query = (
        select(FeedbackEvent.actor_id, FeedbackEvent.created_at, MessageNode.created_at)
        .join(MessageNode, MessageNode.id == FeedbackEvent.candidate_id)
        .where(
            FeedbackEvent.kind.in_(LIVE_DECISIONS),
            FeedbackEvent.actor_id.not_in(("timeout", "safety")),
            MessageNode.hold_until.is_not(None),
        )
    )
    if persona is not None:
        query = query.where(FeedbackEvent.persona == persona)
    times: dict[str, list[float]] = {}
    async with sessions() as session:
        result = await session.stream(query.execution_options(yield_per=_STREAM_ROWS))
        async for actor_id, decided_at, held_at in result:
            times.setdefault(actor_id, []).append(max(0.0, (decided_at - held_at).total_seconds()))
    return times


async def actor_stats(
    sessions: async_sessionmaker[AsyncSession],
    *,
    persona: str | None = None,
    table: ReviewTable | None = None,
) -> list[ActorStats]:
    """Every actor's stats (of one persona's conversations); pass ``table`` if the reviews
    were already read."""
    if table is None:
        table = await load_reviews(sessions, persona=persona)
    live = await load_live_decisions(sessions, persona=persona)
    return compute_actor_stats(table, live)


async def load_trust(sessions: async_sessionmaker[AsyncSession]) -> TrustTable:
    """The trust weight of every actor measured so far (over all personas)."""
    table = await load_reviews(sessions)
    stats = compute_actor_stats(table)
    return TrustTable({actor.actor_id: actor.trust for actor in stats})
