"""Agreement and trust over 100,000 reviews: read from the database and computed, under 5 s.

Builds a scratch database (SQLite, or PostgreSQL with ``--backend postgresql``) holding
``--reviews`` reviews (3 per item, by 20 actors) with four rubric dimensions, the flags, and
one gold item in 20. Reviewers score a planted true score plus noise; one actor scores at
random and one answers in under a second. Then times, as ``greenroom report`` and an export
do: reading every review (:func:`feedback.review_data.load_reviews`), the agreement figures of
every dimension and flag (:func:`feedback.review_data.dimension_agreement`) and every actor's
stats and trust (:func:`feedback.trust.compute_actor_stats`).

Correctness checks: every review read back; the figures equal the libraries' own on the same
data laid out independently (``krippendorff.alpha`` over actors x items, ``irrCAC`` over it);
the random actor and the hasty one get the two lowest trust weights.

    .venv/bin/python bench/bench_agreement.py [--reviews 100000] [--backend sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import krippendorff
import numpy as np
import pandas as pd
from irrCAC.raw import CAC
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Verdicts, scratch_database
from feedback.database import create_engine, migrate, session_factory
from feedback.models import (
    Conversation,
    GoldItem,
    MessageNode,
    Review,
    ReviewItem,
)
from feedback.review_data import dimension_agreement, load_reviews
from feedback.trust import compute_actor_stats

DIMENSIONS = ("fidelity", "voice", "resonance", "memory")
ACTORS = [f"discord:actor{n:02d}" for n in range(20)]
RANDOM_ACTOR, HASTY_ACTOR = ACTORS[0], ACTORS[1]
PER_ITEM = 3
TARGET_S = 5.0
_CHUNK = 5000


def _clip(value: int) -> int:
    return max(1, min(5, value))


async def _fill(url: str, reviews: int, seed: int) -> int:
    """The scratch database's rows; the number of reviews written."""
    rng = random.Random(seed)
    engine = create_engine(url)
    await migrate(engine)
    items = -(-reviews // PER_ITEM)  # the last item takes what is left
    start = datetime(2026, 10, 1, tzinfo=UTC)
    async with engine.begin() as connection:
        conversation = (
            await connection.execute(
                insert(Conversation)
                .values(transport="bench", scope="dm:bench", persona="Marlowe")
                .returning(Conversation.id)
            )
        ).scalar_one()
        for first in range(0, items, _CHUNK):
            count = min(_CHUNK, items - first)
            await connection.execute(
                insert(MessageNode),
                [
                    {
                        "id": first + n + 1,
                        "conversation_id": conversation,
                        "role": "assistant",
                        "origin": "model",
                        "author_id": "Marlowe",
                        "author_name": "Marlowe",
                        "content": f"reply {first + n}",
                        "state": "sent",
                    }
                    for n in range(count)
                ],
            )
        gold_rows, item_rows, review_rows = [], [], []
        truths = {}
        for item in range(1, items + 1):
            truth = {name: rng.randint(1, 5) for name in DIMENSIONS}
            truths[item] = truth
            gold_id = None
            if item % 20 == 0:
                gold_id = len(gold_rows) + 1
                gold_rows.append(
                    {
                        "id": gold_id,
                        "candidate_id": item,
                        "scores": truth,
                        "unsafe": False,
                        "acceptable": truth["fidelity"] >= 3,
                        "rubric_version": "bench0000000",
                        "created_by": "discord:lead",
                    }
                )
            item_rows.append(
                {
                    "id": item,
                    "candidate_id": item,
                    "conversation_id": conversation,
                    "reason": "gold" if gold_id else "sample",
                    "reviews_needed": PER_ITEM,
                    "status": "open",
                    "gold_id": gold_id,
                }
            )
            given = start + timedelta(minutes=item)
            reviewers = min(PER_ITEM, reviews - (item - 1) * PER_ITEM)
            for actor in rng.sample(ACTORS, reviewers):
                if actor == RANDOM_ACTOR:
                    scores = {name: rng.randint(1, 5) for name in DIMENSIONS}
                    acceptable = rng.random() < 0.5
                else:
                    scores = {
                        name: _clip(v + rng.choice((-1, 0, 0, 0, 1))) for name, v in truth.items()
                    }
                    acceptable = scores["fidelity"] >= 3
                seconds = 0.5 if actor == HASTY_ACTOR else rng.uniform(15, 120)
                review_rows.append(
                    {
                        "item_id": item,
                        "actor_id": actor,
                        "rating": scores["fidelity"],
                        "scores": scores,
                        "unsafe": rng.random() < 0.01,
                        "acceptable": acceptable,
                        "rubric_version": "bench0000000",
                        "leased_at": given - timedelta(seconds=seconds),
                        "created_at": given,
                    }
                )
        for table, rows in ((GoldItem, gold_rows), (ReviewItem, item_rows), (Review, review_rows)):
            for first in range(0, len(rows), _CHUNK):
                await connection.execute(insert(table), rows[first : first + _CHUNK])
    await engine.dispose()
    return len(review_rows)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _independent(frame: pd.DataFrame, name: str) -> tuple[float, float]:
    """Alpha (ordinal) and AC1 of one dimension, laid out as the libraries' examples do:
    actors x items for krippendorff, items x actors for irrCAC."""
    wide = frame.pivot(index="item_id", columns="actor_id", values=name)
    alpha = krippendorff.alpha(
        reliability_data=wide.to_numpy().T,
        level_of_measurement="ordinal",
        value_domain=[1, 2, 3, 4, 5],
    )
    ac1 = CAC(wide, categories=[1.0, 2.0, 3.0, 4.0, 5.0], digits=12).gwet()["est"]
    return float(alpha), float(ac1["coefficient_value"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reviews", type=int, default=100_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--seed", type=int, default=25)
    args = parser.parse_args()
    verdicts = Verdicts()
    async with scratch_database(args.backend) as url:
        started = time.perf_counter()
        written = await _fill(url, args.reviews, args.seed)
        print(f"filled {written:,} reviews in {time.perf_counter() - started:.1f} s", flush=True)
        engine = create_engine(url)
        sessions = session_factory(engine)
        started = time.perf_counter()
        table = await load_reviews(sessions)
        read = time.perf_counter() - started
        figures = dimension_agreement(table)
        agreed = time.perf_counter() - started - read
        stats = compute_actor_stats(table)
        total = time.perf_counter() - started
        await engine.dispose()
    print(
        f"read {read:.2f} s, agreement {agreed:.2f} s, actors {total - read - agreed:.2f} s",
        flush=True,
    )
    verdicts.target(
        f"agreement and trust over {written:,} reviews ({args.backend})",
        f"{total:.2f} s",
        f"< {TARGET_S:.0f} s",
        total < TARGET_S,
    )
    for figure in figures:
        print(
            f"  {figure.name}: items {figure.units:,} alpha {figure.alpha:.3f} "
            f"AC1 {figure.ac1:.3f} AC2 {_fmt(figure.ac2)} raw {figure.raw:.3f}"
        )
    verdicts.check(len(table) == written, f"read {len(table):,} reviews of {written:,}")
    by_name = {figure.name: figure for figure in figures}
    for name in ("fidelity", "memory"):
        alpha, ac1 = _independent(table.frame, name)
        ours = by_name[name]
        verdicts.check(
            abs((ours.alpha or 0) - alpha) < 1e-9 and abs((ours.ac1 or 0) - ac1) < 1e-9,
            f"{name}: ours alpha {ours.alpha} AC1 {ours.ac1}, the libraries' {alpha} {ac1}",
        )
    lowest = [actor.actor_id for actor in sorted(stats, key=lambda actor: actor.trust)[:2]]
    verdicts.check(
        set(lowest) == {RANDOM_ACTOR, HASTY_ACTOR},
        f"the two lowest trust weights are {lowest}, not the random and the hasty actor",
    )
    trusts = sorted(actor.trust for actor in stats)
    print(
        f"  trust: lowest {trusts[0]:.3f}, {trusts[1]:.3f}; median {trusts[len(trusts) // 2]:.3f}"
    )
    verdicts.exit()


if __name__ == "__main__":
    np.seterr(all="ignore")
    asyncio.run(main())
