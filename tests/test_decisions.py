"""The decision service: every actor action, for any console, with no Discord in it.

A :class:`~tests.factories.RecordingOutlet` stands for the transport (what reached the user);
the database is real (both backends), and so is the memory in the tests about what it keeps.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from bot.decisions import DecisionNews
from bot.engine import ConversationEngine, EngineLimits, IncomingMessage, Reply
from bot.llm import FakeChatModel
from feedback.corrections import Actor, InvalidAction
from memory import MemoryService, SentenceTransformerEmbedder
from personas import PersonaRegistry
from tests.factories import ALICE_ACTOR, BOB_ACTOR, decisions_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from bot.decisions import DecisionService
    from feedback.store import ConversationStore

ANN = Actor("terminal:ann", "ann")
#: How long a test waits for news before it fails (a bound, not a measurement).
_BOUND_S = 10.0


def _said(text: str, user: str = "ann") -> IncomingMessage:
    return IncomingMessage(
        transport="terminal",
        scope=f"terminal:{user}",
        user_id=f"terminal:{user}",
        user_name=user,
        text=text,
        persona="Marlowe",
        external_id=None,
    )


def _engine(
    store: ConversationStore, replies: list[str], memory: object = None
) -> ConversationEngine:
    return ConversationEngine(
        personas=PersonaRegistry.load(),
        store=store,
        model=FakeChatModel(replies=replies),
        memory=memory,  # type: ignore[arg-type]
        limits=EngineLimits(),
    )


class _News:
    """Collects the service's news; waits for one kind with a bound."""

    def __init__(self, decisions: DecisionService) -> None:
        self.seen: list[DecisionNews] = []
        self._changed = asyncio.Event()
        decisions.subscribe(self._take)

    async def _take(self, news: DecisionNews) -> None:
        self.seen.append(news)
        self._changed.set()

    async def wait_for(self, kind: str, candidate_id: int) -> DecisionNews:
        async def found() -> DecisionNews:
            while True:
                for news in self.seen:
                    if news.kind == kind and news.candidate_id == candidate_id:
                        return news
                self._changed.clear()
                await self._changed.wait()

        try:
            async with asyncio.timeout(_BOUND_S):
                return await found()
        except TimeoutError:
            raise AssertionError(f"no {kind!r} news for {candidate_id}; saw {self.seen}") from None


async def _held_reply(decisions: DecisionService, text: str = "hello") -> Reply:
    reply = await decisions.engine.respond(_said(text))
    assert isinstance(reply, Reply)
    await decisions.present(reply, hold=True)
    return reply


async def test_approving_a_held_candidate_acknowledges_then_delivers_once(
    store: ConversationStore,
) -> None:
    decisions, outlet = decisions_for(_engine(store, ["Evening."]), hold_seconds=60)
    news = _News(decisions)
    reply = await _held_reply(decisions)
    assert (await store.get_node(reply.candidate_id)).state == "held"  # type: ignore[union-attr]
    assert outlet.delivered == []
    seen_at_ack: list[tuple[str, int]] = []

    async def acknowledge(outcome: object) -> None:
        node = await store.get_node(reply.candidate_id)
        seen_at_ack.append((node.decided_by or "", len(outlet.delivered)))  # type: ignore[union-attr]

    outcome = await decisions.approve(
        reply.candidate_id, actor=ALICE_ACTOR, key="click-1", acknowledge=acknowledge
    )
    assert outcome.status == "done"
    assert seen_at_ack == [(ALICE_ACTOR.id, 0)]  # committed, then acknowledged, then sent
    assert [d.node_id for d in outlet.delivered] == [reply.candidate_id]
    assert outlet.delivered[0].answers_user and outlet.delivered[0].text == "Evening."
    node = await store.get_node(reply.candidate_id)
    assert node.state == "sent" and node.external_id == f"ext-{reply.candidate_id}"  # type: ignore[union-attr]
    again = await decisions.approve(reply.candidate_id, actor=ALICE_ACTOR, key="click-1")
    assert again.status == "duplicate" and len(outlet.delivered) == 1
    decided = await news.wait_for("decided", reply.candidate_id)
    assert decided.actor_id == ALICE_ACTOR.id
    assert [n.kind for n in news.seen] == ["held", "decided"]
    await decisions.close()


async def test_the_first_decision_wins_whichever_console_sends_it(
    store: ConversationStore,
) -> None:
    decisions, outlet = decisions_for(_engine(store, ["Evening."]), hold_seconds=60)
    reply = await _held_reply(decisions)
    approve, rewrite = await asyncio.gather(
        decisions.approve(reply.candidate_id, actor=ALICE_ACTOR, key="web-1"),
        decisions.rewrite(reply.candidate_id, actor=BOB_ACTOR, text="Good evening.", key="dc-1"),
    )
    statuses = sorted([approve.status, rewrite.status])
    assert statuses == ["done", "refused"], (approve, rewrite)
    loser = approve if approve.status == "refused" else rewrite
    assert loser.message.startswith("Already ")
    assert len(outlet.delivered) == 1  # one reply reached the user, never two
    await decisions.close()


async def test_a_rewrite_of_a_sent_reply_edits_the_sent_message(store: ConversationStore) -> None:
    decisions, outlet = decisions_for(_engine(store, ["Evening."]))
    reply = await decisions.engine.respond(_said("hello"))
    assert isinstance(reply, Reply)
    await decisions.present(reply, hold=False)
    outcome = await decisions.rewrite(
        reply.candidate_id, actor=ANN, text="Evening, friend.", key=None
    )
    assert outcome.status == "done"
    first, edit = outlet.delivered
    assert first.edit_ids == () and edit.edit_ids == (f"ext-{reply.candidate_id}",)
    assert edit.node_id == outcome.result_id and edit.text == "Evening, friend."
    assert (await store.get_node(reply.candidate_id)).state == "replaced"  # type: ignore[union-attr]
    with pytest.raises(InvalidAction, match="empty"):
        await decisions.rewrite(outcome.result_id, actor=ANN, text="  ", key=None)  # type: ignore[arg-type]
    assert len(outlet.delivered) == 2


@pytest.mark.parametrize("on_timeout", ["send", "drop"])
async def test_a_hold_that_runs_out_sends_or_drops_the_candidate(
    store: ConversationStore, on_timeout: str
) -> None:
    decisions, outlet = decisions_for(
        _engine(store, ["Evening."]), hold_seconds=0.2, on_timeout=on_timeout
    )
    news = _News(decisions)
    reply = await _held_reply(decisions)
    decided = await news.wait_for("decided", reply.candidate_id)
    assert decided.actor_id == "timeout"
    node = await store.get_node(reply.candidate_id)
    if on_timeout == "send":
        assert node.state == "sent" and [d.node_id for d in outlet.delivered] == [node.id]  # type: ignore[union-attr]
        assert outlet.said == []
    else:
        assert node.state == "dropped" and outlet.delivered == []  # type: ignore[union-attr]
        assert len(outlet.said) == 1  # the persona's holding line
    late = await decisions.approve(reply.candidate_id, actor=ALICE_ACTOR, key="late")
    assert late.status == "refused" and "hold ran out" in late.message
    await decisions.close()


async def test_regenerating_a_held_candidate_holds_the_new_one(store: ConversationStore) -> None:
    decisions, outlet = decisions_for(_engine(store, ["First.", "Second."]), hold_seconds=60)
    news = _News(decisions)
    reply = await _held_reply(decisions)
    acknowledged: list[str] = []

    async def acknowledge(outcome: object) -> None:
        acknowledged.append(outcome.status)  # type: ignore[attr-defined]

    outcome = await decisions.regenerate(
        reply.candidate_id, actor=ALICE_ACTOR, key="regen-1", acknowledge=acknowledge
    )
    assert acknowledged == ["accepted"] and outcome.status == "done"
    fresh = await store.get_node(outcome.result_id)  # type: ignore[arg-type]
    assert fresh.state == "held" and fresh.content == "Second."  # type: ignore[union-attr]
    assert (await store.get_node(reply.candidate_id)).state == "rejected"  # type: ignore[union-attr]
    regenerated = await news.wait_for("regenerated", reply.candidate_id)
    assert regenerated.result_id == outcome.result_id
    assert outlet.delivered == []  # the new candidate waits for its own decision
    assert await decisions.corrections.pending_regenerations() == []
    await decisions.close()


async def test_takeover_lines_go_out_only_while_the_actor_holds_the_conversation(
    store: ConversationStore,
) -> None:
    decisions, outlet = decisions_for(_engine(store, ["Evening."]))
    news = _News(decisions)
    reply = await decisions.engine.respond(_said("hello"))
    assert isinstance(reply, Reply)
    await decisions.present(reply, hold=False)
    conversation = reply.conversation_id
    early = await decisions.speak_as_persona(conversation, actor=ALICE_ACTOR, text="Hi.", key="s0")
    assert early.status == "refused" and "Take over" in early.message
    assert (await decisions.take_over(conversation, actor=ALICE_ACTOR, key="t")).status == "done"
    blocked = await decisions.take_over(conversation, actor=BOB_ACTOR, key="t2")
    assert blocked.status == "refused" and "Alice" in blocked.message
    line = await decisions.speak_as_persona(
        conversation, actor=ALICE_ACTOR, text="It's me, Marlowe.", key="s1"
    )
    assert line.status == "done"
    assert outlet.delivered[-1].node_id == line.result_id
    assert outlet.delivered[-1].text == "It's me, Marlowe."
    assert (await decisions.release(conversation, actor=ALICE_ACTOR, key="r")).status == "done"
    late = await decisions.speak_as_persona(conversation, actor=ALICE_ACTOR, text="Hm.", key="s2")
    assert late.status == "refused" and len(outlet.delivered) == 2
    assert [n.kind for n in news.seen if n.conversation_id == conversation][-3:] == [
        "claimed",
        "decided",
        "released",
    ]


async def test_a_restart_delivers_what_was_decided_but_not_sent(store: ConversationStore) -> None:
    decisions, _ = decisions_for(_engine(store, ["Evening."]), hold_seconds=60)
    reply = await _held_reply(decisions)
    # The decision committed, then the process died before delivering it.
    await decisions.corrections.approve(reply.candidate_id, actor=ALICE_ACTOR, key="k")
    await decisions.close()
    restarted, outlet = decisions_for(decisions.engine, hold_seconds=60)
    held = await restarted.resume()
    assert held == []
    assert [(d.node_id, d.recovering) for d in outlet.delivered] == [(reply.candidate_id, True)]
    assert (await store.get_node(reply.candidate_id)).state == "sent"  # type: ignore[union-attr]
    await restarted.close()


async def test_a_resume_leaves_the_holds_of_this_process_alone(store: ConversationStore) -> None:
    """A resume that runs while replies are being held (READY comes after the first messages)
    resumes only what an earlier process held; the console must not post those twice."""
    decisions, _ = decisions_for(_engine(store, ["Evening."]), hold_seconds=60)
    mine = await _held_reply(decisions)
    assert await decisions.resume() == []
    other, _ = decisions_for(decisions.engine, hold_seconds=60)  # as a new process would
    assert [held.id for held in await other.resume()] == [mine.candidate_id]
    await decisions.close()
    await other.close()


def test_the_decision_service_imports_nothing_of_discord() -> None:
    code = "import sys, bot.decisions; print('discord' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# -- memory keeps what the user received -----------------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(backend="torch")


@pytest.fixture
def memory(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[MemoryService]:
    service = MemoryService.open(path=tmp_path / "chroma", embedder=embedder)
    yield service
    service.close()


async def _remembered_replies(memory: MemoryService, user: str = "terminal:ann") -> list[str]:
    shown = await memory.show_user(user_id=user, persona="Marlowe")
    return sorted(item.text for item in shown if item.kind == "turn" and item.source == "assistant")


@pytest.mark.model
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_memory_keeps_the_regeneration_that_replaced_a_rewrite(
    store: ConversationStore, memory: MemoryService, caplog: pytest.LogCaptureFixture
) -> None:
    """The terminal's order: a reply, /rewrite, then /regen: the user was shown the last."""
    engine = _engine(store, ["The rain never stops.", "Storms are my weather."], memory)
    decisions, outlet = decisions_for(engine)
    reply = await engine.respond(_said("What is the weather like?"))
    assert isinstance(reply, Reply)
    await decisions.present(reply, hold=False)
    rewrite = await decisions.rewrite(
        reply.candidate_id, actor=ANN, text="Sunny for once.", key=None
    )
    assert await _remembered_replies(memory) == ["Sunny for once."]
    regen = await decisions.regenerate(rewrite.result_id, actor=ANN, deliver=True)  # type: ignore[arg-type]
    assert regen.status == "done"
    assert outlet.delivered[-1].text == "Storms are my weather."
    assert await _remembered_replies(memory) == ["Storms are my weather."]
    assert "could not" not in caplog.text


@pytest.mark.model
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_memory_keeps_what_a_console_finally_sent(
    store: ConversationStore, memory: MemoryService, caplog: pytest.LogCaptureFixture
) -> None:
    """The Discord console's order: a held reply rewritten, then regenerated and approved."""
    engine = _engine(store, ["The rain never stops.", "Storms are my weather."], memory)
    decisions, outlet = decisions_for(engine, hold_seconds=60)
    reply = await _held_reply(decisions, "What is the weather like?")
    rewrite = await decisions.rewrite(
        reply.candidate_id, actor=ALICE_ACTOR, text="Sunny for once.", key="w"
    )
    assert await _remembered_replies(memory) == ["Sunny for once."]
    regen = await decisions.regenerate(rewrite.result_id, actor=ALICE_ACTOR, key="g")  # type: ignore[arg-type]
    assert await _remembered_replies(memory) == ["Sunny for once."]  # not sent yet
    approved = await decisions.approve(regen.result_id, actor=ALICE_ACTOR, key="a")  # type: ignore[arg-type]
    assert approved.status == "done"
    assert outlet.delivered[-1].edit_ids  # edited in place
    assert await _remembered_replies(memory) == ["Storms are my weather."]
    assert "could not" not in caplog.text
    await decisions.close()
