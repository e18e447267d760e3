"""Exactly-once delivery: concurrent lease-and-ack loops, each on its own engine and connections.

On PostgreSQL the workers race through ``FOR UPDATE SKIP LOCKED``; on SQLite through the single
write lock. Every event must be leased and acknowledged exactly once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from feedback.database import create_engine, session_factory
from feedback.models import FeedbackEvent
from feedback.queue import ack, claim_batch
from tests.test_queue import seed_events

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

WORKERS = 4


async def lease_and_ack_loop(
    url: str, job: str, limit: int, first_leases: asyncio.Barrier
) -> list[int]:
    """Claim and acknowledge until the queue is empty; the event ids this worker consumed.

    Each worker waits at ``first_leases`` holding its first lease until every worker holds one:
    the leases overlap and the work is shared whatever order the database lets them in (SQLite's
    single write lock is not fair, and one worker could otherwise drain the queue alone).
    """
    engine = create_engine(url)
    sessions = session_factory(engine)
    consumed: list[int] = []
    first = True
    try:
        while True:
            batch = await claim_batch(sessions, job, limit, timedelta(minutes=5))
            if first:
                first = False
                await first_leases.wait()
            if batch.lease_id is None:
                return consumed
            result = await ack(sessions, batch.lease_id)
            assert result.consumed == len(batch.records)
            consumed.extend(record.event_id for record in batch.records)
    finally:
        await engine.dispose()


async def run_workers(db_engine: AsyncEngine, url: str, events: int, limit: int) -> None:
    ids = await seed_events(session_factory(db_engine), events)
    first_leases = asyncio.Barrier(WORKERS)
    results = await asyncio.gather(
        *(lease_and_ack_loop(url, f"job-{n}", limit, first_leases) for n in range(WORKERS))
    )
    delivered = Counter(event_id for worker in results for event_id in worker)
    assert sorted(delivered) == ids
    assert set(delivered.values()) == {1}
    assert all(results)  # every worker consumed some: the work was really shared
    async with session_factory(db_engine)() as session:
        left = await session.scalar(select(func.count()).where(FeedbackEvent.consumed_at.is_(None)))
    assert left == 0


async def test_exactly_once_with_four_workers(db_engine: AsyncEngine, db_url: str) -> None:
    if db_engine.dialect.name == "postgresql":
        await run_workers(db_engine, db_url, events=2000, limit=50)
    else:
        await run_workers(db_engine, db_url, events=600, limit=25)
