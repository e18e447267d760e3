"""The correction queue: leases, acknowledgements, expiry and counts, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, insert, select, update

from feedback.corrections import Actor
from feedback.database import session_factory
from feedback.models import FeedbackEvent, Lease, MessageNode
from feedback.queue import (
    LeaseExpired,
    QueueError,
    UnknownLease,
    ack,
    claim_batch,
    stats,
)
from tests.factories import ALICE_ACTOR, BOB_ACTOR, add_turn, stores

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

MINUTE = timedelta(minutes=1)


async def seed_events(
    sessions: async_sessionmaker[AsyncSession], count: int, *, persona: str = "Marlowe"
) -> list[int]:
    """``count`` rating events on one real candidate, written in one bulk insert; their ids."""
    conversations, _ = stores(sessions)
    turn = await add_turn(conversations, persona=persona, text="seed", reply="Seeded reply.")
    async with sessions() as session:
        snapshot_id = await session.scalar(
            select(MessageNode.prompt_snapshot_id).where(MessageNode.id == turn.candidate_id)
        )
        await session.execute(
            insert(FeedbackEvent),
            [
                {
                    "kind": "rate",
                    "actor_id": f"discord:{9000 + n % 3}",
                    "conversation_id": turn.conversation_id,
                    "candidate_id": turn.candidate_id,
                    "persona": persona,
                    "persona_version": f"v-{persona.lower()}",
                    "prompt_snapshot_id": snapshot_id,
                    "rating": 1 + n % 5,
                    "tags": [],
                }
                for n in range(count)
            ],
        )
        await session.commit()
        return list(
            (
                await session.scalars(
                    select(FeedbackEvent.id)
                    .where(FeedbackEvent.persona == persona)
                    .order_by(FeedbackEvent.id)
                )
            ).all()
        )


async def expire(sessions: async_sessionmaker[AsyncSession], lease_id: str) -> None:
    """Make a lease's expiry lie in the past."""
    async with sessions() as session:
        await session.execute(
            update(Lease)
            .where(Lease.id == lease_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()


@pytest.fixture
def sessions(db_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(db_engine)


async def test_claims_oldest_first_without_overlap(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ids = await seed_events(sessions, 10)
    first = await claim_batch(sessions, "job-a", 4, MINUTE)
    second = await claim_batch(sessions, "job-b", 4, MINUTE)
    third = await claim_batch(sessions, "job-c", 4, MINUTE)
    assert [r.event_id for r in first.records] == ids[:4]
    assert [r.event_id for r in second.records] == ids[4:8]
    assert [r.event_id for r in third.records] == ids[8:]
    assert first.expires_at is not None
    assert first.expires_at - datetime.now(UTC) <= MINUTE


async def test_records_carry_texts_and_prompt(sessions: async_sessionmaker[AsyncSession]) -> None:
    conversations, corrections = stores(sessions)
    turn = await add_turn(conversations, text="Any news?", reply="Rain, mostly.")
    await corrections.rewrite(
        turn.candidate_id, actor=ALICE_ACTOR, text="Rain. Always rain.", key="k1"
    )
    batch = await claim_batch(sessions, "job", 10, MINUTE)
    (record,) = batch.records
    assert record.kind == "rewrite"
    assert record.original_text == "Rain, mostly."
    assert record.new_text == record.result_text == "Rain. Always rain."
    assert record.candidate_text == "Rain, mostly."
    assert record.prompt is not None
    assert record.prompt[-1] == {"role": "user", "content": "Any news?"}
    assert record.persona_version == "v-marlowe"


async def test_ack_consumes_and_a_retry_is_harmless(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await seed_events(sessions, 5)
    batch = await claim_batch(sessions, "job", 3, MINUTE)
    assert batch.lease_id is not None
    result = await ack(sessions, batch.lease_id)
    assert (result.consumed, result.already_acked) == (3, False)
    again = await ack(sessions, batch.lease_id)
    assert (again.consumed, again.already_acked) == (0, True)
    assert again.acked_at == result.acked_at
    rest = await claim_batch(sessions, "job", 10, MINUTE)
    assert len(rest.records) == 2
    counts = await stats(sessions)
    assert (counts["total"], counts["consumed"], counts["leased"], counts["available"]) == (
        5,
        3,
        2,
        0,
    )


async def test_empty_queue_creates_no_lease(sessions: async_sessionmaker[AsyncSession]) -> None:
    batch = await claim_batch(sessions, "job", 10, MINUTE)
    assert (batch.lease_id, batch.expires_at, batch.records) == (None, None, [])
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Lease)) == 0


async def test_expired_lease_returns_records_and_its_ack_is_refused(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ids = await seed_events(sessions, 4)
    old = await claim_batch(sessions, "slow-job", 4, MINUTE)
    assert old.lease_id is not None
    assert (await claim_batch(sessions, "other", 4, MINUTE)).records == []
    await expire(sessions, old.lease_id)
    assert (await stats(sessions))["available"] == 4
    new = await claim_batch(sessions, "other", 4, MINUTE)
    assert [r.event_id for r in new.records] == ids
    with pytest.raises(LeaseExpired, match=r"expired at .* went back to the queue"):
        await ack(sessions, old.lease_id)
    async with sessions() as session:
        consumed = await session.scalar(
            select(func.count()).where(FeedbackEvent.consumed_at.is_not(None))
        )
    assert consumed == 0  # the late ack consumed nothing that the other job holds
    assert new.lease_id is not None
    assert (await ack(sessions, new.lease_id)).consumed == 4


async def test_expired_lease_ack_refused_even_before_anyone_reclaims(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await seed_events(sessions, 2)
    batch = await claim_batch(sessions, "job", 2, MINUTE)
    assert batch.lease_id is not None
    await expire(sessions, batch.lease_id)
    with pytest.raises(LeaseExpired):
        await ack(sessions, batch.lease_id)
    assert (await stats(sessions))["available"] == 2


async def test_unknown_lease(sessions: async_sessionmaker[AsyncSession]) -> None:
    with pytest.raises(UnknownLease, match="no lease 'nope'"):
        await ack(sessions, "nope")


@pytest.mark.parametrize(
    ("limit", "ttl", "job", "message"),
    [
        (0, MINUTE, "job", "1 to 10,000 records, not 0"),
        (10_001, MINUTE, "job", "not 10,001"),
        (5, timedelta(seconds=9), "job", "10 to 86400 seconds, not 9"),
        (5, timedelta(days=2), "job", "not 172800"),
        (5, MINUTE, "", "job name is 1 to 128"),
        (5, MINUTE, "j" * 129, "job name is 1 to 128"),
    ],
)
async def test_claim_limits(
    sessions: async_sessionmaker[AsyncSession],
    limit: int,
    ttl: timedelta,
    job: str,
    message: str,
) -> None:
    with pytest.raises(QueueError, match=message):
        await claim_batch(sessions, job, limit, ttl)


async def test_stats_by_kind_and_persona(sessions: async_sessionmaker[AsyncSession]) -> None:
    conversations, corrections = stores(sessions)
    first = await add_turn(conversations, persona="Marlowe", reply="Evening.")
    second = await add_turn(conversations, persona="Juniper", user_id="discord:2", reply="Hi!")
    await corrections.approve(first.candidate_id, actor=ALICE_ACTOR, key="a")
    await corrections.rate(second.candidate_id, actor=BOB_ACTOR, rating=5, key="b")
    await corrections.rate(
        second.candidate_id, actor=Actor("discord:3", "Cy"), rating=None, tags=["funny"], key="c"
    )
    batch = await claim_batch(sessions, "job", 1, MINUTE)
    assert batch.lease_id is not None
    counts = await stats(sessions)
    assert counts["total"] == 3
    assert counts["live_leases"] == 1
    assert counts["by_kind"] == {
        "approve": {"total": 1, "available": 0, "leased": 1, "consumed": 0},
        "rate": {"total": 2, "available": 2, "leased": 0, "consumed": 0},
    }
    assert counts["by_persona"]["Juniper"] == {
        "total": 2,
        "available": 2,
        "leased": 0,
        "consumed": 0,
    }
    await ack(sessions, batch.lease_id)
    counts = await stats(sessions)
    assert (counts["consumed"], counts["leased"], counts["live_leases"]) == (1, 0, 0)
