"""What records mean, built from real actor actions: the one preference ordering, the rating
filter on every record, example dialogue kept out of the conversation, and the card version.

The replies come from the real engine (real persona cards, a scripted model) and the actions go
through the real decision service and correction store, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.engine import ConversationEngine, EngineLimits, IncomingMessage, Reply
from bot.llm import FakeChatModel
from feedback.corrections import Actor
from feedback.exports import ExportFilter, iter_records
from feedback.privacy import PrivacyStore
from personas import PersonaRegistry
from tests.factories import ALICE_ACTOR, decisions_for

if TYPE_CHECKING:
    from bot.decisions import DecisionService
    from feedback.store import ConversationStore

SECRET = b"test-secret"
ANN = Actor("terminal:ann", "ann")


def _said(text: str) -> IncomingMessage:
    return IncomingMessage(
        transport="terminal",
        scope="terminal:ann",
        user_id="terminal:ann",
        user_name="ann",
        text=text,
        persona="Marlowe",
        external_id=None,
    )


def _engine(store: ConversationStore, replies: list[str]) -> ConversationEngine:
    return ConversationEngine(
        personas=PersonaRegistry.load(),
        store=store,
        model=FakeChatModel(replies=replies),
        memory=None,
        limits=EngineLimits(),
    )


async def _records(store: ConversationStore, fmt: str, **filters: Any) -> list[dict[str, Any]]:
    return [
        record
        async for _, record in iter_records(
            store._sessions, fmt, ExportFilter(**filters), pseudonym_secret=SECRET
        )
    ]


def _pairs(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in records]


async def _reply(decisions: DecisionService, text: str, *, hold: bool) -> Reply:
    reply = await decisions.engine.respond(_said(text))
    assert isinstance(reply, Reply)
    await decisions.present(reply, hold=hold)
    return reply


# -- 2. preferences follow the actors' verdicts ----------------------------------------------


async def test_rated_rewrite_is_never_beaten_by_an_unrated_regeneration_in_the_terminal(
    store: ConversationStore,
) -> None:
    """candidate -> /rewrite (rated 5) -> /regen delivered: the rewrite is not ``rejected``."""
    decisions, outlet = decisions_for(_engine(store, ["The rain never stops.", "Storms."]))
    await PrivacyStore(store._sessions).set_consent(ANN.id, True)
    reply = await _reply(decisions, "What is the weather like?", hold=False)
    rewrite = await decisions.rewrite(
        reply.candidate_id, actor=ANN, text="Sunny for once.", key=None
    )
    assert rewrite.result_id is not None
    await decisions.rate(rewrite.result_id, actor=ANN, rating=5, key=None)
    regen = await decisions.regenerate(rewrite.result_id, actor=ANN, deliver=True)
    assert regen.status == "done" and outlet.delivered[-1].text == "Storms."
    async with store._sessions() as session:
        from sqlalchemy import select

        from feedback.models import FeedbackEvent

        kinds = (await session.scalars(select(FeedbackEvent.kind))).all()
    assert "regenerate" in kinds and "approve" not in kinds  # /regen is no approval

    pairs = _pairs(await _records(store, "trl-dpo"))
    assert ("Storms.", "Sunny for once.") not in pairs
    assert pairs == [("Sunny for once.", "The rain never stops.")]
    labels = {r["completion"][0]["content"]: r["label"] for r in await _records(store, "trl-kto")}
    assert labels["Sunny for once."] is True  # rated 5: good, though regenerated later
    [tree] = await _records(store, "oasst")
    ranks = {reply["text"]: reply["rank"] for reply in _turn(tree)["replies"]}
    assert ranks["Sunny for once."] == 0


async def test_rated_rewrite_is_never_beaten_by_an_approved_regeneration_in_a_console(
    store: ConversationStore,
) -> None:
    """The console's order: held, rewritten and rated 5, regenerated, the new one approved."""
    decisions, _ = decisions_for(
        _engine(store, ["The rain never stops.", "Storms."]), hold_seconds=60
    )
    await PrivacyStore(store._sessions).set_consent(ANN.id, True)
    reply = await _reply(decisions, "What is the weather like?", hold=True)
    rewrite = await decisions.rewrite(
        reply.candidate_id, actor=ALICE_ACTOR, text="Sunny for once.", key="w"
    )
    assert rewrite.result_id is not None
    await decisions.rate(rewrite.result_id, actor=ALICE_ACTOR, rating=5, key="r")
    regen = await decisions.regenerate(rewrite.result_id, actor=ALICE_ACTOR, key="g")
    assert regen.result_id is not None
    await decisions.approve(regen.result_id, actor=ALICE_ACTOR, key="a")
    await decisions.close()

    pairs = _pairs(await _records(store, "trl-dpo"))
    assert ("Storms.", "Sunny for once.") not in pairs
    # the rewrite over its original; the approved regeneration over the original it replaced
    assert sorted(pairs) == [
        ("Storms.", "The rain never stops."),
        ("Sunny for once.", "The rain never stops."),
    ]


def _turn(tree: dict[str, Any]) -> dict[str, Any]:
    """The prompter message of an oasst tree that holds the replies (the user turn)."""
    message = tree["prompt"]
    while message["message_id"] != tree["message_tree_id"]:
        [message] = message["replies"]
    return message
