"""Exactly-once leasing under contention: concurrent lease-and-ack loops over 100k events.

Each worker is a separate process with its own engine, looping ``claim_batch(limit)`` then
``ack`` until the queue is empty. Reports throughput (records/s) and lease/ack latencies; issue 6
sets no timing target. Its target is correctness (exit 1 otherwise): every event delivered
exactly once (no duplicate, none missing), every ack consuming its whole lease, and every event
consumed at the end.

    .venv/bin/python bench/bench_leases.py [--events 100000] [--workers 4] [--limit 500]
        [--backend postgresql|sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, insert, select

from bench.common import Verdicts, scratch_database, summary
from feedback.database import create_engine, migrate, session_factory
from feedback.models import Conversation, FeedbackEvent, MessageNode, PromptSnapshot
from feedback.queue import ack, claim_batch

_INSERT_CHUNK = 5000


async def seed(url: str, events: int) -> None:
    """One conversation, one candidate and snapshot, and ``events`` rating events on it."""
    engine = create_engine(url)
    await migrate(engine)
    async with session_factory(engine)() as session:
        conversation = Conversation(transport="bench", scope="bench:1", persona="Marlowe")
        snapshot = PromptSnapshot(
            messages=[
                {"role": "system", "content": "You are Marlowe."},
                {"role": "user", "content": "What's the word on the street?"},
            ],
            persona="Marlowe",
            persona_version="v1",
            model_name="bench",
        )
        session.add_all([conversation, snapshot])
        await session.flush()
        turn = MessageNode(
            conversation_id=conversation.id,
            role="user",
            origin="user",
            author_id="bench:1",
            author_name="bench",
            content="What's the word on the street?",
            state="answered",
        )
        session.add(turn)
        await session.flush()
        candidate = MessageNode(
            conversation_id=conversation.id,
            parent_id=turn.id,
            role="assistant",
            origin="model",
            author_id="Marlowe",
            author_name="Marlowe",
            content="Rain, and a man who owes me money.",
            state="sent",
            prompt_snapshot_id=snapshot.id,
        )
        session.add(candidate)
        await session.flush()
        for start in range(0, events, _INSERT_CHUNK):
            await session.execute(
                insert(FeedbackEvent),
                [
                    {
                        "kind": "rate",
                        "actor_id": f"bench:actor{n % 7}",
                        "conversation_id": conversation.id,
                        "candidate_id": candidate.id,
                        "persona": "Marlowe",
                        "persona_version": "v1",
                        "prompt_snapshot_id": snapshot.id,
                        "rating": 1 + n % 5,
                        "tags": [],
                    }
                    for n in range(start, min(events, start + _INSERT_CHUNK))
                ],
            )
        await session.commit()
    await engine.dispose()


#: One worker's figures: event ids delivered, lease and ack seconds, and its short acks.
WorkerResult = tuple[list[int], list[float], list[float], list[str]]


async def _worker_loop(url: str, job: str, limit: int) -> WorkerResult:
    engine = create_engine(url)
    sessions = session_factory(engine)
    delivered: list[int] = []
    lease_s: list[float] = []
    ack_s: list[float] = []
    short_acks: list[str] = []
    try:
        while True:
            started = time.perf_counter()
            batch = await claim_batch(sessions, job, limit, timedelta(minutes=10))
            leased = time.perf_counter()
            if batch.lease_id is None:
                return delivered, lease_s, ack_s, short_acks
            result = await ack(sessions, batch.lease_id)
            lease_s.append(leased - started)
            ack_s.append(time.perf_counter() - leased)
            if result.consumed != len(batch.records):
                short_acks.append(
                    f"{job} lease {batch.lease_id}: acked {result.consumed} of "
                    f"{len(batch.records)} records"
                )
            delivered.extend(record.event_id for record in batch.records)
    finally:
        await engine.dispose()


def worker(url: str, job: str, limit: int) -> WorkerResult:
    """One process's lease-and-ack loop (separate engine and connections)."""
    return asyncio.run(_worker_loop(url, job, limit))


async def verify(url: str, events: int, delivered: Counter[int], verdicts: Verdicts) -> None:
    engine = create_engine(url)
    async with session_factory(engine)() as session:
        ids = (await session.scalars(select(FeedbackEvent.id).order_by(FeedbackEvent.id))).all()
        unconsumed = await session.scalar(
            select(func.count()).where(FeedbackEvent.consumed_at.is_(None))
        )
    await engine.dispose()
    duplicates = sum(1 for count in delivered.values() if count > 1)
    missing = len(set(ids) - set(delivered))
    print(
        f"events {len(ids):,}, delivered {sum(delivered.values()):,}, distinct {len(delivered):,},"
        f" duplicates {duplicates}, missing {missing}, unconsumed {unconsumed}"
    )
    verdicts.check(len(ids) == events, f"{len(ids):,} events stored, {events:,} seeded")
    verdicts.check(not duplicates, f"{duplicates} events delivered more than once")
    verdicts.check(not missing, f"{missing} events never delivered")
    verdicts.check(not unconsumed, f"{unconsumed} events not consumed after every ack")


async def run(backend: str, events: int, workers: int, limit: int, verdicts: Verdicts) -> None:
    async with scratch_database(backend) as url:
        started = time.perf_counter()
        await seed(url, events)
        print(f"{backend}: seeded {events:,} events in {time.perf_counter() - started:.1f} s")
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers) as pool:
            started = time.perf_counter()
            results = pool.starmap(worker, [(url, f"job-{n}", limit) for n in range(workers)])
            elapsed = time.perf_counter() - started
        delivered = Counter(event_id for ids, *_ in results for event_id in ids)
        print(
            f"{workers} processes, lease(limit={limit}) + ack: {elapsed:.2f} s, "
            f"{events / elapsed:,.0f} records/s (no timing target); per worker: "
            + ", ".join(f"{len(ids):,}" for ids, *_ in results)
        )
        print(f"lease {summary([s for _, lease_s, _, _ in results for s in lease_s])}")
        print(f"ack   {summary([s for _, _, ack_s, _ in results for s in ack_s])}")
        short_acks = [text for *_, shorts in results for text in shorts]
        verdicts.check(
            not short_acks,
            f"{len(short_acks)} acks consumed less than their lease: {short_acks[:3]}",
        )
        await verify(url, events, delivered, verdicts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()
    verdicts = Verdicts()
    asyncio.run(run(args.backend, args.events, args.workers, args.limit, verdicts))
    verdicts.exit()


if __name__ == "__main__":
    main()
