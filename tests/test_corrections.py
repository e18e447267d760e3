"""Actor actions on SQLite and PostgreSQL: first decision wins, idempotency, claims, validation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from feedback.corrections import MAX_REWRITE_CHARS, TAGS, Actor, CorrectionStore, InvalidAction
from feedback.models import FeedbackEvent, MessageNode
from feedback.store import ConversationStore
from tests.factories import ALICE_ACTOR, BOB_ACTOR, add_turn, snapshot_for


@pytest.fixture
def corrections(store: ConversationStore) -> CorrectionStore:
    return CorrectionStore(store._sessions)


async def _events(store: ConversationStore) -> list[FeedbackEvent]:
    async with store._sessions() as session:
        return list((await session.scalars(select(FeedbackEvent).order_by(FeedbackEvent.id))).all())


async def test_approve_once_then_refuse_with_who(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    turn = await add_turn(store, state="held")
    first = await corrections.approve(turn.candidate_id, actor=ALICE_ACTOR, key="i-1")
    assert first.status == "done" and first.result_id == turn.candidate_id
    again = await corrections.approve(turn.candidate_id, actor=BOB_ACTOR, key="i-2")
    assert again.status == "refused" and again.message == f"Already approved by {ALICE_ACTOR.id}."
    replay = await corrections.approve(turn.candidate_id, actor=ALICE_ACTOR, key="i-1")
    assert replay.status == "duplicate" and replay.event_id == first.event_id
    events = await _events(store)
    assert [e.kind for e in events] == ["approve"]
    assert events[0].persona == "Marlowe" and events[0].persona_version == "v-marlowe"
    assert events[0].prompt_snapshot_id is not None and events[0].created_at.tzinfo is not None
    node = await store.get_node(turn.candidate_id)
    assert node is not None and node.state == "approved" and node.decided_by == ALICE_ACTOR.id


async def test_concurrent_clicks_record_one_decision(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    turn = await add_turn(store, state="held")
    actors = [Actor(f"discord:{i}", f"actor {i}") for i in range(8)]
    outcomes = await asyncio.gather(
        *(
            corrections.approve(turn.candidate_id, actor=a, key=f"k{i}")
            for i, a in enumerate(actors)
        ),
        *(corrections.approve(turn.candidate_id, actor=actors[0], key="k0") for _ in range(3)),
    )
    assert sum(o.status == "done" for o in outcomes) == 1
    assert len(await _events(store)) == 1


async def test_rewrite_of_a_held_candidate(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    turn = await add_turn(store, state="held", reply="Evening.")
    outcome = await corrections.rewrite(
        turn.candidate_id, actor=ALICE_ACTOR, text="Evening, kid.", key="r1"
    )
    assert outcome.status == "done" and outcome.result_id is not None
    original = await store.get_node(turn.candidate_id)
    rewrite = await store.get_node(outcome.result_id)
    assert original.state == "rejected"  # type: ignore[union-attr]
    assert rewrite.parent_id == turn.user_turn_id and rewrite.origin == "rewrite"  # type: ignore[union-attr]
    await store.mark_sent(outcome.result_id, "m-9")
    history = await store.history(turn.conversation_id, 10)
    assert [t.content for t in history] == ["hello there", "Evening, kid."]
    event = (await _events(store))[0]
    assert (event.original_text, event.new_text, event.edit_distance) == (
        "Evening.",
        "Evening, kid.",
        5,
    )


async def test_rewrite_of_a_sent_reply_replaces_it_in_history(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    turn = await add_turn(store, state="sent", reply="Evening.")
    outcome = await corrections.rewrite(
        turn.candidate_id, actor=ALICE_ACTOR, text="Night.", key=None
    )
    rewrite = await store.get_node(outcome.result_id)  # type: ignore[arg-type]
    assert rewrite.external_id == f"msg-{turn.candidate_id}"  # type: ignore[union-attr]
    assert (await store.get_node(turn.candidate_id)).state == "replaced"  # type: ignore[union-attr]
    assert [n.id for n in await corrections.undelivered()] == [outcome.result_id]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * (MAX_REWRITE_CHARS + 1), "2,000"),
        ("Evening.", "identical"),
    ],
)
async def test_bad_rewrites_record_nothing(
    store: ConversationStore, corrections: CorrectionStore, text: str, message: str
) -> None:
    turn = await add_turn(store, state="held", reply="Evening.")
    with pytest.raises(InvalidAction, match=message):
        await corrections.rewrite(turn.candidate_id, actor=ALICE_ACTOR, text=text, key="x")
    assert await _events(store) == []
    assert (await store.get_node(turn.candidate_id)).decided_by is None  # type: ignore[union-attr]


async def test_regenerate_keeps_the_old_one_as_rejected_sibling(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    turn = await add_turn(store, state="held")
    until = datetime.now(UTC) + timedelta(seconds=45)
    outcome = await corrections.regenerate(
        turn.candidate_id,
        actor=ALICE_ACTOR,
        text="A fresh take.",
        snapshot=snapshot_for("Marlowe", [{"role": "user", "content": "hello there"}]),
        flags=[],
        hold_until=until,
        key="g1",
    )
    fresh = await store.get_node(outcome.result_id)  # type: ignore[arg-type]
    assert fresh.parent_id == turn.user_turn_id and fresh.state == "held"  # type: ignore[union-attr]
    assert (await store.get_node(turn.candidate_id)).state == "rejected"  # type: ignore[union-attr]
    assert [h.id for h in await corrections.held_candidates()] == [fresh.id]  # type: ignore[union-attr]
    approve = await corrections.approve(fresh.id, actor=BOB_ACTOR, key="a")  # type: ignore[union-attr]
    assert approve.status == "done"


async def test_ratings_and_tags(store: ConversationStore, corrections: CorrectionStore) -> None:
    turn = await add_turn(store, state="sent")
    await corrections.rate(
        turn.candidate_id, actor=ALICE_ACTOR, rating=4, tags=["funny", "in-character"], key="t1"
    )
    await corrections.rate(turn.candidate_id, actor=BOB_ACTOR, rating=2, tags=[], key="t2")
    events = await _events(store)
    assert [(e.rating, e.tags) for e in events] == [(4, ["in-character", "funny"]), (2, [])]
    with pytest.raises(InvalidAction, match="1 to 5"):
        await corrections.rate(turn.candidate_id, actor=ALICE_ACTOR, rating=6, key="t3")
    with pytest.raises(InvalidAction, match="unknown tag"):
        await corrections.rate(
            turn.candidate_id, actor=ALICE_ACTOR, rating=3, tags=["meh"], key="t4"
        )
    assert len(TAGS) == 10


async def test_claims_block_other_actors_and_takeover_messages(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    turn = await add_turn(store, state="held")
    taken = await corrections.claim(
        turn.conversation_id, actor=ALICE_ACTOR, takeover=True, persona="Marlowe", key="c1"
    )
    assert taken.status == "done"
    blocked = await corrections.approve(turn.candidate_id, actor=BOB_ACTOR, key="b1")
    assert (
        blocked.status == "refused" and "Alice (actor) holds this conversation" in blocked.message
    )
    assert (
        await corrections.claim(
            turn.conversation_id, actor=BOB_ACTOR, takeover=True, persona="Marlowe", key="c2"
        )
    ).status == "refused"
    said = await corrections.takeover_message(
        turn.conversation_id,
        actor=ALICE_ACTOR,
        persona="Marlowe",
        text="It's me, kid.",
        parent_id=turn.user_turn_id,
        key="m1",
    )
    assert said.status == "done"
    node = await store.get_node(said.result_id)  # type: ignore[arg-type]
    assert node.origin == "takeover" and node.author_name == "Marlowe"  # type: ignore[union-attr]
    bob_says = await corrections.takeover_message(
        turn.conversation_id,
        actor=BOB_ACTOR,
        persona="Marlowe",
        text="hi",
        parent_id=None,
        key="m2",
    )
    assert bob_says.status == "refused"
    released = await corrections.release(
        turn.conversation_id, actor=ALICE_ACTOR, persona="Marlowe", key="r"
    )
    assert released.status == "done"
    assert await corrections.claim_holder(turn.conversation_id) is None
    assert (
        await corrections.approve(turn.candidate_id, actor=BOB_ACTOR, key="b2")
    ).status == "done"
    assert [e.kind for e in await _events(store)] == [
        "takeover",
        "takeover_message",
        "release",
        "approve",
    ]


async def test_expired_claims_do_not_block(store: ConversationStore) -> None:
    corrections = CorrectionStore(store._sessions, claim_ttl=timedelta(seconds=-1))
    turn = await add_turn(store, state="held")
    await corrections.claim(
        turn.conversation_id, actor=ALICE_ACTOR, takeover=False, persona="Marlowe", key=None
    )
    assert (await corrections.approve(turn.candidate_id, actor=BOB_ACTOR, key="b")).status == "done"


async def test_hold_timeout_loses_to_an_actor_and_vice_versa(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    first = await add_turn(store, state="held", text="one")
    assert (await corrections.expire_hold(first.candidate_id, send=True)).status == "done"
    late = await corrections.approve(first.candidate_id, actor=ALICE_ACTOR, key="late")
    assert late.status == "refused" and late.message == "Already sent when the hold ran out."
    second = await add_turn(store, state="held", text="two", user_id="discord:2")
    await corrections.approve(second.candidate_id, actor=ALICE_ACTOR, key="early")
    assert (await corrections.expire_hold(second.candidate_id, send=False)).status == "refused"
    async with store._sessions() as session:
        assert await session.scalar(select(func.count()).select_from(FeedbackEvent)) == 2
        states = dict((await session.execute(select(MessageNode.id, MessageNode.state))).all())
    assert states[first.candidate_id] == "approved" and states[second.candidate_id] == "approved"


async def test_stale_candidate_says_so(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    with pytest.raises(InvalidAction, match="no longer exists"):
        await corrections.approve(424242, actor=ALICE_ACTOR, key="z")


async def test_regenerating_a_sent_reply_then_approving_replaces_it_in_place(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    turn = await add_turn(store, state="sent", reply="Old line.")
    regen = await corrections.regenerate(
        turn.candidate_id,
        actor=ALICE_ACTOR,
        text="New line.",
        snapshot=snapshot_for("Marlowe", [{"role": "user", "content": "hello there"}]),
        flags=[],
        hold_until=None,
        key="g",
    )
    assert (await store.get_node(turn.candidate_id)).state == "sent"  # type: ignore[union-attr]
    approved = await corrections.approve(regen.result_id, actor=ALICE_ACTOR, key="a")  # type: ignore[arg-type]
    assert approved.status == "done" and approved.result_id == regen.result_id
    fresh = await store.get_node(regen.result_id)  # type: ignore[arg-type]
    assert fresh.external_id == f"msg-{turn.candidate_id}"  # type: ignore[union-attr]
    assert (await store.get_node(turn.candidate_id)).state == "replaced"  # type: ignore[union-attr]
    replay = await corrections.approve(regen.result_id, actor=ALICE_ACTOR, key="a")  # type: ignore[arg-type]
    assert replay.status == "duplicate" and replay.result_id == regen.result_id
    rewrite = await corrections.rewrite(regen.result_id, actor=BOB_ACTOR, text="Third.", key="w")  # type: ignore[arg-type]
    assert rewrite.status == "refused"  # approved already: first decision won


async def test_a_click_delivered_twice_at_once_is_a_duplicate_not_a_refusal(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    turn = await add_turn(store, state="held")
    outcomes = await asyncio.gather(
        *(corrections.approve(turn.candidate_id, actor=ALICE_ACTOR, key="k") for _ in range(4))
    )
    assert sorted(o.status for o in outcomes) == ["done", "duplicate", "duplicate", "duplicate"]


async def test_a_takeover_line_after_release_is_refused_not_lost_to_an_error(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    turn = await add_turn(store)
    conversation = (await store.get_node(turn.candidate_id)).conversation_id  # type: ignore[union-attr]
    claimed = await corrections.claim(
        conversation, actor=ALICE_ACTOR, takeover=True, persona="Marlowe", key="t"
    )
    assert claimed.status == "done"
    lines = [
        corrections.takeover_message(
            conversation,
            actor=ALICE_ACTOR,
            persona="Marlowe",
            text=f"line {i}",
            parent_id=turn.candidate_id,
            key=f"m{i}",
        )
        for i in range(3)
    ]
    release = corrections.release(conversation, actor=ALICE_ACTOR, persona="Marlowe", key="r")
    outcomes = await asyncio.gather(*lines, release)
    assert all(o.status in ("done", "refused") for o in outcomes)
    sent = [o for o in outcomes[:3] if o.status == "done"]
    assert len([e for e in await _events(store) if e.kind == "takeover_message"]) == len(sent)
