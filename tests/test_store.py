"""The conversation store on SQLite and PostgreSQL: tree shape, history, snapshots, erasure."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from feedback.channels import ChannelSettingsStore
from feedback.corrections import CorrectionStore
from feedback.database import session_factory
from feedback.models import Base, ConversationClaim, MessageNode, PromptSnapshot
from feedback.store import ERASED_TEXT, ConversationStore, NewUserTurn, SnapshotData
from tests.factories import ALICE_ACTOR

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine


def _snapshot(messages: list[dict[str, str]]) -> SnapshotData:
    return SnapshotData(
        messages=messages,
        persona="Marlowe",
        persona_version="abc123",
        model_name="fake",
        params={"temperature": 0.7},
        memories=["- sister: Maya"],
    )


async def _turn(
    store: ConversationStore, conversation: int, user: str, text: str
) -> tuple[int, int]:
    history = await store.history(conversation, 50)
    user_turn = await store.add_user_turn(
        conversation_id=conversation,
        parent_id=history[-1].id if history else None,
        user_id=user,
        user_name=user.split(":")[-1],
        text=text,
    )
    candidate = await store.add_candidate(
        conversation_id=conversation,
        user_turn_id=user_turn,
        persona="Marlowe",
        text=f"re: {text}",
        origin="model",
        snapshot=_snapshot([{"role": "user", "content": text}]),
    )
    await store.mark_sent(candidate, external_id=f"ext-{candidate}")
    return user_turn, candidate


async def test_conversation_id_is_stable_and_scoped(store: ConversationStore) -> None:
    first = await store.conversation_id("discord", "dm:1", "Marlowe")
    assert await store.conversation_id("discord", "dm:1", "Marlowe") == first
    assert await store.conversation_id("discord", "dm:1", "Juniper") != first
    assert await store.conversation_id("terminal", "dm:1", "Marlowe") != first


async def test_concurrent_creation_yields_one_conversation(store: ConversationStore) -> None:
    stores = [ConversationStore(store._sessions) for _ in range(5)]
    ids = await asyncio.gather(*(s.conversation_id("discord", "c:9", "Vex") for s in stores))
    assert len(set(ids)) == 1


async def test_history_is_the_sent_path_as_a_tree(store: ConversationStore) -> None:
    conversation = await store.conversation_id("terminal", "terminal:ann", "Marlowe")
    first_user, first_reply = await _turn(store, conversation, "terminal:ann", "hello")
    second_user = await store.add_user_turn(
        conversation_id=conversation,
        parent_id=first_reply,
        user_id="terminal:ann",
        user_name="ann",
        text="again",
    )
    rejected = await store.add_candidate(
        conversation_id=conversation,
        user_turn_id=second_user,
        persona="Marlowe",
        text="never sent",
        origin="model",
        snapshot=None,
    )
    history = await store.history(conversation, 10)
    assert [(t.role, t.content) for t in history] == [
        ("user", "hello"),
        ("assistant", "re: hello"),
        ("user", "again"),
    ]
    node = await store.get_node(rejected)
    assert node is not None and node.parent_id == second_user and node.state == "candidate"
    user_node = await store.get_node(second_user)
    assert user_node is not None and user_node.state == "answered"
    assert (await store.get_node(first_reply)).parent_id == first_user  # type: ignore[union-attr]
    assert len(await store.history(conversation, 2)) == 2


async def test_open_turn_reads_stores_and_respects_takeovers(store: ConversationStore) -> None:
    """One statement on PostgreSQL, three on SQLite; the same answers on both."""
    conversation = await store.conversation_id("discord", "channel:5", "Marlowe")
    _, first_reply = await _turn(store, conversation, "discord:1", "hello")
    said = NewUserTurn("discord:2", "Bo", "what's new?", external_id="m-2")

    opened = await store.open_turn(conversation, 10, said)
    assert not opened.taken_over and opened.user_turn_id is not None
    assert [t.content for t in opened.history] == ["hello", "re: hello"]  # not the new turn
    node = await store.get_node(opened.user_turn_id)
    assert node is not None
    assert (node.parent_id, node.role, node.state) == (first_reply, "user", "pending")
    assert (node.author_id, node.author_name, node.content) == ("discord:2", "Bo", "what's new?")
    assert node.external_id == "m-2" and node.flags == []

    again = await store.open_turn(conversation, 10, said)  # the same message: seen, not stored
    assert again.user_turn_id is None and not again.taken_over
    assert [t.external_id for t in again.history][-1] == "m-2"
    only_read = await store.open_turn(conversation, 2, None)
    assert only_read.user_turn_id is None and len(only_read.history) == 2

    corrections = CorrectionStore(store._sessions)
    await corrections.claim(
        conversation, actor=ALICE_ACTOR, takeover=True, persona="Marlowe", key="k1"
    )
    silent = NewUserTurn("discord:2", "Bo", "anyone there?", external_id="m-3")
    held = await store.open_turn(conversation, 10, silent)
    assert held.taken_over and held.user_turn_id is None
    assert [t.content for t in held.history][-1] == "what's new?"

    async with store._sessions() as session:  # an expired claim no longer silences the model
        claim = await session.get(ConversationClaim, conversation)
        assert claim is not None
        claim.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        await session.commit()
    resumed = await store.open_turn(conversation, 10, silent)
    assert not resumed.taken_over and resumed.user_turn_id is not None

    fresh = await store.conversation_id("discord", "channel:6", "Marlowe")
    first = await store.open_turn(fresh, 10, NewUserTurn("discord:3", "Cy", "hi", None))
    assert first.history == [] and first.user_turn_id is not None
    assert (await store.get_node(first.user_turn_id)).parent_id is None  # type: ignore[union-attr]


async def test_reply_snapshot_and_answered_turn_land_together(store: ConversationStore) -> None:
    """One statement on PostgreSQL, one transaction on SQLite: all three writes or none."""
    conversation = await store.conversation_id("terminal", "terminal:cy", "Marlowe")
    user_turn, candidate = await _turn(store, conversation, "terminal:cy", "hi")
    node = await store.get_node(candidate)
    assert node is not None and node.parent_id == user_turn and node.prompt_snapshot_id
    assert (await store.get_node(user_turn)).state == "answered"  # type: ignore[union-attr]

    async def snapshots() -> int:
        async with store._sessions() as session:
            return await session.scalar(select(func.count()).select_from(PromptSnapshot)) or 0

    before = await snapshots()
    with pytest.raises(IntegrityError):  # no such user turn: the candidate cannot be stored
        await store.add_candidate(
            conversation_id=conversation,
            user_turn_id=10**9,
            persona="Marlowe",
            text="orphan",
            origin="model",
            snapshot=_snapshot([{"role": "user", "content": "hi"}]),
        )
    assert await snapshots() == before


async def test_recent_speakers_newest_first_per_persona(store: ConversationStore) -> None:
    marlowe = await store.conversation_id("discord", "channel:7", "Marlowe")
    juniper = await store.conversation_id("discord", "channel:8", "Juniper")
    start = datetime.now(UTC) - timedelta(minutes=1)
    await _turn(store, marlowe, "discord:1", "first")
    await _turn(store, juniper, "discord:2", "second")
    await _turn(store, marlowe, "discord:3", "third")
    await _turn(store, marlowe, "discord:1", "fourth")
    assert await store.recent_speakers(start, 10) == [
        ("Marlowe", "discord:1"),
        ("Marlowe", "discord:3"),
        ("Juniper", "discord:2"),
    ]
    assert await store.recent_speakers(start, 1) == [("Marlowe", "discord:1")]
    assert await store.recent_speakers(datetime.now(UTC) + timedelta(minutes=1), 10) == []


async def test_candidate_keeps_its_exact_prompt(store: ConversationStore) -> None:
    conversation = await store.conversation_id("terminal", "terminal:bo", "Marlowe")
    _, candidate = await _turn(store, conversation, "terminal:bo", "what's up")
    node = await store.get_node(candidate)
    assert node is not None and node.state == "sent" and node.external_id == f"ext-{candidate}"
    snapshot = await store.get_snapshot(node.prompt_snapshot_id)  # type: ignore[arg-type]
    assert snapshot is not None
    assert snapshot.messages == [{"role": "user", "content": "what's up"}]
    assert snapshot.persona_version == "abc123"
    assert snapshot.params == {"temperature": 0.7}
    assert snapshot.memories == ["- sister: Maya"]
    assert snapshot.created_at.tzinfo is not None


async def test_erase_removes_the_user_and_scrubs_shared_snapshots(
    store: ConversationStore,
) -> None:
    channel = await store.conversation_id("discord", "channel:5", "Marlowe")
    first_turn, _ = await _turn(store, channel, "discord:1", "my secret is 42")
    # said before the first reply went out: a child of the erased user's turn, and not theirs
    user_turn = await store.add_user_turn(
        conversation_id=channel,
        parent_id=first_turn,
        user_id="discord:2",
        user_name="two",
        text="hi",
    )
    await store.add_candidate(
        conversation_id=channel,
        user_turn_id=user_turn,
        persona="Marlowe",
        text="hey",
        origin="model",
        snapshot=_snapshot(
            [
                {"role": "user", "content": "one: my secret is 42"},
                {"role": "user", "content": "two: hi"},
            ]
        ),
    )
    removed = await store.delete_data_for_user(requester="user", user_id="discord:1")
    assert removed >= 3
    async with store._sessions() as session:
        texts = (await session.scalars(select(MessageNode.content))).all()
        snapshots = (await session.scalars(select(PromptSnapshot))).all()
    assert all("secret" not in t for t in texts)
    assert all("secret" not in m["content"] for s in snapshots for m in s.messages)
    assert any(m["content"] == ERASED_TEXT for s in snapshots for m in s.messages)
    assert await store.delete_data_for_user(requester="user", user_id="discord:1") == 0
    async with store._sessions() as session:
        assert await session.scalar(select(func.count()).select_from(MessageNode)) == 2


async def test_migrations_match_the_models(db_engine: AsyncEngine) -> None:
    def compare(connection: Connection) -> list[object]:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)

    async with db_engine.connect() as connection:
        assert await connection.run_sync(compare) == []


async def test_channel_settings_cache_keeps_the_most_recently_used(db_engine: AsyncEngine) -> None:
    sessions = session_factory(db_engine)
    channels = ChannelSettingsStore(sessions, cache_size=3)
    await channels.bind("discord:1", persona="Juniper", guild_key=None, by="test")
    for n in range(2, 6):  # typing signals from four DMs never written
        assert await channels.persona_for(f"discord:{n}") is None
    assert list(channels._cache) == ["discord:3", "discord:4", "discord:5"]
    assert await channels.persona_for("discord:1") == "Juniper"  # read back from the database
    assert await channels.persona_for("discord:4") is None  # a hit moves it to the end
    assert list(channels._cache) == ["discord:5", "discord:1", "discord:4"]
    await channels.bind("discord:5", persona="Marlowe", guild_key=None, by="test")
    assert list(channels._cache) == ["discord:1", "discord:4", "discord:5"]  # a write refreshes
    assert await channels.persona_for("discord:5") == "Marlowe"
