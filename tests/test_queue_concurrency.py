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


async def lease_and_ack_loop(url: str, job: str, limit: int) -> list[int]:
    """Claim and acknowledge until the queue is empty; the event ids this worker consumed."""
    engine = create_engine(url)
    sessions = session_factory(engine)
    consumed: list[int] = []
    try:
        while True:
            batch = await claim_batch(sessions, job, limit, timedelta(minutes=5))
            if batch.lease_id is None:
                return consumed
            result = await ack(sessions, batch.lease_id)
            assert result.consumed == len(batch.records)
            consumed.extend(record.event_id for record in batch.records)
    finally:
        await engine.dispose()


async def run_workers(db_engine: AsyncEngine, url: str, events: int, limit: int) -> None:
    ids = await seed_events(session_factory(db_engine), events)
    results = await asyncio.gather(
        *(lease_and_ack_loop(url, f"job-{n}", limit) for n in range(WORKERS))
    )
    delivered = Counter(event_id for worker in results for event_id in worker)
    assert sorted(delivered) == ids
    assert set(delivered.values()) == {1}
    assert sum(1 for worker in results if worker) > 1  # the work was really shared
    async with session_factory(db_engine)() as session:
        left = await session.scalar(select(func.count()).where(FeedbackEvent.consumed_at.is_(None)))
    assert left == 0


async def test_exactly_once_with_four_workers(db_engine: AsyncEngine, db_url: str) -> None:
    if db_engine.dialect.name == "postgresql":
        await run_workers(db_engine, db_url, events=2000, limit=50)
    else:
        await run_workers(db_engine, db_url, events=600, limit=25)
