"""Review items, reviews and gold items for tests, written as rows (the review queue's own
service lives in :mod:`feedback.reviews`; these tests need many finished reviews fast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from feedback.models import GoldItem, Review, ReviewItem
from tests.factories import Turn, add_turn

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from feedback.store import ConversationStore

__all__ = ["GIVEN_AT", "Verdict", "add_gold", "add_reviewed_turn"]

#: When the reviews of these tests are given (leases start ``seconds`` before).
GIVEN_AT = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Verdict:
    """One reviewer's verdict on an item."""

    actor_id: str
    scores: dict[str, int] = field(default_factory=dict)
    rating: int = 4
    acceptable: bool = True
    unsafe: bool = False
    seconds: float = 30.0
    at: datetime = GIVEN_AT


async def add_reviewed_turn(
    sessions: async_sessionmaker[AsyncSession],
    conversations: ConversationStore,
    verdicts: list[Verdict],
    *,
    persona: str = "Marlowe",
    user_id: str = "discord:1",
    live_actor_id: str | None = None,
    gold_id: int | None = None,
    status: str = "open",
    reason: str = "sample",
    turn: Turn | None = None,
) -> tuple[Turn, int]:
    """A sent reply with a review item holding ``verdicts``; the turn and the item's id."""
    if turn is None:
        turn = await add_turn(conversations, persona=persona, user_id=user_id, state="sent")
    async with sessions() as session, session.begin():
        item = ReviewItem(
            candidate_id=turn.candidate_id,
            conversation_id=turn.conversation_id,
            live_actor_id=live_actor_id,
            reason=reason,
            reviews_needed=3,
            status=status,
            gold_id=gold_id,
        )
        session.add(item)
        await session.flush()
        for verdict in verdicts:
            session.add(
                Review(
                    item_id=item.id,
                    actor_id=verdict.actor_id,
                    rating=verdict.rating,
                    scores=verdict.scores,
                    unsafe=verdict.unsafe,
                    acceptable=verdict.acceptable,
                    rubric_version="0123456789ab",
                    leased_at=verdict.at - timedelta(seconds=verdict.seconds),
                    created_at=verdict.at,
                )
            )
        item_id = item.id
    return turn, item_id


async def add_gold(
    sessions: async_sessionmaker[AsyncSession],
    candidate_id: int,
    *,
    scores: dict[str, int],
    acceptable: bool = True,
    unsafe: bool = False,
) -> int:
    """A gold verdict on a reply; its id."""
    async with sessions() as session, session.begin():
        gold = GoldItem(
            candidate_id=candidate_id,
            scores=scores,
            unsafe=unsafe,
            acceptable=acceptable,
            rubric_version="0123456789ab",
            created_by="discord:lead",
        )
        session.add(gold)
        await session.flush()
        return gold.id
