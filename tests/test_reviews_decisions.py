"""Where finished turns enter the review queue: the decision service, as replies go out.

The database is real (both backends); a :class:`~tests.factories.RecordingOutlet` stands for the
transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from bot.engine import ConversationEngine, EngineLimits, Reply
from bot.llm import FakeChatModel
from feedback.database import session_factory
from feedback.models import ReviewItem
from feedback.reviews import ReviewPolicy
from feedback.store import ConversationStore
from personas import PersonaRegistry
from tests.factories import ALICE_ACTOR, BOB_ACTOR, decisions_for
from tests.test_decisions import _News, _said

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from bot.decisions import DecisionService
    from tests.factories import RecordingOutlet


def _service(
    db_engine: AsyncEngine, *, share: float, replies: list[str], **options: object
) -> tuple[DecisionService, RecordingOutlet]:
    sessions = session_factory(db_engine)
    engine = ConversationEngine(
        personas=PersonaRegistry.load(),
        store=ConversationStore(sessions),
        model=FakeChatModel(replies=replies),
        memory=None,
        limits=EngineLimits(),
    )
    decisions, outlet = decisions_for(engine, **options)  # type: ignore[arg-type]
    decisions.add_reviews(sessions, ReviewPolicy(share=share))
    return decisions, outlet


async def _items(db_engine: AsyncEngine) -> dict[int, tuple[str, str | None]]:
    """Queued replies: ``{reply id: (reason, live actor)}``."""
    async with session_factory(db_engine)() as session:
        rows = (await session.scalars(select(ReviewItem).order_by(ReviewItem.id))).all()
    return {row.candidate_id: (row.reason, row.live_actor_id) for row in rows}


async def _reply(decisions: DecisionService, text: str, *, hold: bool) -> Reply:
    reply = await decisions.engine.respond(_said(text))
    assert isinstance(reply, Reply)
    await decisions.present(reply, hold=hold)
    return reply


async def test_rewritten_and_flagged_replies_always_enter_the_queue(
    db_engine: AsyncEngine,
) -> None:
    decisions, outlet = _service(
        db_engine, share=0.0, replies=["Evening.", "Sorry, kid.", "Hm."], hold_seconds=60
    )
    plain = await _reply(decisions, "hello", hold=False)
    assert [d.node_id for d in outlet.delivered] == [plain.candidate_id]
    assert await _items(db_engine) == {}  # not sampled (share 0), not flagged
    rewritten = await decisions.rewrite(
        plain.candidate_id, actor=ALICE_ACTOR, text="Evening, friend.", key=None
    )
    grief = await _reply(decisions, "my dad passed away last night", hold=True)
    assert grief.risk.hold
    approved = await decisions.approve(grief.candidate_id, actor=BOB_ACTOR, key=None)
    assert approved.status == "done"
    assert await _items(db_engine) == {
        rewritten.result_id: ("rewritten", ALICE_ACTOR.id),
        grief.candidate_id: ("flagged", BOB_ACTOR.id),
    }
    await decisions.close()


async def test_sampled_replies_keep_who_decided_them_live(db_engine: AsyncEngine) -> None:
    decisions, _outlet = _service(
        db_engine, share=1.0, replies=["Evening.", "Night.", "Hm."], hold_seconds=0.2
    )
    news = _News(decisions)
    auto = await _reply(decisions, "hello", hold=False)
    timed_out = await _reply(decisions, "still there?", hold=True)
    assert (await news.wait_for("decided", timed_out.candidate_id)).actor_id == "timeout"
    # Bob confirms the reply that went out on its own: he decided it, so it is not his to review.
    confirmed = await decisions.approve(auto.candidate_id, actor=BOB_ACTOR, key=None)
    assert confirmed.status == "done"
    urgent = await _reply(decisions, "I want to kill myself", hold=False)
    items = await _items(db_engine)
    assert items[auto.candidate_id] == ("sample", BOB_ACTOR.id)
    assert items[timed_out.candidate_id] == ("sample", None)  # the timeout is nobody
    # An urgent reply no actor saw is withheld; the safety line that went out is not reviewed.
    assert urgent.candidate_id not in items and len(items) == 2
    await decisions.close()
