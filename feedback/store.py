"""The conversation store: turns, candidates and prompt snapshots in the database.

Every write commits before it returns, so a crash after a call never loses what it wrote.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    bindparam,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from feedback.database import autocommit, autocommit_engine
from feedback.erasure import chunks, record_erasure
from feedback.models import (
    Conversation,
    ConversationClaim,
    FeedbackEvent,
    MessageNode,
    PromptSnapshot,
)
from feedback.privacy import mark_erased

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from sqlalchemy import CompoundSelect, Insert, Select, Table
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

__all__ = [
    "CONTEXT_NAME",
    "ERASED_TEXT",
    "EXAMPLES_NAMED_PARAM",
    "EXAMPLE_NAMES",
    "ConversationStore",
    "HistoryTurn",
    "NewUserTurn",
    "OpenedTurn",
    "SnapshotData",
    "examples_named",
    "said_in",
]

_log = logging.getLogger(__name__)

#: The names that mark a card's example dialogue in a stored prompt (SillyTavern's convention).
EXAMPLE_NAMES = {"user": "example_user", "assistant": "example_assistant"}
#: The name of the late system message that carries triggered lore and recalled memories.
CONTEXT_NAME = "context"
#: The ``params`` key set on every snapshot whose prompt names its example dialogue (even one
#: with no examples to name): snapshots stored before had none, and their examples read as
#: real turns.
EXAMPLES_NAMED_PARAM = "examples_named"


def examples_named(messages: Sequence[dict[str, Any]], params: dict[str, Any]) -> bool:
    """Whether a snapshot's example messages (if any) are named: it was stored with the marker,
    or a message carries a name (prompts stored before the markers had none)."""
    return bool(params.get(EXAMPLES_NAMED_PARAM)) or any("name" in m for m in messages)


# The statements every turn runs, built once on the tables themselves (Core, not the ORM's
# bulk paths); a call only binds its values.
_MESSAGES = cast("Table", MessageNode.__table__)
_SNAPSHOTS = cast("Table", PromptSnapshot.__table__)
_CLAIMS = cast("Table", ConversationClaim.__table__)
_NODE_COLUMNS = (
    "conversation_id",
    "parent_id",
    "role",
    "origin",
    "author_id",
    "author_name",
    "content",
    "state",
    "external_id",
    "prompt_snapshot_id",
    "flags",
)
_INSERT_NODE = (
    insert(_MESSAGES)
    .values({name: bindparam(name) for name in _NODE_COLUMNS})
    .returning(_MESSAGES.c.id)
)
_SNAPSHOT_COLUMNS = (
    "messages",
    "persona",
    "persona_version",
    "memories",
    "model_name",
    "params",
    "context",
)


def _insert_snapshot(bind_prefix: str = "") -> Insert:
    """``INSERT`` of a prompt snapshot returning its id, binding ``<bind_prefix><column>``."""
    return (
        insert(_SNAPSHOTS)
        .values({name: bindparam(f"{bind_prefix}{name}") for name in _SNAPSHOT_COLUMNS})
        .returning(_SNAPSHOTS.c.id)
    )


_INSERT_SNAPSHOT = _insert_snapshot()
_SET_STATE = (
    update(_MESSAGES)
    .where(_MESSAGES.c.id == bindparam("node_id"))
    .values(state=bindparam("new_state"))
)
_MARK_SENT = (
    update(_MESSAGES)
    .where(_MESSAGES.c.id == bindparam("node_id"))
    .values(state="sent", external_id=bindparam("sent_as"))
)


def _answer_in_one_statement() -> Select[tuple[int]]:
    """PostgreSQL: the snapshot, the candidate under the user turn, and the user turn marked
    ``answered``, as one statement (data-modifying CTEs), atomic without ``BEGIN``/``COMMIT``:
    one round trip instead of five. Binds ``snapshot_<column>``, ``candidate_<column>`` (its
    ``parent_id`` is the user turn) and returns the candidate's id. Bind names differ from the
    column names, which an ``UPDATE`` would otherwise also set from the parameters."""
    snapshot = _insert_snapshot("snapshot_").cte("snapshot")
    node_columns = [name for name in _NODE_COLUMNS if name != "prompt_snapshot_id"]
    candidate = (
        insert(_MESSAGES)
        .from_select(
            [*node_columns, "prompt_snapshot_id"],
            select(
                *(
                    bindparam(f"candidate_{name}", type_=_MESSAGES.c[name].type)
                    for name in node_columns
                ),
                snapshot.c.id,
            ),
        )
        .returning(_MESSAGES.c.id)
        .cte("candidate")
    )
    answered = (
        update(_MESSAGES)
        .where(_MESSAGES.c.id == bindparam("candidate_parent_id"))
        .values(state="answered")
        .cte("answered")
    )
    return select(candidate.c.id).add_cte(answered)


_ANSWER = _answer_in_one_statement()
# A user turn is ``pending`` or ``answered``; of the persona's nodes, only what was sent counts.
_HISTORY = (
    select(
        _MESSAGES.c.id,
        _MESSAGES.c.role,
        _MESSAGES.c.author_id,
        _MESSAGES.c.author_name,
        _MESSAGES.c.content,
        _MESSAGES.c.external_id,
        _MESSAGES.c.parent_id,
        _SNAPSHOTS.c.context,
    )
    .select_from(_MESSAGES.outerjoin(_SNAPSHOTS, _SNAPSHOTS.c.id == _MESSAGES.c.prompt_snapshot_id))
    .where(
        _MESSAGES.c.conversation_id == bindparam("conversation_id"),
        or_(_MESSAGES.c.role == "user", _MESSAGES.c.state == "sent"),
    )
    .order_by(_MESSAGES.c.id.desc())
    .limit(bindparam("limit"))
)

# A live takeover claim: the model stays silent in the conversation.
_TAKEN_OVER = select(_CLAIMS.c.conversation_id).where(
    _CLAIMS.c.conversation_id == bindparam("conversation_id"),
    _CLAIMS.c.takeover.is_(True),
    _CLAIMS.c.expires_at > bindparam("now"),
)


def _open_turn_in_one_statement() -> CompoundSelect:
    """PostgreSQL: the takeover check, the history read and the new user turn's insert (under
    the newest turn, unless the message is in that history already or an actor has taken the
    conversation over) as one statement: one round trip instead of three on every turn.

    Binds ``conversation_id``, ``limit``, ``now``, ``external_id`` and ``turn_<column>``. Rows
    are ``(part, id, role, author_id, author_name, content, external_id, parent_id, context)``
    with ``part`` one
    of ``history`` (the turns before this one, in no particular order), ``turn`` (the new
    turn's id) and ``takeover``. The history CTE reads the snapshot before the insert, so it
    never holds the new turn.
    """
    history = _HISTORY.cte("history")
    taken_over = _TAKEN_OVER.exists()
    seen = (
        select(history.c.id)
        .where(history.c.role == "user", history.c.external_id == bindparam("external_id"))
        .exists()
    )
    node_columns = [name for name in _NODE_COLUMNS if name != "parent_id"]
    turn = (
        insert(_MESSAGES)
        .from_select(
            [*node_columns, "parent_id"],
            select(
                *(bindparam(f"turn_{name}", type_=_MESSAGES.c[name].type) for name in node_columns),
                select(func.max(history.c.id)).scalar_subquery(),
            ).where(~taken_over, ~seen),
        )
        .returning(_MESSAGES.c.id)
        .cte("turn")
    )
    blanks = [null()] * (len(history.c) - 1)
    return union_all(
        select(literal("history").label("part"), *history.c),
        select(literal("turn"), turn.c.id, *blanks),
        select(literal("takeover"), null(), *blanks).where(taken_over),
    )


_OPEN_TURN = _open_turn_in_one_statement()

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
    #: For a user turn, the transport's id of the message (how a redelivery is recognised).
    external_id: str | None = None
    #: The turn this one follows in the tree (for a reply, the user turn it answers).
    parent_id: int | None = None
    #: For a reply, the ``context`` message its prompt carried for its own turn (see
    #: :attr:`SnapshotData.context`).
    context: str | None = None


def said_in(history: Sequence[HistoryTurn], external_id: str | None) -> HistoryTurn | None:
    """The user turn in ``history`` stored for the transport's message ``external_id``."""
    if external_id is None:
        return None
    return next(
        (t for t in reversed(history) if t.role == "user" and t.external_id == external_id), None
    )


@dataclass(frozen=True, slots=True)
class NewUserTurn:
    """What a user said, to store as a turn (see :meth:`ConversationStore.open_turn`)."""

    user_id: str
    user_name: str
    text: str
    #: The transport's id of the message (how a redelivery is recognised).
    external_id: str | None = None

    def row_values(self, conversation_id: int, parent_id: int | None) -> dict[str, Any]:
        """The ``messages`` columns of this turn, ``pending`` until a reply is stored."""
        return {
            "conversation_id": conversation_id,
            "parent_id": parent_id,
            "role": "user",
            "origin": "user",
            "author_id": self.user_id,
            "author_name": self.user_name,
            "content": self.text,
            "state": "pending",
            "external_id": self.external_id,
            "prompt_snapshot_id": None,
            "flags": [],
        }


@dataclass(frozen=True, slots=True)
class OpenedTurn:
    """What :meth:`ConversationStore.open_turn` found and stored."""

    #: The turns before this one, oldest first.
    history: list[HistoryTurn]
    #: The new user turn, or ``None`` when nothing was stored: no turn was given, the message
    #: is in ``history`` already, or the conversation is taken over.
    user_turn_id: int | None
    #: An actor holds a takeover claim on the conversation: the model must stay silent.
    taken_over: bool


@dataclass(frozen=True, slots=True)
class SnapshotData:
    """Exactly what produced a candidate: the prompt messages, card version, memories, model."""

    messages: list[dict[str, str]]
    persona: str
    persona_version: str
    model_name: str
    params: dict[str, Any] = field(default_factory=dict)
    memories: list[str] = field(default_factory=list)
    #: The content of the ``context`` message built for this turn (``None``: it had none). It
    #: is also among ``messages``, beside the context messages of earlier turns, which the
    #: prompt keeps in place; the history read returns it with the reply.
    context: str | None = None

    def row_values(self) -> dict[str, Any]:
        """The ``prompt_snapshots`` columns holding this snapshot."""
        return {
            "messages": self.messages,
            "persona": self.persona,
            "persona_version": self.persona_version,
            "memories": list(self.memories),
            "model_name": self.model_name,
            "params": self.params,
            "context": self.context,
        }

    def to_row(self) -> PromptSnapshot:
        """A new ``prompt_snapshots`` row holding this snapshot."""
        return PromptSnapshot(**self.row_values())


class ConversationStore:
    """Reads and writes conversation trees through an ``async_sessionmaker``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        #: For the per-turn statements: Core connections, cheaper than sessions.
        self._engine: AsyncEngine = sessions.kw["bind"]
        self._autocommit = autocommit_engine(sessions)
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

    async def history(
        self, conversation_id: int, limit: int, *, before_id: int | None = None
    ) -> list[HistoryTurn]:
        """The last ``limit`` turns that the user said or that were sent, oldest first
        (only those older than node ``before_id`` when given)."""
        query = _HISTORY
        params: dict[str, Any] = {"conversation_id": conversation_id, "limit": limit}
        if before_id is not None:
            query = query.where(_MESSAGES.c.id < bindparam("before_id"))
            params["before_id"] = before_id
        async with self._autocommit.begin() as connection:
            rows = (await connection.execute(query, params)).all()
        return [HistoryTurn(*row) for row in reversed(rows)]

    async def open_turn(
        self, conversation_id: int, limit: int, turn: NewUserTurn | None
    ) -> OpenedTurn:
        """Start a turn: whether an actor has taken the conversation over, its last ``limit``
        turns, and ``turn`` stored under the newest of them unless its ``external_id`` is among
        them or the conversation is taken over (``None``: only read).

        One statement on PostgreSQL (:func:`_open_turn_in_one_statement`, committing by itself),
        three in one transaction on SQLite (see :func:`feedback.database.autocommit_engine`).
        """
        params: dict[str, Any] = {
            "conversation_id": conversation_id,
            "limit": limit,
            "now": datetime.now(UTC),
        }
        if turn is not None and self._engine.dialect.name == "postgresql":
            params["external_id"] = turn.external_id
            values = turn.row_values(conversation_id, None)
            params.update((f"turn_{name}", value) for name, value in values.items())
            async with self._autocommit.begin() as connection:
                rows = (await connection.execute(_OPEN_TURN, params)).all()
            history = sorted(
                (HistoryTurn(*row[1:]) for row in rows if row.part == "history"),
                key=lambda t: t.id,
            )
            user_turn_id = next((row.id for row in rows if row.part == "turn"), None)
            taken_over = any(row.part == "takeover" for row in rows)
            return OpenedTurn(history, user_turn_id, taken_over)
        async with self._autocommit.begin() as connection:
            taken_over = (await connection.execute(_TAKEN_OVER, params)).first() is not None
            rows = (await connection.execute(_HISTORY, params)).all()
            history = [HistoryTurn(*row) for row in reversed(rows)]
            if turn is None or taken_over or said_in(history, turn.external_id) is not None:
                return OpenedTurn(history, None, taken_over)
            parent_id = history[-1].id if history else None
            result = await connection.execute(
                _INSERT_NODE, turn.row_values(conversation_id, parent_id)
            )
            return OpenedTurn(history, result.scalar_one(), taken_over=False)

    async def find_user_turn(self, conversation_id: int, external_id: str) -> MessageNode | None:
        """The user turn stored for the transport's message ``external_id``, or ``None``."""
        async with autocommit(self._sessions) as session:
            return await session.scalar(
                select(MessageNode)
                .where(
                    MessageNode.conversation_id == conversation_id,
                    MessageNode.role == "user",
                    MessageNode.external_id == external_id,
                )
                .order_by(MessageNode.id)
                .limit(1)
            )

    async def answers_to(self, user_turn_id: int) -> list[MessageNode]:
        """The assistant nodes stored under a user turn (candidates, rewrites), oldest first."""
        async with autocommit(self._sessions) as session:
            rows = await session.scalars(
                select(MessageNode)
                .where(MessageNode.parent_id == user_turn_id, MessageNode.role == "assistant")
                .order_by(MessageNode.id)
            )
            return list(rows.all())

    async def catch_up_marks(self, transport: str, since: datetime) -> dict[str, str | None]:
        """Where a transport should start reading each scope's messages again after a restart.

        For every scope with a user turn stored since ``since``: the external id just before its
        oldest turn still open (no reply stored, or a reply stored but not yet sent or held), or,
        when all are closed, its newest turn's id; ``None`` when the ids are not numbers. Scopes
        not listed had nothing stored in the window (read all of it). One indexed read.
        """
        answer = aliased(MessageNode)
        closed = (
            select(answer.id)
            .where(answer.parent_id == MessageNode.id, answer.state != "candidate")
            .exists()
        )
        query = (
            select(Conversation.scope, MessageNode.external_id, closed)
            .join(Conversation, Conversation.id == MessageNode.conversation_id)
            .where(
                MessageNode.created_at >= since,
                MessageNode.role == "user",
                Conversation.transport == transport,
            )
            .order_by(MessageNode.id)
        )
        async with autocommit(self._sessions) as session:
            rows = (await session.execute(query)).all()
        marks: dict[str, str | None] = {}
        open_scopes: set[str] = set()
        for scope, external_id, is_closed in rows:
            if scope in open_scopes:
                continue
            if external_id is None or not external_id.isdigit():
                marks[scope] = None
                open_scopes.add(scope)
            elif not is_closed:
                marks[scope] = str(int(external_id) - 1)
                open_scopes.add(scope)
            else:
                marks[scope] = external_id
        return marks

    async def recent_speakers(self, since: datetime, limit: int) -> list[tuple[str, str]]:
        """``(persona, user_id)`` of the users who spoke to a persona since ``since``, most
        recent first, at most ``limit``: whose memories a restarted bot is likely to need."""
        last_said = func.max(MessageNode.id)
        query = (
            select(Conversation.persona, MessageNode.author_id)
            .join(Conversation, Conversation.id == MessageNode.conversation_id)
            .where(MessageNode.created_at >= since, MessageNode.role == "user")
            .group_by(Conversation.persona, MessageNode.author_id)
            .order_by(last_said.desc())
            .limit(limit)
        )
        async with autocommit(self._sessions) as session:
            return [(persona, user_id) for persona, user_id in await session.execute(query)]

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
        """Record what the user said (state ``pending`` until a reply is stored).

        One ``INSERT ... RETURNING``, committing by itself (PostgreSQL) or in a transaction of
        its own (SQLite, see :func:`feedback.database.autocommit_engine`).
        """
        turn = NewUserTurn(user_id, user_name, text, external_id)
        async with self._autocommit.begin() as connection:
            result = await connection.execute(
                _INSERT_NODE, turn.row_values(conversation_id, parent_id)
            )
            return result.scalar_one()

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
        neither. Core statements, not the unit of work: every turn pays for this (on PostgreSQL
        one statement, see :func:`_answer_in_one_statement`).
        """
        node = {
            "conversation_id": conversation_id,
            "parent_id": user_turn_id,
            "role": "assistant",
            "origin": origin,
            "author_id": f"persona:{persona}",
            "author_name": persona,
            "content": text,
            "state": state,
            "external_id": None,
            "flags": list(flags),
        }
        if snapshot is not None and self._engine.dialect.name == "postgresql":
            async with self._autocommit.begin() as connection:
                params = {f"candidate_{name}": value for name, value in node.items()}
                params.update(
                    (f"snapshot_{name}", value) for name, value in snapshot.row_values().items()
                )
                result = await connection.execute(_ANSWER, params)
                return result.scalar_one()
        async with self._engine.begin() as connection:
            snapshot_id = None
            if snapshot is not None:
                result = await connection.execute(_INSERT_SNAPSHOT, snapshot.row_values())
                snapshot_id = result.scalar_one()
            result = await connection.execute(
                _INSERT_NODE, {**node, "prompt_snapshot_id": snapshot_id}
            )
            candidate_id = result.scalar_one()
            await connection.execute(_SET_STATE, {"node_id": user_turn_id, "new_state": "answered"})
        return candidate_id

    async def mark_sent(self, candidate_id: int, external_id: str | None = None) -> None:
        """Mark a candidate as the reply that went out."""
        async with self._autocommit.begin() as connection:
            await connection.execute(_MARK_SENT, {"node_id": candidate_id, "sent_as": external_id})

    async def get_conversation(self, conversation_id: int) -> Conversation | None:
        """One conversation, or ``None``."""
        async with autocommit(self._sessions) as session:
            return await session.get(Conversation, conversation_id)

    async def set_console_thread(self, conversation_id: int, thread_id: str) -> None:
        """Remember the console thread where actors speak for this conversation."""
        async with autocommit(self._sessions) as session:
            await session.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id)
                .values(console_thread_id=thread_id)
            )

    async def conversation_for_thread(self, thread_id: str) -> Conversation | None:
        """The conversation whose console thread this is, or ``None``."""
        async with autocommit(self._sessions) as session:
            return await session.scalar(
                select(Conversation).where(Conversation.console_thread_id == thread_id)
            )

    async def recent_user_lines(
        self, conversation_id: int, before_id: int, limit: int
    ) -> list[str]:
        """The last user messages up to ``before_id``, oldest first (for the console)."""
        async with autocommit(self._sessions) as session:
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

    async def unanswered_user_lines(
        self, conversation_id: int, *, limit: int
    ) -> list[tuple[str, str]]:
        """``(author name, text)`` of the last ``limit`` user turns with no reply stored (turns
        kept silent while an actor holds the conversation), oldest first."""
        async with autocommit(self._sessions) as session:
            rows = (
                await session.execute(
                    select(MessageNode.author_name, MessageNode.content)
                    .where(
                        MessageNode.conversation_id == conversation_id,
                        MessageNode.role == "user",
                        MessageNode.state == "pending",
                    )
                    .order_by(MessageNode.id.desc())
                    .limit(limit)
                )
            ).all()
        return [(name, text) for name, text in reversed(rows)]

    async def latest_console_candidate(self, conversation_id: int) -> int | None:
        """The newest reply of a conversation shown on the actor console, if any."""
        async with autocommit(self._sessions) as session:
            return await session.scalar(
                select(func.max(MessageNode.id)).where(
                    MessageNode.conversation_id == conversation_id,
                    MessageNode.role == "assistant",
                    MessageNode.console_ref.is_not(None),
                )
            )

    async def first_sent_reply(self, user_turn_id: int) -> int | None:
        """The id of the first reply sent for a user turn (later ones replaced it in place:
        a rewrite or a regeneration of a sent reply), or ``None`` if none went out."""
        async with autocommit(self._sessions) as session:
            return await session.scalar(
                select(func.min(MessageNode.id)).where(
                    MessageNode.parent_id == user_turn_id,
                    MessageNode.role == "assistant",
                    MessageNode.state.in_(("sent", "replaced")),
                )
            )

    async def user_ids_named(self, name: str) -> list[str]:
        """The ids of users who wrote turns as ``name``: ``terminal:name`` and any other
        transport's user whose id ends in ``:name`` or whose display name is ``name``."""
        async with autocommit(self._sessions) as session:
            rows = await session.scalars(
                select(MessageNode.author_id)
                .where(
                    MessageNode.role == "user",
                    (MessageNode.author_id.endswith(f":{name}", autoescape=True))
                    | (MessageNode.author_name == name),
                )
                .distinct()
                .order_by(MessageNode.author_id)
            )
            return list(rows)

    async def get_node(self, node_id: int) -> MessageNode | None:
        """One node of the tree, or ``None``."""
        async with autocommit(self._sessions) as session:
            return await session.get(MessageNode, node_id)

    async def get_snapshot(self, snapshot_id: int) -> PromptSnapshot | None:
        """One prompt snapshot, or ``None``."""
        async with autocommit(self._sessions) as session:
            return await session.get(PromptSnapshot, snapshot_id)

    async def delete_data_for_user(self, *, requester: str, user_id: str) -> int:
        """Erase what ``user_id`` said: their turns, the replies to them, the actor events on
        those replies, and their words in the prompt snapshots kept for other turns. Returns
        the number of rows removed or scrubbed.

        One transaction also marks the user erased and leaves trainers their tombstones (see
        :mod:`feedback.erasure`): every record the erased turns could have given, the records
        of other turns whose prompts held the user's words (scrubbed here, so what trainers
        hold of them is stale), and every affected event; leases holding one are revoked.
        """
        removed = 0
        now = datetime.now(UTC)
        async with self._sessions.begin() as session:
            await mark_erased(session, user_id, now)
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
            turns = await _replies_of(session, own_ids)
            reply_ids = [reply for replies in turns.values() for reply, _ in replies]
            snapshot_ids = [
                snapshot for replies in turns.values() for _, snapshot in replies if snapshot
            ]
            erased_events = await _events_on(session, reply_ids, snapshot_ids)
            scrubbed = await self._scrub_snapshots(
                session, conversations, own_texts, exclude=set(snapshot_ids)
            )
            stale = await _turns_using(session, scrubbed, exclude=set(own_ids))
            stale_events = await _events_on(
                session, [reply for replies in stale.values() for reply, _ in replies], scrubbed
            )
            tombstones, revoked = await record_erasure(
                session,
                user_id=user_id,
                turns={
                    turn: [reply for reply, _ in replies]
                    for turn, replies in (turns | stale).items()
                },
                event_ids=erased_events | stale_events,
                now=now,
            )
            for part in chunks(erased_events):
                result = await session.execute(
                    delete(FeedbackEvent).where(FeedbackEvent.id.in_(part))
                )
                removed += result.rowcount or 0
            for part in chunks(reply_ids + own_ids):
                result = await session.execute(delete(MessageNode).where(MessageNode.id.in_(part)))
                removed += result.rowcount or 0
            for part in chunks(set(snapshot_ids)):
                result = await session.execute(
                    delete(PromptSnapshot).where(PromptSnapshot.id.in_(part))
                )
                removed += result.rowcount or 0
            removed += len(scrubbed)
        _log.info(
            "erased %d rows for %s (requested by %s); %d tombstones for trainers, "
            "%d leases revoked",
            removed,
            user_id,
            requester,
            tombstones,
            revoked,
        )
        return removed

    async def _scrub_snapshots(
        self, session: AsyncSession, conversations: set[int], texts: set[str], *, exclude: set[int]
    ) -> set[int]:
        """Replace the user's words inside the snapshots of their conversations (but
        ``exclude``, about to be deleted): user messages and context messages (memories of
        another speaker that quote them) that hold them; the ids of the snapshots changed."""
        snapshots = (
            await session.scalars(
                select(PromptSnapshot).where(
                    PromptSnapshot.id.in_(
                        select(MessageNode.prompt_snapshot_id).where(
                            MessageNode.conversation_id.in_(conversations)
                        )
                    )
                )
            )
        ).all()
        scrubbed: set[int] = set()
        for snapshot in snapshots:
            if snapshot.id in exclude:
                continue
            messages = [
                {**message, "content": ERASED_TEXT} if _holds_erased(message, texts) else message
                for message in snapshot.messages
            ]
            if messages != snapshot.messages:
                snapshot.messages = messages
                scrubbed.add(snapshot.id)
            if snapshot.context is not None and _mentions_any(snapshot.context, texts):
                snapshot.context = ERASED_TEXT
                scrubbed.add(snapshot.id)
        await session.flush()
        return scrubbed


async def _replies_of(
    session: AsyncSession, turn_ids: Sequence[int]
) -> dict[int, list[tuple[int, int | None]]]:
    """Each user turn with its assistant replies as ``(id, prompt snapshot id)``."""
    turns: dict[int, list[tuple[int, int | None]]] = {turn: [] for turn in turn_ids}
    for part in chunks(turn_ids):
        rows = await session.execute(
            select(MessageNode.parent_id, MessageNode.id, MessageNode.prompt_snapshot_id).where(
                MessageNode.parent_id.in_(part), MessageNode.role == "assistant"
            )
        )
        for parent, reply, snapshot in rows:
            turns[parent].append((reply, snapshot))
    return turns


async def _turns_using(
    session: AsyncSession, snapshot_ids: set[int], *, exclude: set[int]
) -> dict[int, list[tuple[int, int | None]]]:
    """The user turns (but ``exclude``) with a reply built on one of ``snapshot_ids``, with
    all their replies."""
    parents: set[int] = set()
    for part in chunks(snapshot_ids):
        parents.update(
            await session.scalars(
                select(MessageNode.parent_id).where(
                    MessageNode.prompt_snapshot_id.in_(part),
                    MessageNode.role == "assistant",
                    MessageNode.parent_id.is_not(None),
                )
            )
        )
    return await _replies_of(session, sorted(parents - exclude))


async def _events_on(
    session: AsyncSession, reply_ids: Sequence[int], snapshot_ids: Iterable[int]
) -> set[int]:
    """Feedback events about one of ``reply_ids`` (as candidate or result) or built on one of
    ``snapshot_ids``."""
    events: set[int] = set()
    for part in chunks(reply_ids):
        events.update(
            await session.scalars(
                select(FeedbackEvent.id).where(
                    or_(FeedbackEvent.candidate_id.in_(part), FeedbackEvent.result_id.in_(part))
                )
            )
        )
    for part in chunks(snapshot_ids):
        events.update(
            await session.scalars(
                select(FeedbackEvent.id).where(FeedbackEvent.prompt_snapshot_id.in_(part))
            )
        )
    return events


def _mentions_any(content: str, texts: set[str]) -> bool:
    return any(text and text in content for text in texts)


def _holds_erased(message: dict[str, Any], texts: set[str]) -> bool:
    """Whether a prompt message quotes an erased user: a user message, or a context message
    (what memory recalled; the column :attr:`PromptSnapshot.context` holds the same text)."""
    if message.get("role") != "user" and message.get("name") != CONTEXT_NAME:
        return False
    return _mentions_any(message.get("content", ""), texts)
