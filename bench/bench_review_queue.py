"""The review queue under concurrent reviewers: next-item lease latency and exactly-once.

One process, as the bot is: one engine (its pool of 20 connections) and ``--actors`` reviewers
pulling in rounds: every reviewer starts ``lease`` (the next item, :meth:`ReviewQueue.lease`) at
the same moment, then submits its review, until nothing is left for any of them. Every pull
races the others for the oldest items, the queue's worst case; the lease's latency is measured
per pull, the submission is not. The seeded queue holds ``--items`` sampled replies waiting for
``--per-item`` reviews (a tenth of them decided live by one of the reviewers, a tenth rated live
by one, 20,000 other actors' feedback events on them) and ``--gold`` gold items made by one of
the reviewers, served at ``--gold-rate``.

Target (issue 25): next-item lease p99 at most 50 ms with 20 actors on PostgreSQL. Correctness
(exit 1 otherwise): no reviewer served an item twice, every regular item ends with exactly
``per_item`` reviews, nobody reviewed a reply they decided or acted on live or a gold item they
made, every gold item reviewed by every other reviewer once, and every reviewer drained.

    .venv/bin/python bench/bench_review_queue.py [--actors 20] [--items 2000] [--per-item 3]
        [--gold 40] [--gold-rate 0.1] [--backend postgresql|sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select, text

from bench.common import Verdicts, percentile, scratch_database, summary
from feedback.database import create_engine, migrate, session_factory
from feedback.models import (
    Conversation,
    FeedbackEvent,
    GoldItem,
    MessageNode,
    Review,
    ReviewItem,
)
from feedback.reviews import ReviewPolicy, ReviewQueue, check_verdict
from feedback.rubric import DEFAULT_DIMENSIONS, Rubric

RUBRIC = Rubric.of(DEFAULT_DIMENSIONS)
TARGET_P99_MS = 50.0
_CHUNK = 2000
_OTHER_EVENTS = 20_000


def _actor(n: int) -> str:
    return f"bench:actor-{n:02d}"


def _chunks(rows: list[dict[str, object]]) -> list[list[dict[str, object]]]:
    return [rows[start : start + _CHUNK] for start in range(0, len(rows), _CHUNK)]


async def seed(url: str, *, actors: int, items: int, gold: int, per_item: int) -> dict[str, set]:
    """The queue: ``items`` sampled replies and ``gold`` gold replies, each a conversation of
    one user turn and its reply. Returns who may not review what (for the checks)."""
    engine = create_engine(url)
    await migrate(engine)
    rng = random.Random(25)
    replies = items + gold
    conversations = [
        {"id": n + 1, "transport": "bench", "scope": f"bench:user-{n}", "persona": "Marlowe"}
        for n in range(replies)
    ]
    nodes: list[dict[str, object]] = []
    for n in range(replies):
        common = {"conversation_id": n + 1, "flags": []}
        nodes.append(
            {
                **common,
                "id": 2 * n + 1,
                "role": "user",
                "origin": "user",
                "author_id": f"bench:user-{n}",
                "author_name": f"user {n}",
                "content": f"Question {n}: what do you make of the rain tonight?",
                "state": "answered",
            }
        )
        nodes.append(
            {
                **common,
                "id": 2 * n + 2,
                "parent_id": 2 * n + 1,
                "role": "assistant",
                "origin": "model",
                "author_id": "persona:Marlowe",
                "author_name": "Marlowe",
                "content": f"Rain's just the city washing its hands, kid ({n}).",
                "state": "sent",
            }
        )
    live: dict[int, str] = {}  # reply id: the reviewer who decided it live
    acted: dict[int, str] = {}  # reply id: the reviewer who rated it live
    review_items = []
    for n in range(items):
        reply = 2 * n + 2
        decided = _actor(rng.randrange(actors)) if rng.random() < 0.1 else None
        if decided:
            live[reply] = decided
        if rng.random() < 0.1:
            acted[reply] = _actor(rng.randrange(actors))
        review_items.append(
            {
                "candidate_id": reply,
                "conversation_id": n + 1,
                "live_actor_id": decided,
                "reason": "sample",
                "reviews_needed": per_item,
                "status": "open",
            }
        )
    events = [
        {
            "kind": "rate",
            "actor_id": actor,
            "conversation_id": (reply + 1) // 2,
            "candidate_id": reply,
            "persona": "Marlowe",
            "rating": 3,
            "tags": [],
        }
        for reply, actor in acted.items()
    ] + [
        {
            "kind": "rate",
            "actor_id": f"bench:elsewhere-{k % 50}",
            "conversation_id": (reply + 1) // 2,
            "candidate_id": reply,
            "persona": "Marlowe",
            "rating": 4,
            "tags": [],
        }
        for k in range(_OTHER_EVENTS)
        for reply in [2 * rng.randrange(items) + 2]
    ]
    lead = _actor(0)
    golds = [
        {
            "id": k + 1,
            "candidate_id": 2 * (items + k) + 2,
            "rating": 4,
            "scores": {"fidelity": 4},
            "unsafe": False,
            "acceptable": True,
            "rubric_version": RUBRIC.version,
            "created_by": lead,
        }
        for k in range(gold)
    ]
    gold_items = [
        {
            "candidate_id": row["candidate_id"],
            "conversation_id": items + k + 1,
            "live_actor_id": None,
            "reason": "gold",
            "reviews_needed": per_item,
            "status": "open",
            "gold_id": row["id"],
        }
        for k, row in enumerate(golds)
    ]
    async with session_factory(engine)() as session:
        for table, rows in (
            (Conversation, conversations),
            (MessageNode, nodes),
            (GoldItem, golds),
            (ReviewItem, review_items + gold_items),
            (FeedbackEvent, events),
        ):
            for chunk in _chunks(rows):  # type: ignore[arg-type]
                await session.execute(insert(table), chunk)
        await session.commit()  # explicit ids: nothing else inserts these rows
    if engine.dialect.name == "postgresql":  # the statistics autovacuum would gather by now
        async with engine.connect() as connection:
            await connection.execute(text("ANALYZE"))
            await connection.commit()
    await engine.dispose()
    return {"live": set(live.items()), "acted": set(acted.items()), "lead": {lead}}


class Rounds:
    """Reviewers pull in rounds: every reviewer still pulling starts its pull at the same moment
    (20 concurrent pulls), then submits; a reviewer with nothing left leaves the rounds."""

    def __init__(self, reviewers: int) -> None:
        self.waiting = reviewers
        self.arrived = 0
        self.round = asyncio.Event()

    async def start(self) -> None:
        """Wait until every reviewer still pulling is ready for the next round."""
        self.arrived += 1
        current = self.round
        if self.arrived >= self.waiting:
            self._next()
        else:
            await current.wait()

    def leave(self) -> None:
        self.waiting -= 1
        if self.waiting and self.arrived >= self.waiting:
            self._next()

    def _next(self) -> None:
        self.arrived = 0
        done, self.round = self.round, asyncio.Event()
        done.set()


async def reviewer(queue: ReviewQueue, actor: str, rounds: Rounds) -> tuple[list[int], list[float]]:
    """Pull and review until nothing is left; the items served, and each lease's seconds."""
    verdict = check_verdict(
        RUBRIC, scores=dict.fromkeys(RUBRIC.names, 4), unsafe=False, acceptable=True, rating=4
    )
    served: list[int] = []
    seconds: list[float] = []
    while True:
        await rounds.start()
        began = time.perf_counter()
        leased = await queue.lease(actor)
        seconds.append(time.perf_counter() - began)
        if leased is None:
            rounds.leave()
            return served, seconds
        served.append(leased[0])
        outcome = await queue.submit(leased[0], actor, verdict)
        if outcome.status != "done":
            raise AssertionError(f"{actor} could not review item {leased[0]}: {outcome}")


async def verify(
    url: str,
    results: dict[str, list[int]],
    excluded: dict[str, set],
    *,
    actors: int,
    per_item: int,
    verdicts: Verdicts,
) -> None:
    engine = create_engine(url)
    async with session_factory(engine)() as session:
        items = (
            await session.execute(
                select(ReviewItem.id, ReviewItem.candidate_id, ReviewItem.gold_id)
            )
        ).all()
        reviews = (await session.execute(select(Review.item_id, Review.actor_id))).all()
    await engine.dispose()
    twice = {
        actor: n for actor, served in results.items() for n in [len(served) - len(set(served))] if n
    }
    verdicts.check(not twice, f"reviewers served an item twice: {twice}")
    counts = Counter(item_id for item_id, _ in reviews)
    candidate = {item_id: reply for item_id, reply, _ in items}
    regular = [item_id for item_id, _, gold in items if gold is None]
    gold = [item_id for item_id, _, gold in items if gold is not None]
    wrong = {item_id: counts[item_id] for item_id in regular if counts[item_id] != per_item}
    verdicts.check(
        not wrong,
        f"{len(wrong)} items without exactly {per_item} reviews: {list(wrong.items())[:5]}",
    )
    own = [
        (item_id, actor)
        for item_id, actor in reviews
        if (candidate[item_id], actor) in excluded["live"] | excluded["acted"]
        or (item_id in gold and actor in excluded["lead"])
    ]
    verdicts.check(
        not own, f"{len(own)} reviews of replies the reviewer decided, rated or made gold"
    )
    gold_short = [item_id for item_id in gold if counts[item_id] != actors - 1]
    verdicts.check(
        not gold_short, f"{len(gold_short)} gold items not reviewed by every other reviewer once"
    )
    print(
        f"items {len(regular):,} regular + {len(gold):,} gold, reviews {len(reviews):,}, "
        f"served twice: {sum(twice.values())}, wrong counts: {len(wrong)}, own: {len(own)}"
    )


async def run(args: argparse.Namespace, verdicts: Verdicts) -> None:
    async with scratch_database(args.backend) as url:
        started = time.perf_counter()
        excluded = await seed(
            url, actors=args.actors, items=args.items, gold=args.gold, per_item=args.per_item
        )
        seeded = time.perf_counter() - started
        print(f"{args.backend}: seeded {args.items:,} items and {args.gold} gold in {seeded:.1f} s")
        engine = create_engine(url)
        queue = ReviewQueue(
            session_factory(engine),
            ReviewPolicy(share=1.0, per_item=args.per_item, gold_rate=args.gold_rate),
            lambda persona: RUBRIC,
        )
        actors = [_actor(n) for n in range(args.actors)]
        rounds = Rounds(len(actors))
        started, cpu = time.perf_counter(), time.process_time()
        outcomes = await asyncio.gather(*(reviewer(queue, actor, rounds) for actor in actors))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        await engine.dispose()
        served = {actor: items for actor, (items, _) in zip(actors, outcomes, strict=True)}
        leases = [s for _, seconds in outcomes for s in seconds]
        pulls = sum(len(items) for items in served.values())
        print(
            f"{len(actors)} reviewers, {pulls:,} items reviewed in {elapsed:.1f} s "
            f"({pulls / elapsed:,.0f} reviews/s, lease and submit); per reviewer "
            f"{min(map(len, served.values()))}-{max(map(len, served.values()))}"
        )
        print(f"next-item lease {summary(leases)}")
        print(
            f"this process: {cpu:.1f} CPU s in {elapsed:.1f} s, {cpu / pulls * 1000:.2f} ms CPU "
            "per lease and submission (a figure the machine's load does not inflate much)"
        )
        p99 = percentile([s * 1000 for s in leases], 99)
        verdicts.target(
            f"next-item lease p99, {len(actors)} actors, {args.backend}",
            f"{p99:.1f} ms",
            f"<= {TARGET_P99_MS:.0f} ms",
            p99 <= TARGET_P99_MS,
        )
        await verify(
            url, served, excluded, actors=args.actors, per_item=args.per_item, verdicts=verdicts
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--actors", type=int, default=20)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--per-item", type=int, default=3)
    parser.add_argument("--gold", type=int, default=40)
    parser.add_argument("--gold-rate", type=float, default=0.1)
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()
    verdicts = Verdicts()
    asyncio.run(run(args, verdicts))
    verdicts.exit()


if __name__ == "__main__":
    main()
