"""The engine with real vector memory: recall across many turns, canon kept, erase leaves nothing.

Uses the bundled MiniLM embedder (torch backend) and an embedded Chroma in a temp folder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from bot.engine import ConversationEngine, EngineLimits, IncomingMessage, Reply
from bot.flags import describe_flag
from bot.llm import FakeChatModel
from memory import MemoryService, SentenceTransformerEmbedder
from personas import PersonaRegistry
from tests.factories import decisions_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from feedback.store import ConversationStore

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(backend="torch")


@pytest.fixture
def memory(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[MemoryService]:
    service = MemoryService.open(path=tmp_path / "chroma", embedder=embedder)
    yield service
    service.close()


def _said(text: str, user: str = "ann") -> IncomingMessage:
    return IncomingMessage(
        transport="terminal",
        scope=f"terminal:{user}",
        user_id=f"terminal:{user}",
        user_name=user,
        text=text,
        persona="Juniper",
    )


async def _engine(
    store: ConversationStore, memory: MemoryService, replies: list[str]
) -> ConversationEngine:
    engine = ConversationEngine(
        personas=PersonaRegistry.load(),
        store=store,
        model=FakeChatModel(replies=replies),
        memory=memory,
        limits=EngineLimits(history_turns=4),
    )
    await engine.sync_personas()
    return engine


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_fact_told_many_turns_ago_is_recalled_and_private(
    store: ConversationStore, memory: MemoryService
) -> None:
    engine = await _engine(store, memory, ["Noted, sunshine."])
    decisions, _ = decisions_for(engine)
    first = await engine.respond(_said("My sister's name is Maya and she lives in Lisbon."))
    assert isinstance(first, Reply)
    await decisions.present(first, hold=False)
    for index in range(10):  # far beyond the 4 turns of history the prompt keeps
        reply = await engine.respond(_said(f"Let's talk about tomatoes, part {index}."))
        assert isinstance(reply, Reply)
        await decisions.present(reply, hold=False)
    asked = await engine.respond(_said("Do you remember my sister's name?"))
    assert isinstance(asked, Reply)
    assert any("Maya" in line for line in asked.memories), asked.memories
    node = await store.get_node(asked.candidate_id)
    snapshot = await store.get_snapshot(node.prompt_snapshot_id)  # type: ignore[union-attr,arg-type]
    messages = snapshot.messages  # type: ignore[union-attr]
    # in this turn's context message, or an earlier turn's the window still shows
    context = " ".join(m["content"] for m in messages if m.get("name") == "context")
    assert "Maya" in context
    others = " ".join(m["content"] for m in messages if m.get("name") != "context")
    assert "Maya" not in others  # it came from memory, not from the history window
    other = await engine.respond(_said("Do you remember my sister's name?", user="bo"))
    assert isinstance(other, Reply) and not any("Maya" in line for line in other.memories)

    removed = await engine.delete_data_for_user(requester="user", user_id="terminal:ann")
    assert removed > 0
    after = await engine.respond(_said("Do you remember my sister's name?"))
    assert isinstance(after, Reply) and not any("Maya" in line for line in after.memories)
    assert await memory.show_user(user_id="terminal:ann") == []
    assert await memory.fact_history(user_id="terminal:ann") == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_memory_does_not_repeat_turns_the_history_window_shows(
    store: ConversationStore, memory: MemoryService
) -> None:
    """Recalled turns still in the window would only repeat them (and change the prompt's
    tail every turn); facts drawn from them, and turns that fell out, stay."""
    engine = await _engine(store, memory, ["Noted, sunshine."])
    decisions, _ = decisions_for(engine)
    told = "My sister's name is Maya and she lives in Lisbon."
    first = await engine.respond(_said(told))
    assert isinstance(first, Reply)
    await decisions.present(first, hold=False)
    asked = await engine.respond(_said("Where does my sister Maya live?"))
    assert isinstance(asked, Reply)
    window = await store.history(asked.conversation_id, 4, before_id=asked.user_turn_id)
    assert told in [turn.content for turn in window]  # the window shows the first turn
    assert not any(told in line for line in asked.memories), asked.memories
    assert any("(user fact)" in line and "Maya" in line for line in asked.memories)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_reply_against_canon_is_flagged_with_the_fact(
    store: ConversationStore, memory: MemoryService
) -> None:
    engine = await _engine(
        store,
        memory,
        ["I grew up in Oslo, Norway, by the fjords.", "I grew up in Hood River, on the orchard."],
    )
    wrong = await engine.respond(_said("Where did you grow up?"))
    assert isinstance(wrong, Reply)
    contradictions = [f for f in wrong.flags if f["kind"] == "contradiction"]
    assert contradictions, wrong.flags
    assert "Hood River" in contradictions[0]["evidence"]["fact"]
    assert wrong.risk.hold  # over its threshold: an actor sees it before the user does
    right = await engine.respond(_said("Where did you grow up, again?"))
    assert isinstance(right, Reply)
    assert not [f for f in right.flags if f["kind"] == "contradiction"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_reply_against_what_the_user_told_is_flagged_with_the_evidence(
    store: ConversationStore, memory: MemoryService
) -> None:
    engine = await _engine(
        store,
        memory,
        [
            "What a lovely name, sprout.",
            "And how is your cat Pip today?",
            "You live in Paris, right?",
            "How is your dog Pip doing?",
        ],
    )
    decisions, _ = decisions_for(engine)
    told = await engine.respond(_said("My dog is called Pip. I live in Lisbon."))
    assert isinstance(told, Reply)
    await decisions.present(told, hold=False)
    cat = await engine.respond(_said("Pip chewed my shoe again."))
    assert isinstance(cat, Reply)
    [flag] = [f for f in cat.flags if f["kind"] == "contradiction"]
    evidence = flag["evidence"]
    assert evidence["rule"] == "relation_mismatch" and evidence["fact_kind"] == "user_fact"
    assert evidence["reply_sentence"] == "And how is your cat Pip today?"
    assert evidence["fact"] == "My dog is called Pip."
    assert flag["over_threshold"] and cat.risk.hold  # an actor sees it first
    line = describe_flag(flag)
    assert "“And how is your cat Pip today?”" in line and "“My dog is called Pip.”" in line
    await decisions.present(cat, hold=False)
    paris = await engine.respond(_said("Guess where I am."))
    assert isinstance(paris, Reply)
    [flag] = [f for f in paris.flags if f["kind"] == "contradiction"]
    assert flag["evidence"]["expected"] == "Lisbon" and flag["evidence"]["found"] == "Paris"
    await decisions.present(paris, hold=False)
    right = await engine.respond(_said("Pip says hi."))
    assert isinstance(right, Reply)
    assert not [f for f in right.flags if f["kind"] == "contradiction"], right.flags


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_restart_preloads_the_memories_of_recent_speakers(
    store: ConversationStore,
    memory: MemoryService,
    embedder: SentenceTransformerEmbedder,
    tmp_path: Path,
) -> None:
    engine = await _engine(store, memory, ["Noted."])
    decisions, _ = decisions_for(engine)
    for user in ("ann", "bob"):
        reply = await engine.respond(_said(f"My name is {user} and I like kites.", user))
        assert isinstance(reply, Reply)
        await decisions.present(reply, hold=False)
    memory.close()
    restarted = MemoryService.open(path=tmp_path / "chroma", embedder=embedder)
    try:
        engine.memory = restarted
        assert await engine.preload_memory() == 2
        assert await engine.preload_memory(limit=1) == 1
        assert await engine.preload_memory(days=-1) == 0  # nobody spoke in the future
    finally:
        restarted.close()
