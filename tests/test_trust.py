"""Actors' reliability: agreement with the consensus, gold accuracy, volume, time, trust."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from feedback.corrections import Actor, CorrectionStore
from feedback.database import session_factory
from feedback.models import MessageNode
from feedback.trust import (
    FAST_SECONDS,
    UNMEASURED_TRUST,
    actor_stats,
    load_trust,
    trust_weight,
)
from tests.factories import add_turn
from tests.review_factories import Verdict, add_gold, add_reviewed_turn


def test_trust_weight_formula() -> None:
    nothing = trust_weight(
        agreeing=0, compared=0, gold_correct=0, gold_reviews=0, median_review_seconds=None
    )
    assert nothing == UNMEASURED_TRUST == 0.5
    three = trust_weight(
        agreeing=3, compared=3, gold_correct=0, gold_reviews=0, median_review_seconds=30
    )
    assert three == pytest.approx(4 / 5)
    # a gold review counts twice: 1 of 2 gold right and 2 of 2 consensus checks
    mixed = trust_weight(
        agreeing=2, compared=2, gold_correct=1, gold_reviews=2, median_review_seconds=None
    )
    assert mixed == pytest.approx((2 + 2 + 1) / (4 + 2 + 2))
    hasty = trust_weight(
        agreeing=3, compared=3, gold_correct=0, gold_reviews=0, median_review_seconds=1.0
    )
    assert hasty == pytest.approx(4 / 5 * 1.0 / FAST_SECONDS)
    for agreeing in range(0, 11):
        for gold in range(0, 4):
            value = trust_weight(
                agreeing=agreeing,
                compared=10,
                gold_correct=gold,
                gold_reviews=3,
                median_review_seconds=0.0 if gold == 0 else 60.0,
            )
            assert 0.0 <= value <= 1.0


async def test_actor_stats_from_reviews_gold_and_live_decisions(db_engine, store) -> None:
    sessions = session_factory(db_engine)
    # three items; ann and bob agree, cy dissents on acceptable and by two points on fidelity
    for index in range(3):
        await add_reviewed_turn(
            sessions,
            store,
            [
                Verdict("discord:ann", {"fidelity": 4}, seconds=20 + index),
                Verdict("discord:bob", {"fidelity": 5}, seconds=40),
                Verdict("discord:cy", {"fidelity": 2}, acceptable=False, seconds=2),
            ],
            user_id=f"discord:{index}",
        )
    # a gold item: ann right (within a point), bob wrong on a dimension, cy wrong on unsafe
    turn = await add_turn(store, user_id="discord:9", state="sent")
    gold_id = await add_gold(sessions, turn.candidate_id, scores={"fidelity": 4, "voice": 3})
    await add_reviewed_turn(
        sessions,
        store,
        [
            Verdict("discord:ann", {"fidelity": 5, "voice": 2}),
            Verdict("discord:bob", {"fidelity": 4}),  # voice not scored: wrong on gold
            Verdict("discord:cy", {"fidelity": 4, "voice": 3}, unsafe=True, seconds=2),
        ],
        gold_id=gold_id,
        reason="gold",
        turn=turn,
    )
    # one item reviewed once: nothing to compare with
    await add_reviewed_turn(sessions, store, [Verdict("discord:dee", {"fidelity": 1})])
    # a live approval 12 s after the reply was held (the decision service sets hold_until)
    held = await add_turn(store, user_id="discord:20", state="held")
    async with sessions() as session, session.begin():
        now = datetime.now(UTC)
        await session.execute(
            update(MessageNode)
            .where(MessageNode.id == held.candidate_id)
            .values(created_at=now - timedelta(seconds=12), hold_until=now + timedelta(seconds=33))
        )
    corrections = CorrectionStore(sessions)
    await corrections.approve(held.candidate_id, actor=Actor("discord:eve", "Eve"), key=None)

    stats = {actor.actor_id: actor for actor in await actor_stats(sessions)}
    assert list(stats) == ["discord:ann", "discord:bob", "discord:cy", "discord:dee", "discord:eve"]
    ann, bob, cy, dee, eve = stats.values()
    assert (ann.reviews, ann.compared, ann.agreeing) == (4, 4, 4)
    assert (cy.compared, cy.agreeing) == (4, 0)
    assert (ann.gold_reviews, ann.gold_correct, ann.gold_accuracy) == (1, 1, 1.0)
    assert (bob.gold_reviews, bob.gold_correct) == (1, 0)
    assert (cy.gold_reviews, cy.gold_correct) == (1, 0)
    assert ann.median_review_seconds == pytest.approx(21.5)  # 20, 21, 22 and 30 s
    assert cy.median_review_seconds == pytest.approx(2.0)
    assert (dee.reviews, dee.compared, dee.agreement) == (1, 0, None)
    assert dee.trust == UNMEASURED_TRUST
    assert (eve.reviews, eve.live_decisions) == (0, 1)
    assert eve.median_live_seconds == pytest.approx(12, abs=5)
    assert ann.trust == pytest.approx((2 * 1 + 4 + 1) / (2 * 1 + 4 + 2))
    assert cy.trust == pytest.approx((0 + 0 + 1) / (2 + 4 + 2) * 2 / FAST_SECONDS)
    assert ann.trust > bob.trust > cy.trust
    assert 0 <= cy.trust <= 1

    trust = await load_trust(sessions)
    assert trust.of("discord:ann") == ann.trust
    assert trust.of("discord:nobody") == UNMEASURED_TRUST
    assert (await actor_stats(sessions, persona="Juniper")) == []
