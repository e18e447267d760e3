"""The review queue: what enters it, leases, blind views, submissions, acceptance and gold, on
SQLite and PostgreSQL (the concurrency test is in ``test_reviews_concurrency.py``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import func, select, update

from feedback.database import session_factory
from feedback.gold import GoldImportError, GoldStore
from feedback.models import GoldItem, Review, ReviewItem, ReviewLease
from feedback.reviews import (
    FinishedReply,
    InvalidVerdict,
    ReviewItemView,
    ReviewPolicy,
    ReviewQueue,
    Verdict,
    check_verdict,
    consensus,
    gold_correct,
    is_flagged,
    item_status,
    majority,
    parse_verdict,
    review_reason,
    sampled,
)
from feedback.rubric import DEFAULT_DIMENSIONS, Rubric
from tests.factories import ALICE_ACTOR, add_turn, stores

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from tests.factories import Turn

RUBRIC = Rubric.of(DEFAULT_DIMENSIONS)
ANN, BEN, CAT, DAN = "discord:101", "discord:102", "discord:103", "discord:104"
SAFE_OK = "acceptable=yes unsafe=no overall=4 fidelity=4 voice=4 resonance=3 memory=4"


def verdict(acceptable: bool = True, *, unsafe: bool = False, score: int = 4) -> Verdict:
    """A complete review verdict under the default rubric, every dimension at ``score``."""
    return check_verdict(
        RUBRIC,
        scores=dict.fromkeys(RUBRIC.names, score),
        unsafe=unsafe,
        acceptable=acceptable,
        rating=score,
    )


def queue_for(
    sessions: async_sessionmaker[AsyncSession], *, draws: list[float] | None = None, **policy: Any
) -> ReviewQueue:
    """A queue with the default rubric; ``draws`` are the gold draws of successive pulls (1.0:
    never gold first)."""
    pending = list(draws or [])
    return ReviewQueue(
        sessions,
        ReviewPolicy(**{"share": 1.0, "gold_rate": 0.0, **policy}),
        lambda persona: RUBRIC,
        draw=lambda: pending.pop(0) if pending else 1.0,
    )


async def queued_turns(
    sessions: async_sessionmaker[AsyncSession],
    queue: ReviewQueue,
    count: int,
    *,
    decided_by: str | None = None,
) -> list[Turn]:
    """``count`` sent replies, each queued (as samples), oldest first."""
    conversations, _ = stores(sessions)
    turns = []
    for n in range(count):
        turn = await add_turn(
            conversations,
            user_id=f"discord:{n + 1}",
            text=f"question {n}",
            reply=f"answer {n}",
            state="sent",
        )
        reason = await queue.enqueue(
            FinishedReply(turn.candidate_id, turn.conversation_id, "model", decided_by=decided_by)
        )
        assert reason == "sample"
        turns.append(turn)
    return turns


async def expire_leases(sessions: async_sessionmaker[AsyncSession], actor_id: str) -> None:
    """Make every lease of ``actor_id`` lie in the past (they walked away)."""
    async with sessions() as session:
        await session.execute(
            update(ReviewLease)
            .where(ReviewLease.actor_id == actor_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()


async def item_of(sessions: async_sessionmaker[AsyncSession], item_id: int) -> ReviewItem:
    async with sessions() as session:
        item = await session.get(ReviewItem, item_id)
    assert item is not None
    return item


@pytest.fixture
def sessions(db_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(db_engine)


# -- what enters the queue ----------------------------------------------------------------------


def test_what_enters_the_queue() -> None:
    risk = [{"kind": "risk", "urgent": False, "reasons": ["grief"]}]
    over = [{"kind": "contradiction", "score": 0.9, "over_threshold": True}]
    under = [{"kind": "contradiction", "score": 0.2, "over_threshold": False}]
    outage = [{"kind": "memory_unavailable", "error": "down"}]
    assert is_flagged(risk) and is_flagged(over)
    assert not is_flagged(under) and not is_flagged(outage) and not is_flagged([])
    assert review_reason(FinishedReply(1, 1, "rewrite"), 0.0) == "rewritten"
    assert review_reason(FinishedReply(1, 1, "model", risk), 0.0) == "flagged"
    assert review_reason(FinishedReply(1, 1, "model", outage), 0.0) is None
    assert review_reason(FinishedReply(1, 1, "model"), 1.0) == "sample"
    for canned in ("fallback", "safety_fallback", "takeover", "greeting"):
        assert review_reason(FinishedReply(1, 1, canned, risk), 1.0) is None


def test_the_sample_is_a_stable_share_of_ids() -> None:
    ids = range(1, 20_001)
    chosen = [i for i in ids if sampled(i, 0.1)]
    assert 0.09 < len(chosen) / len(ids) < 0.11
    assert chosen == [i for i in ids if sampled(i, 0.1)]  # the same reply, the same answer
    assert set(chosen) <= {i for i in ids if sampled(i, 0.3)}  # a larger share keeps these
    assert not any(sampled(i, 0.0) for i in ids) and all(sampled(i, 1.0) for i in ids)


async def test_a_reply_is_queued_once_and_keeps_its_live_actor(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    queue = queue_for(sessions, share=0.0)
    conversations, _ = stores(sessions)
    turn = await add_turn(conversations, state="sent")
    plain = FinishedReply(turn.candidate_id, turn.conversation_id, "model")
    assert await queue.enqueue(plain) is None  # not sampled, not flagged
    flagged = FinishedReply(
        turn.candidate_id, turn.conversation_id, "model", [{"kind": "risk"}], "timeout"
    )
    assert await queue.enqueue(flagged) == "flagged"
    assert await queue.enqueue(flagged) == "flagged"
    await queue.note_decision(turn.candidate_id, ANN)  # approved after it went out
    await queue.note_decision(turn.candidate_id, BEN)  # the first decision stays
    async with sessions() as session:
        [item] = (await session.scalars(select(ReviewItem))).all()
    assert (item.reason, item.live_actor_id, item.status, item.reviews_needed) == (
        "flagged",
        ANN,
        "open",
        3,
    )


# -- pulling --------------------------------------------------------------------------------------


async def test_pulls_are_blind_oldest_first_and_never_the_actors_own(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    queue = queue_for(sessions)
    first, second, third = await queued_turns(sessions, queue, 3)
    await queue.note_decision(first.candidate_id, ANN)  # Ann decided the first live
    _, corrections = stores(sessions)
    await corrections.rate(second.candidate_id, actor=ALICE_ACTOR, rating=2, key=None)
    view = await queue.next_item(ANN)
    assert isinstance(view, ReviewItemView)
    assert view.reply == "answer 1" and view.persona == "Marlowe"
    assert view.context == (("user", "ann", "question 1"),)
    assert view.expires_at - view.leased_at == timedelta(minutes=15)
    # Alice rated the second reply in the console: her own verdict, so not hers to review.
    alice = await queue.next_item(ALICE_ACTOR.id)
    assert alice is not None and alice.reply == "answer 0"
    # What a reviewer is shown carries nothing but the conversation and the reply.
    assert set(ReviewItemView.__dataclass_fields__) == {
        "item_id",
        "persona",
        "context",
        "reply",
        "leased_at",
        "expires_at",
    }
    assert third.candidate_id


async def test_nobody_reviews_replies_to_their_own_messages(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    queue = queue_for(sessions)
    conversations, _ = stores(sessions)
    own = await add_turn(conversations, user_id=ANN, text="my own chat", state="sent")
    await queue.enqueue(FinishedReply(own.candidate_id, own.conversation_id, "model"))
    assert await queue.next_item(ANN) is None  # Ann was the user: not hers to judge
    ben = await queue.next_item(BEN)
    assert ben is not None and ben.context == (("user", "ann", "my own chat"),)


async def test_pulling_again_gives_the_same_item_with_a_renewed_lease(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    queue = queue_for(sessions)
    await queued_turns(sessions, queue, 2)
    first = await queue.next_item(ANN)
    again = await queue.next_item(ANN)
    assert first is not None and again is not None
    assert again.item_id == first.item_id and again.leased_at == first.leased_at
    assert again.expires_at >= first.expires_at
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(ReviewLease)) == 1


async def test_an_item_takes_at_most_per_item_reviewers_until_a_lease_expires(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    queue = queue_for(sessions, per_item=2)
    first, second = await queued_turns(sessions, queue, 2)
    ann, ben = await queue.next_item(ANN), await queue.next_item(BEN)
    assert ann is not None and ben is not None
    assert (ann.reply, ben.reply) == ("answer 0", "answer 0")
    cat_view = await queue.next_item(CAT)
    assert cat_view is not None and cat_view.reply == "answer 1"
    assert (await queue.submit(cat_view.item_id, CAT, verdict())).status == "done"
    # Ann walks away: her place on the first item frees when her lease expires.
    await expire_leases(sessions, ANN)
    dan = await queue.next_item(DAN)
    assert dan is not None and dan.reply == "answer 0"
    assert await queue.next_item(CAT) is None  # both items are full for Cat now
    # Ann loses nothing: her verdict still counts, and her next pull would serve it again.
    outcome = await queue.submit(dan.item_id, ANN, verdict())
    assert outcome.status == "done"
    assert second.candidate_id and first.candidate_id


async def test_enough_agreeing_reviews_accept_an_item(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    queue = queue_for(sessions)
    await queued_turns(sessions, queue, 2)
    for actor, acceptable in ((ANN, True), (BEN, True), (CAT, False)):
        view = await queue.next_item(actor)
        assert view is not None and view.reply == "answer 0"
        outcome = await queue.submit(view.item_id, actor, verdict(acceptable))
        assert outcome.status == "done", outcome
        status = (await item_of(sessions, view.item_id)).status
        assert status == ("accepted" if actor == CAT else "open")
    assert len(await queue.verdicts(view.item_id)) == 3
    dan = await queue.next_item(DAN)
    assert dan is not None and dan.reply == "answer 1"  # the accepted item is closed


async def test_a_split_under_the_acceptance_share_is_disputed(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    queue = queue_for(sessions, per_item=2)
    await queued_turns(sessions, queue, 1)
    for actor, acceptable in ((ANN, True), (BEN, False)):
        view = await queue.next_item(actor)
        assert view is not None
        await queue.submit(view.item_id, actor, verdict(acceptable))
    item = await item_of(sessions, view.item_id)
    assert (item.status, item.decided_at is not None) == ("disputed", True)
    assert await queue.next_item(CAT) is None


async def test_refused_submissions_record_nothing(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    queue = queue_for(sessions)
    [turn] = await queued_turns(sessions, queue, 1, decided_by=ANN)
    async with sessions() as session:
        item_id = await session.scalar(select(ReviewItem.id))
    assert item_id is not None
    # Ann decided it live: she is never given it, and cannot review it by naming it.
    assert await queue.next_item(ANN) is None
    refused = await queue.submit(item_id, ANN, verdict())
    assert refused.status == "refused" and "not given to you" in refused.message
    # Ben never pulled it.
    assert (await queue.submit(item_id, BEN, verdict())).status == "refused"
    view = await queue.next_item(BEN)
    assert view is not None
    with pytest.raises(InvalidVerdict, match="overall"):
        await queue.submit(view.item_id, BEN, Verdict(None, {"fidelity": 4}, False, True, "x"))
    stale = Verdict(4, {"fidelity": 4}, False, True, "0123456789ab")
    changed = await queue.submit(view.item_id, BEN, stale)
    assert changed.status == "refused" and "rubric changed" in changed.message
    assert (await queue.submit(view.item_id, BEN, verdict())).status == "done"
    twice = await queue.submit(view.item_id, BEN, verdict())
    assert twice.status == "duplicate"
    assert (await queue.submit(view.item_id + 99, BEN, verdict())).status == "refused"
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Review)) == 1
    assert turn.candidate_id


async def test_an_erased_conversation_takes_its_items_with_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    queue = queue_for(sessions)
    await queued_turns(sessions, queue, 1)
    view = await queue.next_item(ANN)
    assert view is not None
    conversations, _ = stores(sessions)
    await conversations.delete_data_for_user(requester="user", user_id="discord:1")
    outcome = await queue.submit(view.item_id, ANN, verdict())
    assert outcome.status == "refused" and "erased" in outcome.message
    assert await queue.next_item(ANN) is None


# -- verdicts and agreement ---------------------------------------------------------------------


def test_verdicts_are_checked_and_parsed() -> None:
    parsed = parse_verdict(RUBRIC, SAFE_OK)
    assert (parsed.acceptable, parsed.unsafe, parsed.rating) == (True, False, 4)
    assert parsed.scores == {"fidelity": 4, "voice": 4, "resonance": 3, "memory": 4}
    assert parsed.rubric_version == RUBRIC.version
    for text, problem in (
        (SAFE_OK.replace("acceptable=yes ", ""), "acceptable=yes or acceptable=no"),
        (SAFE_OK.replace("acceptable=yes", "acceptable=maybe"), "acceptable=yes or"),
        (SAFE_OK + " acceptable=no", "given twice"),
        (SAFE_OK.replace("memory=4", "memory=6"), "memory=6"),
        (SAFE_OK.replace("memory=4", "memroy=4"), "unknown dimension 'memroy'"),
        (SAFE_OK.replace(" memory=4", ""), "still to score: memory"),
        (SAFE_OK.replace(" overall=4", ""), "overall"),
        (SAFE_OK.replace("unsafe=no ", ""), "unsafe"),
    ):
        with pytest.raises(InvalidVerdict, match=problem):
            parse_verdict(RUBRIC, text)
    gold = parse_verdict(RUBRIC, "acceptable=no unsafe=yes", complete=False)
    assert gold.scores == {} and gold.rating is None and gold.unsafe


def test_consensus_acceptance_and_gold_accuracy_by_hand() -> None:
    assert majority([True, True, False]) == (True, pytest.approx(2 / 3))
    assert majority([True, False]) == (None, 0.5)
    assert item_status([True, True], 3, 0.6) == "open"
    assert item_status([True, True, False], 3, 0.6) == "accepted"
    assert item_status([True, True, False], 3, 0.7) == "disputed"
    assert item_status([True, False, True, False], 3, 0.6) == "disputed"
    a = Verdict(4, {"fidelity": 4, "voice": 2}, False, True, "v")
    b = Verdict(5, {"fidelity": 5, "voice": 3}, False, True, "v")
    c = Verdict(2, {"fidelity": 2}, True, False, "v")
    together = consensus([a, b, c])
    # fidelity: median of 4, 5, 2 is 4; voice: median of 2 and 3 is 2.5, rounded half up.
    assert together.scores == {"fidelity": 4, "voice": 3}
    assert (together.acceptable, together.unsafe, together.rating) == (True, False, 4)
    gold = Verdict(None, {"fidelity": 5}, False, True, "v")
    assert gold_correct(a, gold) and gold_correct(b, gold)
    assert not gold_correct(c, gold)  # wrong acceptable, wrong unsafe, 3 points off
    assert not gold_correct(Verdict(4, {"fidelity": 3}, False, True, "v"), gold)  # 2 off
    assert not gold_correct(Verdict(4, {"voice": 5}, False, True, "v"), gold)  # not scored


# -- gold -----------------------------------------------------------------------------------------


async def test_gold_items_are_mixed_in_blind_at_the_gold_rate(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    queue = queue_for(sessions, gold_rate=0.5, draws=[0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    gold_store = GoldStore(sessions, queue.policy, lambda persona: RUBRIC)
    plain, marked = await queued_turns(sessions, queue, 2)
    conversations, _ = stores(sessions)
    fresh = await add_turn(conversations, user_id="discord:77", reply="gold reply", state="sent")
    gold_verdict = check_verdict(
        RUBRIC, scores={"fidelity": 5}, unsafe=False, acceptable=True, complete=False
    )
    said = await gold_store.mark(fresh.candidate_id, by=DAN, verdict=gold_verdict, note="ref")
    assert said == f"Gold verdict stored on reply #{fresh.candidate_id}."
    said = await gold_store.mark(marked.candidate_id, by=DAN, verdict=gold_verdict)
    assert "stored" in said
    # Draw 0.0: gold first, the oldest gold item (the queued reply that became gold).
    ann_gold = await queue.next_item(ANN)
    assert ann_gold is not None and ann_gold.reply == "answer 1"
    await queue.submit(ann_gold.item_id, ANN, verdict(score=4))
    # Draw 1.0: the regular queue first.
    ann_plain = await queue.next_item(ANN)
    assert ann_plain is not None and ann_plain.reply == "answer 0"
    await queue.submit(ann_plain.item_id, ANN, verdict())
    ann_second_gold = await queue.next_item(ANN)
    assert ann_second_gold is not None and ann_second_gold.reply == "gold reply"
    await queue.submit(ann_second_gold.item_id, ANN, verdict(acceptable=False))
    # Gold looks like any item: the same fields, nothing saying gold.
    assert type(ann_gold) is type(ann_plain)
    # The lead who made the gold is never given it.
    assert await queue.next_item(DAN) is not None  # the plain item
    async with sessions() as session:
        dan_leases = (
            await session.scalars(select(ReviewLease.item_id).where(ReviewLease.actor_id == DAN))
        ).all()
    assert dan_leases == [ann_plain.item_id]
    # Gold items never close, whatever their reviews say.
    for actor in (BEN, CAT):
        view = await queue.next_item(actor)
        assert view is not None and view.item_id == ann_gold.item_id
        await queue.submit(view.item_id, actor, verdict(score=2))
    assert (await item_of(sessions, ann_gold.item_id)).status == "open"
    accuracy = await queue.gold_accuracy()
    assert (accuracy[ANN].correct, accuracy[ANN].total) == (1, 2)  # the second was wrong
    assert (accuracy[BEN].correct, accuracy[BEN].total) == (0, 1)  # 2 is 3 points off 5
    assert plain.candidate_id


async def test_marking_again_replaces_the_gold_verdict(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    queue = queue_for(sessions)
    gold_store = GoldStore(sessions, queue.policy, lambda persona: RUBRIC)
    conversations, _ = stores(sessions)
    turn = await add_turn(conversations, state="sent")
    first = check_verdict(RUBRIC, scores={}, unsafe=True, acceptable=False, complete=False)
    second = check_verdict(
        RUBRIC, scores={"voice": 2}, unsafe=False, acceptable=True, rating=3, complete=False
    )
    await gold_store.mark(turn.candidate_id, by=ANN, verdict=first)
    assert "replaced" in await gold_store.mark(turn.candidate_id, by=BEN, verdict=second)
    async with sessions() as session:
        [gold] = (await session.scalars(select(GoldItem))).all()
        [item] = (await session.scalars(select(ReviewItem))).all()
    assert (gold.acceptable, gold.scores, gold.rating, gold.created_by) == (
        True,
        {"voice": 2},
        3,
        BEN,
    )
    assert (item.reason, item.gold_id) == ("gold", gold.id)
    with pytest.raises(InvalidVerdict, match="no reply #"):
        await gold_store.mark(turn.user_turn_id, by=ANN, verdict=first)
    with pytest.raises(InvalidVerdict, match="note"):
        await gold_store.mark(turn.candidate_id, by=ANN, verdict=first, note="x" * 1001)
    stale = Verdict(None, {}, True, False, "0123456789ab")
    with pytest.raises(InvalidVerdict, match="rubric changed"):
        await gold_store.mark(turn.candidate_id, by=ANN, verdict=stale)


async def test_a_gold_import_stores_every_line_or_none(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    gold_store = GoldStore(sessions, ReviewPolicy(), lambda persona: RUBRIC)
    conversations, _ = stores(sessions)
    one = await add_turn(conversations, user_id="discord:1", state="sent")
    two = await add_turn(conversations, user_id="discord:2", state="sent")
    good = (
        f'{{"reply_id": {one.candidate_id}, "acceptable": true, "unsafe": false, '
        '"overall": 4, "scores": {"fidelity": 5}, "note": "the reference"}'
    )
    bad_lines = [
        good,
        "",
        "{not json",
        f'{{"reply_id": {two.candidate_id}, "acceptable": "yes", "unsafe": false}}',
        '{"reply_id": 999999, "acceptable": true, "unsafe": false}',
        f'{{"reply_id": {one.user_turn_id}, "acceptable": true, "unsafe": false}}',
        f'{{"reply_id": {two.candidate_id}, "acceptable": true, "unsafe": false, '
        '"scores": {"fidelity": 9}}',
        f'{{"reply_id": {one.candidate_id}, "acceptable": true, "unsafe": false}}',
        f'{{"reply_id": {two.candidate_id}, "acceptable": true, "unsafe": false, "rate": 3}}',
        "[1, 2]",
        f'{{"reply_id": {two.candidate_id}, "acceptable": true}}',
    ]
    with pytest.raises(GoldImportError) as raised:
        await gold_store.import_lines(bad_lines, by=ANN)
    problems = raised.value.problems
    assert [p.split(":", 1)[0] for p in problems] == [f"line {n}" for n in range(3, 12)]
    assert "not a JSON object" in problems[0]
    assert "acceptable" in problems[1] and "boolean" in problems[1]
    assert "reply_id 999999: no reply has this id" in problems[2]
    assert f"reply_id {one.user_turn_id}: no reply" in problems[3]
    assert "fidelity=9" in problems[4]
    assert "already on line 1" in problems[5]
    assert "rate" in problems[6] and "not permitted" in problems[6]
    assert "not a JSON object" in problems[7]
    assert "unsafe" in problems[8] and "required" in problems[8]
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(GoldItem)) == 0
        assert await session.scalar(select(func.count()).select_from(ReviewItem)) == 0
    with pytest.raises(GoldImportError, match="no gold items"):
        await gold_store.import_lines(["", "  "], by=ANN)
    second = f'{{"reply_id": {two.candidate_id}, "acceptable": false, "unsafe": true}}'
    assert await gold_store.import_lines([good, second], by=ANN) == 2
    assert await gold_store.import_lines([good, second], by=ANN) == 2  # again: replaced
    async with sessions() as session:
        golds = (await session.scalars(select(GoldItem).order_by(GoldItem.candidate_id))).all()
        items = (await session.scalars(select(ReviewItem))).all()
    assert [(g.candidate_id, g.acceptable, g.note) for g in golds] == [
        (one.candidate_id, True, "the reference"),
        (two.candidate_id, False, None),
    ]
    assert {i.gold_id for i in items} == {g.id for g in golds} and len(items) == 2


async def test_a_gold_import_is_bounded(sessions: async_sessionmaker[AsyncSession]) -> None:
    gold_store = GoldStore(sessions, ReviewPolicy(), lambda persona: RUBRIC)
    with pytest.raises(GoldImportError, match="line 1: longer than 10,000 characters"):
        await gold_store.import_lines(["x" * 10_001], by=ANN)
    lines = [f'{{"reply_id": {n}, "acceptable": true, "unsafe": false}}' for n in range(1, 10_002)]
    with pytest.raises(GoldImportError) as raised:
        await gold_store.import_lines(lines, by=ANN)
    assert raised.value.problems[-1] == "line 10001: an import holds at most 10,000 gold items"
    assert "... and" in str(raised.value)  # 10,000 unknown replies: only the first few shown


def test_review_settings_are_bounded() -> None:
    from bot.runtime import review_policy
    from bot.settings import ConfigError, load_settings

    policy = review_policy(load_settings(reviews={"share": 0.25, "lease_minutes": 5}))
    assert (policy.share, policy.per_item, policy.lease) == (0.25, 3, timedelta(minutes=5))
    for wrong, named in (
        ({"share": 1.5}, "reviews.share"),
        ({"per_item": 0}, "reviews.per_item"),
        ({"acceptance": 0.4}, "reviews.acceptance"),
        ({"gold_rate": -0.1}, "reviews.gold_rate"),
    ):
        with pytest.raises(ConfigError, match=named):
            load_settings(reviews=wrong)
