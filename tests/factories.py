"""Builders of realistic rows for tests: conversations with user turns, candidates and actions.

They go through the real stores (``ConversationStore``, ``CorrectionStore``), so what they build
is what the bot would have written.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bot.decisions import DecisionService
from feedback.corrections import Actor, CorrectionStore
from feedback.store import EXAMPLES_NAMED_PARAM, ConversationStore, SnapshotData
from memory import MemoryHit

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection, Iterable, Sequence

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from bot.decisions import ConversationRef, Delivery
    from bot.engine import ConversationEngine

__all__ = [
    "ALICE_ACTOR",
    "BOB_ACTOR",
    "RecallingMemory",
    "RecordingOutlet",
    "Turn",
    "add_turn",
    "decisions_for",
    "snapshot_for",
    "stores",
]

ALICE_ACTOR = Actor("discord:9001", "Alice (actor)")
BOB_ACTOR = Actor("discord:9002", "Bob (actor)")


@dataclass(frozen=True)
class Turn:
    """Ids of one user turn and its first candidate."""

    conversation_id: int
    user_turn_id: int
    candidate_id: int


def stores(
    sessions: async_sessionmaker[AsyncSession],
) -> tuple[ConversationStore, CorrectionStore]:
    """The conversation and correction stores over one session factory."""
    return ConversationStore(sessions), CorrectionStore(sessions)


@dataclass
class RecordingOutlet:
    """A transport that records what reached its users (every delivery gets ``ext-<node>``)."""

    delivered: list[Delivery] = field(default_factory=list)
    said: list[str] = field(default_factory=list)

    async def deliver(self, delivery: Delivery) -> str | None:
        self.delivered.append(delivery)
        return f"ext-{delivery.node_id}"

    async def say(self, conversation: ConversationRef, persona: str, text: str) -> None:
        self.said.append(text)

    @contextlib.asynccontextmanager
    async def waiting(self, conversation: ConversationRef) -> AsyncIterator[None]:
        yield


@dataclass
class RecallingMemory:
    """A memory port that recalls the same facts on every turn (``facts_of`` the user, else
    ``always``), and a new line of its own on each (memories that change every turn); it
    remembers nothing and flags nothing."""

    always: tuple[str, ...] = ("Sister: Maya",)
    facts_of: dict[str, tuple[str, ...]] = field(default_factory=dict)
    recalls: int = 0
    #: The ``shown_turns`` of each recall.
    shown: list[list[str]] = field(default_factory=list)

    async def recall(
        self,
        *,
        persona: str,
        user_id: str,
        query_texts: Sequence[str],
        k: int,
        token_budget: int,
        shown_turns: Collection[str] = (),
    ) -> list[MemoryHit]:
        self.recalls += 1
        self.shown.append(list(shown_turns))
        facts = self.facts_of.get(user_id, self.always)
        texts = [*facts, f"Something told on day {self.recalls}"]
        return [
            MemoryHit(
                id=f"fact:{index}" if index < len(facts) else f"turn:{self.recalls}",
                text=text,
                kind="user_fact" if index < len(facts) else "turn",
                source="user",
                created_at=datetime.now(UTC),
                score=0.9,
            )
            for index, text in enumerate(texts)
        ]

    async def remember_turn(self, **_: Any) -> None:
        return None

    async def replace_turn(self, **_: Any) -> None:
        return None

    async def check_reply(self, **_: Any) -> list[Any]:
        return []

    async def sync_persona(self, persona: str, **_: Any) -> None:
        return None

    async def preload(self, scopes: Iterable[tuple[str, str]], *, limit: int = 0) -> int:
        return 0

    async def delete_data_for_user(self, *, requester: str, user_id: str) -> int:
        return 0


def decisions_for(
    engine: ConversationEngine, *, transport: str = "terminal", **options: Any
) -> tuple[DecisionService, RecordingOutlet]:
    """A decision service over the engine's store, delivering ``transport``'s replies to a
    :class:`RecordingOutlet`."""
    service = DecisionService(
        engine=engine, corrections=CorrectionStore(engine.store._sessions), **options
    )
    outlet = RecordingOutlet()
    service.add_outlet(transport, outlet)
    return service, outlet


def snapshot_for(
    persona: str, history: list[dict[str, str]], *, system: str = "You are {persona}."
) -> SnapshotData:
    """A prompt snapshot the way the engine stores one (marked as naming its example dialogue,
    of which this card has none)."""
    return SnapshotData(
        messages=[{"role": "system", "content": system.format(persona=persona)}, *history],
        persona=persona,
        persona_version=f"v-{persona.lower()}",
        model_name="fake",
        params={"temperature": 0.7, "max_tokens": 160, EXAMPLES_NAMED_PARAM: True},
        memories=[],
    )


async def add_turn(
    conversations: ConversationStore,
    *,
    persona: str = "Marlowe",
    user_id: str = "discord:1",
    user_name: str = "ann",
    scope: str | None = None,
    text: str = "hello there",
    reply: str = "Evening.",
    state: str = "candidate",
    transport: str = "discord",
    guild_key: str | None = None,
) -> Turn:
    """One user turn with one candidate (``state``: ``candidate``, ``held`` or ``sent``)."""
    conversation_id = await conversations.conversation_id(
        transport, scope or f"dm:{user_id}", persona, guild_key=guild_key
    )
    history = await conversations.history(conversation_id, 20)
    user_turn = await conversations.add_user_turn(
        conversation_id=conversation_id,
        parent_id=history[-1].id if history else None,
        user_id=user_id,
        user_name=user_name,
        text=text,
    )
    prompt = [
        {"role": "user" if t.role == "user" else "assistant", "content": t.content} for t in history
    ] + [{"role": "user", "content": text}]
    candidate = await conversations.add_candidate(
        conversation_id=conversation_id,
        user_turn_id=user_turn,
        persona=persona,
        text=reply,
        origin="model",
        snapshot=snapshot_for(persona, prompt),
        state="held" if state == "held" else "candidate",
    )
    if state == "sent":
        await conversations.mark_sent(candidate, external_id=f"msg-{candidate}")
    return Turn(conversation_id, user_turn, candidate)
