"""Once per item per reviewer under concurrency: reviewers pull and submit at once, each on its
own engine and connections.

On PostgreSQL the pulls race through ``FOR UPDATE SKIP LOCKED``; on SQLite through the single
write lock. Every item must end with exactly ``per_item`` reviews, each reviewer served each item
at most once, and nobody given the reply they decided live.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

from sqlalchemy import select

from feedback.database import create_engine, session_factory
from feedback.models import Review, ReviewItem
from feedback.reviews import FinishedReply, ReviewPolicy, ReviewQueue
from tests.factories import add_turn, stores
from tests.test_reviews import RUBRIC, verdict

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

REVIEWERS = 6
ITEMS = 24
PER_ITEM = 3


async def review_loop(url: str, actor_id: str, everyone_has_one: asyncio.Barrier) -> list[int]:
    """Pull and review until nothing is left for this actor; the item ids served, in order.

    Each reviewer waits at ``everyone_has_one`` holding their first lease until every reviewer
    holds one, so the leases overlap whatever order the database lets them in.
    """
    engine = create_engine(url)
    queue = ReviewQueue(
        session_factory(engine),
        ReviewPolicy(share=1.0, per_item=PER_ITEM, gold_rate=0.0),
        lambda persona: RUBRIC,
    )
    served: list[int] = []
    first = True
    try:
        while True:
            view = await queue.next_item(actor_id)
            if first:
                first = False
                await everyone_has_one.wait()
            if view is None:
                return served
            served.append(view.item_id)
            outcome = await queue.submit(view.item_id, actor_id, verdict())
            assert outcome.status == "done", outcome
    finally:
        await engine.dispose()


async def test_each_item_is_reviewed_exactly_per_item_times(
    db_engine: AsyncEngine, db_url: str
) -> None:
    sessions = session_factory(db_engine)
    conversations, _ = stores(sessions)
    queue = ReviewQueue(sessions, ReviewPolicy(share=1.0, per_item=PER_ITEM), lambda p: RUBRIC)
    actors = [f"discord:{500 + n}" for n in range(REVIEWERS)]
    live: dict[int, str] = {}
    for n in range(ITEMS):
        turn = await add_turn(conversations, user_id=f"discord:{n}", text=f"q{n}", state="sent")
        decided_by = actors[n % REVIEWERS] if n % 2 else None
        await queue.enqueue(
            FinishedReply(turn.candidate_id, turn.conversation_id, "model", decided_by=decided_by)
        )
        if decided_by:
            live[turn.candidate_id] = decided_by
    barrier = asyncio.Barrier(REVIEWERS)
    results = await asyncio.gather(*(review_loop(db_url, actor, barrier) for actor in actors))
    for actor, served in zip(actors, results, strict=True):
        assert len(served) == len(set(served)), f"{actor} was served an item twice"
    assert all(results)  # every reviewer got some: the work was really shared
    async with sessions() as session:
        items = {item.id: item for item in (await session.scalars(select(ReviewItem))).all()}
        reviews = (await session.execute(select(Review.item_id, Review.actor_id))).all()
    per_item = Counter(item_id for item_id, _ in reviews)
    assert per_item == dict.fromkeys(items, PER_ITEM)
    assert all(item.status == "accepted" for item in items.values())
    for item_id, actor in reviews:
        assert live.get(items[item_id].candidate_id) != actor, "a reviewer got their own"
