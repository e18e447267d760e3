"""The conversation store: turns, candidates and prompt snapshots in the database.

Every write commits before it returns, so a crash after a call never loses what it wrote.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from feedback.models import Conversation, MessageNode, PromptSnapshot
from feedback.privacy import PrivacyStore

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = ["ERASED_TEXT", "ConversationStore", "HistoryTurn", "SnapshotData"]

_log = logging.getLogger(__name__)

#: What replaces a user's words inside kept prompt snapshots after they ask to be forgotten.
ERASED_TEXT = "[removed at the user's request]"

_CONVERSATION_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class HistoryTurn:
    """One turn of a conversation's sent path, oldest first in :meth:`ConversationStore.history`."""

    id: int
    role: str
    author_id: str
    author_name: str
    content: str


@dataclass(frozen=True, slots=True)
class SnapshotData:
    """Exactly what produced a candidate: the prompt messages, card version, memories, model."""

    messages: list[dict[str, str]]
    persona: str
    persona_version: str
    model_name: str
    params: dict[str, Any] = field(default_factory=dict)
    memories: list[str] = field(default_factory=list)

    def to_row(self) -> PromptSnapshot:
        """A new ``prompt_snapshots`` row holding this snapshot."""
        return PromptSnapshot(
            messages=self.messages,
            persona=self.persona,
            persona_version=self.persona_version,
            memories=list(self.memories),
            model_name=self.model_name,
            params=self.params,
        )


class ConversationStore:
    """Reads and writes conversation trees through an ``async_sessionmaker``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._conversation_ids: OrderedDict[tuple[str, str, str], int] = OrderedDict()

    async def conversation_id(
        self, transport: str, scope: str, persona: str, *, guild_key: str | None = None
    ) -> int:
        """The id of the conversation for ``(transport, scope, persona)``, created if new
        (in the server ``guild_key``, whose consent default then applies)."""
        key = (transport, scope, persona)
        cached = self._conversation_ids.get(key)
        if cached is not None:
            self._conversation_ids.move_to_end(key)
            return cached
        conversation_id = await self._find_or_create_conversation(*key, guild_key)
        self._conversation_ids[key] = conversation_id
        if len(self._conversation_ids) > _CONVERSATION_CACHE_SIZE:
            self._conversation_ids.popitem(last=False)
        return conversation_id

    async def _find_or_create_conversation(
        self, transport: str, scope: str, persona: str, guild_key: str | None
    ) -> int:
        query = select(Conversation.id).where(
            Conversation.transport == transport,
            Conversation.scope == scope,
            Conversation.persona == persona,
        )
        async with self._sessions() as session:
            found = await session.scalar(query)
            if found is not None:
                return found
            conversation = Conversation(
                transport=transport, scope=scope, persona=persona, guild_key=guild_key
            )
            session.add(conversation)
            try:
                await session.commit()
            except IntegrityError:  # created concurrently by another task or process
                await session.rollback()
                found = await session.scalar(query)
                if found is None:
                    raise
                return found
            return conversation.id

    async def history(self, conversation_id: int, limit: int) -> list[HistoryTurn]:
        """The last ``limit`` turns that the user said or that were sent, oldest first."""
        query = (
            select(
                MessageNode.id,
                MessageNode.role,
                MessageNode.author_id,
                MessageNode.author_name,
                MessageNode.content,
            )
            .where(
                MessageNode.conversation_id == conversation_id,
                MessageNode.state.in_(("pending", "answered", "sent")),
            )
            .order_by(MessageNode.id.desc())
            .limit(limit)
        )
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        return [HistoryTurn(*row) for row in reversed(rows)]

    async def add_user_turn(
        self,
        *,
        conversation_id: int,
        parent_id: int | None,
        user_id: str,
        user_name: str,
        text: str,
        external_id: str | None = None,
    ) -> int:
        """Record what the user said (state ``pending`` until a reply is stored)."""
        node = MessageNode(
            conversation_id=conversation_id,
            parent_id=parent_id,
            role="user",
            origin="user",
            author_id=user_id,
            author_name=user_name,
            content=text,
            state="pending",
            external_id=external_id,
            flags=[],
        )
        async with self._sessions() as session:
            session.add(node)
            await session.commit()
        return node.id

    async def add_candidate(
        self,
        *,
        conversation_id: int,
        user_turn_id: int,
        persona: str,
        text: str,
        origin: str,
        snapshot: SnapshotData | None,
        flags: Sequence[dict[str, Any]] = (),
        state: str = "candidate",
    ) -> int:
        """Store a reply under its user turn, with its prompt snapshot, in one transaction.

        The user turn becomes ``answered`` in the same commit, so a crash leaves either both or
        neither.
        """
        async with self._sessions() as session:
            snapshot_id = None
            if snapshot is not None:
                row = snapshot.to_row()
                session.add(row)
                await session.flush()
                snapshot_id = row.id
            node = MessageNode(
                conversation_id=conversation_id,
                parent_id=user_turn_id,
                role="assistant",
                origin=origin,
                author_id=f"persona:{persona}",
                author_name=persona,
                content=text,
                state=state,
                prompt_snapshot_id=snapshot_id,
                flags=list(flags),
            )
            session.add(node)
            await session.execute(
                update(MessageNode).where(MessageNode.id == user_turn_id).values(state="answered")
            )
            await session.commit()
        return node.id

    async def mark_sent(self, candidate_id: int, external_id: str | None = None) -> None:
        """Mark a candidate as the reply that went out."""
        async with self._sessions() as session:
            await session.execute(
                update(MessageNode)
                .where(MessageNode.id == candidate_id)
                .values(state="sent", external_id=external_id)
            )
            await session.commit()

    async def get_conversation(self, conversation_id: int) -> Conversation | None:
        """One conversation, or ``None``."""
        async with self._sessions() as session:
            return await session.get(Conversation, conversation_id)

    async def set_console_thread(self, conversation_id: int, thread_id: str) -> None:
        """Remember the console thread where actors speak for this conversation."""
        async with self._sessions() as session:
            await session.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id)
                .values(console_thread_id=thread_id)
            )
            await session.commit()

    async def conversation_for_thread(self, thread_id: str) -> Conversation | None:
        """The conversation whose console thread this is, or ``None``."""
        async with self._sessions() as session:
            return await session.scalar(
                select(Conversation).where(Conversation.console_thread_id == thread_id)
            )

    async def recent_user_lines(
        self, conversation_id: int, before_id: int, limit: int
    ) -> list[str]:
        """The last user messages up to ``before_id``, oldest first (for the console)."""
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(MessageNode.content)
                    .where(
                        MessageNode.conversation_id == conversation_id,
                        MessageNode.role == "user",
                        MessageNode.id <= before_id,
                    )
                    .order_by(MessageNode.id.desc())
                    .limit(limit)
                )
            ).all()
        return list(reversed(rows))

    async def get_node(self, node_id: int) -> MessageNode | None:
        """One node of the tree, or ``None``."""
        async with self._sessions() as session:
            return await session.get(MessageNode, node_id)

    async def get_snapshot(self, snapshot_id: int) -> PromptSnapshot | None:
        """One prompt snapshot, or ``None``."""
        async with self._sessions() as session:
            return await session.get(PromptSnapshot, snapshot_id)

    async def delete_data_for_user(self, *, requester: str, user_id: str) -> int:
        """Erase what ``user_id`` said: their turns, the replies to them, and their words in the
        prompt snapshots kept for other turns. Returns the number of rows removed or scrubbed.
        """
        removed = 0
        await PrivacyStore(self._sessions).mark_erased(user_id)
        async with self._sessions() as session:
            own = (
                await session.execute(
                    select(MessageNode.id, MessageNode.conversation_id, MessageNode.content).where(
                        MessageNode.author_id == user_id, MessageNode.role == "user"
                    )
                )
            ).all()
            if not own:
                _log.info("erase for %s requested by %s: nothing stored", user_id, requester)
                return 0
            own_ids = [row.id for row in own]
            own_texts = {row.content for row in own}
            conversations = {row.conversation_id for row in own}
            replies = (
                await session.execute(
                    select(MessageNode.id, MessageNode.prompt_snapshot_id).where(
                        MessageNode.parent_id.in_(own_ids)
                    )
                )
            ).all()
            snapshot_ids = [row.prompt_snapshot_id for row in replies if row.prompt_snapshot_id]
            reply_ids = [row.id for row in replies]
            result = await session.execute(
                delete(MessageNode).where(MessageNode.id.in_(reply_ids + own_ids))
            )
            removed += result.rowcount or 0
            if snapshot_ids:
                result = await session.execute(
                    delete(PromptSnapshot).where(PromptSnapshot.id.in_(snapshot_ids))
                )
                removed += result.rowcount or 0
            removed += await self._scrub_snapshots(session, conversations, own_texts)
            await session.commit()
        _log.info("erased %d rows for %s (requested by %s)", removed, user_id, requester)
        return removed

    async def _scrub_snapshots(
        self, session: AsyncSession, conversations: set[int], texts: set[str]
    ) -> int:
        """Replace the user's words inside the other snapshots of their conversations."""
        snapshots = (
            await session.scalars(
                select(PromptSnapshot)
                .join(MessageNode, MessageNode.prompt_snapshot_id == PromptSnapshot.id)
                .where(MessageNode.conversation_id.in_(conversations))
            )
        ).all()
        scrubbed = 0
        for snapshot in snapshots:
            messages = [
                {**message, "content": ERASED_TEXT}
                if message.get("role") == "user" and _mentions_any(message["content"], texts)
                else message
                for message in snapshot.messages
            ]
            if messages != snapshot.messages:
                snapshot.messages = messages
                scrubbed += 1
        return scrubbed


def _mentions_any(content: str, texts: set[str]) -> bool:
    return any(text and text in content for text in texts)
