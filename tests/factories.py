"""Builders of realistic rows for tests: conversations with user turns, candidates and actions.

They go through the real stores (``ConversationStore``, ``CorrectionStore``), so what they build
is what the bot would have written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from feedback.corrections import Actor, CorrectionStore
from feedback.store import ConversationStore, SnapshotData

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = ["ALICE_ACTOR", "BOB_ACTOR", "Turn", "add_turn", "snapshot_for", "stores"]

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


def snapshot_for(
    persona: str, history: list[dict[str, str]], *, system: str = "You are {persona}."
) -> SnapshotData:
    """A prompt snapshot the way the engine stores one."""
    return SnapshotData(
        messages=[{"role": "system", "content": system.format(persona=persona)}, *history],
        persona=persona,
        persona_version=f"v-{persona.lower()}",
        model_name="fake",
        params={"temperature": 0.7, "max_tokens": 160},
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
