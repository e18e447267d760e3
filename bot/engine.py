"""The conversation engine: one incoming message in, one persona reply out.

It knows nothing of Discord or terminals. A transport builds an :class:`IncomingMessage`, awaits
:meth:`ConversationEngine.respond` and hands the :class:`Reply` to the decision service
(:mod:`bot.decisions`), which sends or holds it, marks it sent and remembers it. On the way the
engine resolves the persona, loads the conversation's history, recalls memories, builds the
prompt, generates, cleans up, checks the reply and stores the user turn and the reply with the
exact prompt that produced it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from bot.faults import crash_point
from bot.llm import GenerationError, describe_model, generate
from bot.locks import KeyedLocks
from bot.moderation import Risk, RiskAssessor
from bot.text import (
    clean_reply,
    display_name,
    neutralise_user_text,
    normalise_incoming,
    split_message,
)
from feedback.store import (
    CONTEXT_NAME,
    EXAMPLE_NAMES,
    EXAMPLES_NAMED_PARAM,
    NewUserTurn,
    SnapshotData,
    examples_named,
    said_in,
)
from personas import approx_tokens

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence

    from langchain_core.language_models import BaseChatModel

    from feedback.models import MessageNode
    from feedback.store import ConversationStore, HistoryTurn
    from memory import MemoryHit
    from personas import Persona, PersonaRegistry

__all__ = [
    "AlreadyHandled",
    "Aside",
    "ConversationEngine",
    "EngineLimits",
    "IncomingMessage",
    "MemoryPort",
    "Refusal",
    "Reply",
    "TakenOver",
    "UserDataOwner",
]

_log = logging.getLogger(__name__)

#: Seconds within which a typing user's memory is not warmed again (Chroma keeps a loaded
#: scope until ``memory.index_cache_scopes`` others push it out).
WARM_AGAIN_SECONDS = 300.0
#: Users remembered as warmed (the oldest are forgotten first).
_WARMED_KEPT = 4096
#: Conversations whose history window start is kept (the oldest are forgotten first).
_WINDOWS_KEPT = 4096
#: Tokens a chat template adds around each message, counted in every prompt budget: ChatML
#: wraps a message in ``<|im_start|>role\n`` and ``<|im_end|>\n`` (five), rounded up for
#: templates that add more. Kept context messages make a prompt's messages many.
_MESSAGE_TOKENS = 6
_LORE_HEADER = "What you know about this:\n"
_MEMORY_HEADER = "What you remember:\n"


class UserDataOwner(Protocol):
    """The deletion contract every store of personal data answers (see Red-DiscordBot)."""

    async def delete_data_for_user(self, *, requester: str, user_id: str) -> int: ...


class MemoryPort(UserDataOwner, Protocol):
    """What the engine needs from vector memory (implemented by :mod:`memory`)."""

    async def recall(
        self,
        *,
        persona: str,
        user_id: str,
        query_texts: Sequence[str],
        k: int,
        token_budget: int,
        shown_turns: Collection[str] = (),
    ) -> list[MemoryHit]: ...

    async def remember_turn(
        self,
        *,
        persona: str,
        user_id: str,
        conversation_id: str,
        turn_id: str,
        role: Literal["user", "assistant"],
        text: str,
        speaker: str,
    ) -> Any: ...

    async def check_reply(self, *, persona: str, user_id: str, reply: str) -> list[Any]: ...

    async def sync_persona(
        self, persona: str, *, canon_facts: Sequence[str], voice_examples: Sequence[str]
    ) -> None: ...

    async def preload(self, scopes: Iterable[tuple[str, str]], *, limit: int = ...) -> int: ...

    async def replace_turn(
        self, *, persona: str, user_id: str, turn_id: str, text: str
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A message from a user, as any transport sees it.

    ``scope`` names the conversation within the transport (a DM, a channel, a terminal user);
    with ``persona`` it identifies one conversation.
    """

    transport: str
    scope: str
    user_id: str
    user_name: str
    text: str
    persona: str
    external_id: str | None = None
    #: The server the conversation belongs to (its consent default applies); ``None`` for DMs.
    guild_key: str | None = None
    #: The transport may have seen this message before (a catch-up after a restart, a retry
    #: after an outage): the engine looks it up by ``external_id`` beyond the recent history.
    redelivery: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """The engine declined a message before generation; ``notice`` says why, politely."""

    reason: Literal["empty", "too_long"]
    notice: str


@dataclass(frozen=True, slots=True)
class AlreadyHandled:
    """The message was stored before and its reply went out or waits for an actor."""

    user_turn_id: int


@dataclass(frozen=True, slots=True)
class TakenOver:
    """An actor has taken the conversation over: the model stays silent and nothing was stored
    (the transport stores and shows the turn, see :meth:`ConversationEngine.record_user_turn`)."""

    conversation_id: int


@dataclass(frozen=True, slots=True)
class Reply:
    """A stored candidate reply, split into parts that fit the transport's limit."""

    persona: str
    text: str
    parts: list[str]
    incoming: IncomingMessage
    conversation_id: int
    user_turn_id: int
    candidate_id: int
    fallback: bool = False
    flags: list[dict[str, Any]] = field(default_factory=list)
    memories: list[str] = field(default_factory=list)
    risk: Risk = field(default_factory=lambda: Risk(hold=False, urgent=False, reasons=()))
    #: Stored before a restart and maybe already sent: deliver it idempotently.
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class Aside:
    """A reply given in a side branch of a conversation (:meth:`ConversationEngine.answer_aside`):
    checked like a turn's reply, with the prompt that produced it, and stored nowhere."""

    persona: str
    text: str
    incoming: IncomingMessage
    conversation_id: int
    fallback: bool = False
    flags: list[dict[str, Any]] = field(default_factory=list)
    memories: list[str] = field(default_factory=list)
    risk: Risk = field(default_factory=lambda: Risk(hold=False, urgent=False, reasons=()))
    #: The prompt messages as a snapshot stores them (role, content, name).
    prompt: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Answer:
    """What :meth:`ConversationEngine._answer` produced, before anything is stored."""

    messages: list[BaseMessage]
    memories: list[str]
    text: str
    fallback: bool
    flags: list[dict[str, Any]]
    risk: Risk
    #: The late ``context`` message's text (lore and memories), kept with the snapshot so later
    #: prompts show it in place; ``None`` when the turn had none.
    context: str | None = None


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """Bounds the engine enforces. ``max_reply_chars`` is a part's size (Discord: 2,000)."""

    max_message_chars: int = 4000
    max_reply_chars: int = 2000
    history_turns: int = 40
    context_tokens: int = 2048
    max_new_tokens: int = 160
    timeout_s: float = 60.0
    recall_k: int = 6
    recall_token_budget: int = 200
    #: Where the lore-and-memories message goes, in messages from the end (0: last).
    context_depth: int = 1


def _user_line(name: str, text: str, group: bool) -> str:
    safe = neutralise_user_text(text)
    return f"{display_name(name)}: {safe}" if group else safe


@functools.lru_cache(maxsize=1024)
def _head_messages(persona: Persona, user_name: str) -> tuple[BaseMessage, ...]:
    """The card's system prompt and example dialogue as messages, memoised per persona version
    and user like :func:`_history_message` (shared: nothing may change them)."""
    system = SystemMessage(content=persona.system_prompt(user_name))
    return (system, *_example_messages(persona, user_name))


@functools.lru_cache(maxsize=8192)
def _history_message(
    role: str, author_name: str, content: str, group: bool
) -> tuple[BaseMessage, int]:
    """A stored turn as a prompt message, with its token estimate. Memoised on its text: every
    turn re-reads up to ``history_turns`` stored turns, and building a message costs more than
    the rest of the prompt. The messages are shared, so nothing may change them."""
    if role == "user":
        message: BaseMessage = HumanMessage(content=_user_line(author_name, content, group))
    else:
        message = AIMessage(content=content)
    return message, approx_tokens(str(message.content)) + _MESSAGE_TOKENS


class ConversationEngine:
    """Turns incoming messages into stored, persona-consistent replies.

    Messages of one conversation are answered one at a time, in arrival order; different
    conversations run concurrently.
    """

    def __init__(
        self,
        *,
        personas: PersonaRegistry,
        store: ConversationStore,
        model: BaseChatModel,
        memory: MemoryPort | None = None,
        limits: EngineLimits | None = None,
    ) -> None:
        self.personas = personas
        self.store = store
        self.model = model
        self.memory = memory
        self.limits = limits or EngineLimits()
        self._model_name, self._model_params = describe_model(model)
        self.risk = RiskAssessor()
        self._locks: KeyedLocks[tuple[str, str, str]] = KeyedLocks()
        #: When each (persona, user) memory was last warmed, oldest first (see warm_memory).
        self._warmed: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._warming = False
        #: Per conversation, the id of the first history turn in its prompt (see build_prompt).
        self._window_starts: OrderedDict[int, int] = OrderedDict()

    def check(self, text: str) -> str | Refusal:
        """Normalise ``text`` or say why it cannot be answered (nothing is stored either way)."""
        cleaned = normalise_incoming(text)
        if not cleaned:
            return Refusal("empty", "Say something and I'll answer.")
        if len(cleaned) > self.limits.max_message_chars:
            return Refusal(
                "too_long",
                f"That message is {len(cleaned):,} characters; the limit is "
                f"{self.limits.max_message_chars:,}. Please send it in shorter pieces.",
            )
        return cleaned

    async def respond(
        self,
        incoming: IncomingMessage,
        *,
        on_token: Callable[[str], Awaitable[None]] | None = None,
    ) -> Reply | Refusal | AlreadyHandled | TakenOver:
        """Answer ``incoming``: a stored :class:`Reply`, a :class:`Refusal` for bad input, or
        :class:`TakenOver` (nothing stored) while an actor holds the conversation.

        Idempotent on ``incoming.external_id``: a message seen before is not stored twice. If
        its reply was stored but not sent (a crash in between), that reply is returned to be
        delivered; if no reply was stored, the stored turn is answered now; if the reply went
        out or is held for an actor, :class:`AlreadyHandled` is returned.

        Raises :class:`personas.UnknownPersonaError` for an unknown persona. Model failures do not
        raise: they become the persona's fallback line, flagged for actors.
        """
        checked = self.check(incoming.text)
        if isinstance(checked, Refusal):
            return checked
        persona = self.personas.get(incoming.persona)
        key = (incoming.transport, incoming.scope, persona.name)
        async with self._locks[key]:
            return await self._respond_locked(incoming, persona, checked, on_token)

    async def _respond_locked(
        self,
        incoming: IncomingMessage,
        persona: Persona,
        text: str,
        on_token: Callable[[str], Awaitable[None]] | None,
    ) -> Reply | AlreadyHandled | TakenOver:
        conversation_id = await self.store.conversation_id(
            incoming.transport, incoming.scope, persona.name, guild_key=incoming.guild_key
        )
        new_turn = NewUserTurn(
            incoming.user_id, incoming.user_name, text, external_id=incoming.external_id
        )
        # A redelivery may be older than the history: it is looked up before anything is stored.
        opened = await self.store.open_turn(
            conversation_id,
            self.limits.history_turns,
            None if incoming.redelivery else new_turn,
        )
        if opened.taken_over:
            return TakenOver(conversation_id)
        history = opened.history
        if opened.user_turn_id is not None:
            user_turn_id = opened.user_turn_id
        elif (seen := await self._seen_turn(conversation_id, incoming, history)) is not None:
            answers = await self.store.answers_to(seen.id)
            if any(node.state != "candidate" for node in answers):
                return AlreadyHandled(seen.id)
            if answers:
                return self._stored_reply(incoming, persona, seen, answers[-1])
            _log.info("answering stored turn %s (its reply was never stored)", seen.id)
            history = await self.store.history(
                conversation_id, self.limits.history_turns, before_id=seen.id
            )
            user_turn_id = seen.id
            text = seen.content
        else:
            user_turn_id = await self._add_turn(conversation_id, history, incoming, text)
        crash_point("turn.before_generate")
        answer = await self._answer(
            incoming, persona, text, history, conversation_id, seed=user_turn_id, on_token=on_token
        )
        parts = split_message(answer.text, self.limits.max_reply_chars)
        reply_text = "\n".join(parts) if len(parts) > 1 else answer.text
        snapshot = SnapshotData(
            messages=[_message_dict(message) for message in answer.messages],
            persona=persona.name,
            persona_version=persona.version_hash,
            model_name=self._model_name,
            params={**self._model_params, EXAMPLES_NAMED_PARAM: True},
            memories=answer.memories,
            context=answer.context,
        )
        crash_point("turn.before_commit")
        candidate_id = await self.store.add_candidate(
            conversation_id=conversation_id,
            user_turn_id=user_turn_id,
            persona=persona.name,
            text=reply_text,
            origin="fallback" if answer.fallback else "model",
            snapshot=snapshot,
            flags=answer.flags,
        )
        crash_point("turn.after_commit")
        return Reply(
            persona=persona.name,
            text=reply_text,
            parts=parts,
            incoming=replace(incoming, text=text),
            conversation_id=conversation_id,
            user_turn_id=user_turn_id,
            candidate_id=candidate_id,
            fallback=answer.fallback,
            flags=answer.flags,
            memories=answer.memories,
            risk=answer.risk,
        )

    async def answer_aside(self, incoming: IncomingMessage) -> Aside | Refusal | TakenOver:
        """Answer ``incoming`` in a side branch of its conversation: nothing is stored.

        The prompt is built as for a turn (history window, lore, recalled memories) and the
        reply is checked the same way (consistency flags, risk), but neither the message nor
        the reply is stored, sent or remembered, and the conversation's history window does
        not move: the next turn sees the conversation as if the aside never happened. Meant
        for evaluation (the stability harness asks its probes this way, as Li et al. 2024 ask
        theirs); the conversation row itself is created if it did not exist yet.
        """
        checked = self.check(incoming.text)
        if isinstance(checked, Refusal):
            return checked
        persona = self.personas.get(incoming.persona)
        key = (incoming.transport, incoming.scope, persona.name)
        async with self._locks[key]:
            conversation_id = await self.store.conversation_id(*key, guild_key=incoming.guild_key)
            opened = await self.store.open_turn(conversation_id, self.limits.history_turns, None)
            if opened.taken_over:
                return TakenOver(conversation_id)
            kept_start = self._window_starts.get(conversation_id)
            try:
                answer = await self._answer(
                    incoming, persona, checked, opened.history, conversation_id, seed=0
                )
            finally:  # the aside must not move the window the conversation's turns share
                if kept_start is None:
                    self._window_starts.pop(conversation_id, None)
                else:
                    self._window_starts[conversation_id] = kept_start
        return Aside(
            persona=persona.name,
            text=answer.text,
            incoming=replace(incoming, text=checked),
            conversation_id=conversation_id,
            fallback=answer.fallback,
            flags=answer.flags,
            memories=answer.memories,
            risk=answer.risk,
            prompt=[_message_dict(message) for message in answer.messages],
        )

    async def _answer(
        self,
        incoming: IncomingMessage,
        persona: Persona,
        text: str,
        history: Sequence[HistoryTurn],
        conversation_id: int,
        *,
        seed: int,
        on_token: Callable[[str], Awaitable[None]] | None = None,
    ) -> _Answer:
        """Recall, build the prompt, generate, clean up and check one reply to ``text`` after
        ``history``; a model failure becomes the persona's fallback line (picked by ``seed``)."""
        flags: list[dict[str, Any]] = []
        group = incoming.scope.startswith("channel:")
        window = self.history_window(
            persona,
            user_name=incoming.user_name,
            history=history,
            text=text,
            group=group,
            conversation_id=conversation_id,
            user_id=incoming.user_id,
        )
        memories = await self._recall(persona, incoming, text, window, flags)
        messages, context = self._layout(
            persona,
            user_name=incoming.user_name,
            user_id=incoming.user_id,
            history=history,
            text=text,
            memories=memories,
            group=group,
            window=window,
        )
        fallback = False
        try:
            result = await generate(
                self.model,
                messages,
                timeout_s=self.limits.timeout_s,
                on_token=on_token,
            )
            reply_text = clean_reply(
                result.text, speaker=persona.name, others=(incoming.user_name,)
            )
            if not reply_text:
                raise GenerationError("the reply was empty after clean-up", reason="empty")
        except GenerationError as error:
            _log.warning("generation failed for %s (%s): %s", persona.name, error.reason, error)
            reply_text = persona.fallback_line(seed=seed)
            fallback = True
            flags.append({"kind": "generation_failed", "reason": error.reason})
        if not fallback:
            flags.extend(await self._check(persona, incoming.user_id, reply_text))
        risk = self.risk.assess(
            text, flags=flags, actor_only_topics=persona.greenroom.actor_only_topics
        )
        if risk.hold:
            flags.append(risk.as_flag())
        return _Answer(
            messages,
            memories,
            reply_text,
            fallback,
            flags,
            risk,
            context=None if context is None else str(context.content),
        )

    async def _seen_turn(
        self, conversation_id: int, incoming: IncomingMessage, history: Sequence[HistoryTurn]
    ) -> HistoryTurn | MessageNode | None:
        """The stored turn of a message seen before: from the history, or looked up when the
        transport says it may be a redelivery."""
        if incoming.external_id is None:
            return None
        if (turn := said_in(history, incoming.external_id)) is not None:
            return turn
        if not incoming.redelivery:
            return None
        return await self.store.find_user_turn(conversation_id, incoming.external_id)

    def _stored_reply(
        self,
        incoming: IncomingMessage,
        persona: Persona,
        turn: HistoryTurn | MessageNode,
        candidate: MessageNode,
    ) -> Reply:
        """A reply stored before a crash, rebuilt for delivery (its risk from its flags)."""
        flags = list(candidate.flags or [])
        _log.info("delivering stored candidate %s (stored before a restart)", candidate.id)
        return Reply(
            persona=persona.name,
            text=candidate.content,
            parts=split_message(candidate.content, self.limits.max_reply_chars),
            incoming=replace(incoming, text=turn.content),
            conversation_id=candidate.conversation_id,
            user_turn_id=turn.id,
            candidate_id=candidate.id,
            fallback=candidate.origin == "fallback",
            flags=flags,
            risk=Risk.from_flags(flags),
            redelivered=True,
        )

    async def record_user_turn(self, incoming: IncomingMessage) -> int | Refusal | AlreadyHandled:
        """Store a user turn without answering it (an actor has taken the conversation over).

        Idempotent on ``incoming.external_id``: a message seen before is not stored again
        (:class:`AlreadyHandled`).
        """
        checked = self.check(incoming.text)
        if isinstance(checked, Refusal):
            return checked
        persona = self.personas.get(incoming.persona)
        key = (incoming.transport, incoming.scope, persona.name)
        async with self._locks[key]:
            conversation_id = await self.store.conversation_id(*key, guild_key=incoming.guild_key)
            history = await self.store.history(conversation_id, self.limits.history_turns)
            seen = await self._seen_turn(conversation_id, incoming, history)
            if seen is not None:
                return AlreadyHandled(seen.id)
            return await self._add_turn(conversation_id, history, incoming, checked)

    async def _add_turn(
        self,
        conversation_id: int,
        history: Sequence[HistoryTurn],
        incoming: IncomingMessage,
        text: str,
    ) -> int:
        """Store what the user said under the conversation's last turn."""
        return await self.store.add_user_turn(
            conversation_id=conversation_id,
            parent_id=history[-1].id if history else None,
            user_id=incoming.user_id,
            user_name=incoming.user_name,
            text=text,
            external_id=incoming.external_id,
        )

    async def regenerate(
        self, candidate_id: int, *, user_id: str, user_name: str
    ) -> tuple[str, SnapshotData, list[dict[str, Any]]]:
        """A new candidate for the same prompt as ``candidate_id`` (a reply to ``user_id``,
        shown as ``user_name``): text, snapshot and flags. Nothing is stored.

        Raises :class:`LookupError` when the prompt is gone (erased) and
        :class:`~bot.llm.GenerationError` when the model fails (the actor is told).
        """
        node = await self.store.get_node(candidate_id)
        if node is None or node.prompt_snapshot_id is None:
            raise LookupError("This reply has no stored prompt to regenerate from.")
        snapshot = await self.store.get_snapshot(node.prompt_snapshot_id)
        if snapshot is None:
            raise LookupError("This reply's prompt was erased; it cannot be regenerated.")
        persona = self.personas.get(snapshot.persona)
        messages = [_to_message(item) for item in snapshot.messages]
        result = await generate(self.model, messages, timeout_s=self.limits.timeout_s)
        text = clean_reply(result.text, speaker=persona.name, others=(display_name(user_name),))
        if not text:
            raise GenerationError("the new candidate was empty", reason="empty")
        text = "\n".join(split_message(text, self.limits.max_reply_chars))
        flags = await self._check(persona, user_id, text)
        fresh = SnapshotData(
            messages=list(snapshot.messages),
            persona=snapshot.persona,
            persona_version=snapshot.persona_version,
            model_name=self._model_name,
            # The same prompt: its examples are named only if the original's were.
            params={
                **self._model_params,
                EXAMPLES_NAMED_PARAM: examples_named(snapshot.messages, snapshot.params),
            },
            memories=list(snapshot.memories),
            context=snapshot.context,
        )
        return text, fresh, flags

    async def sync_personas(self) -> None:
        """Give memory every persona's canon facts and voice (idempotent; at start-up)."""
        if self.memory is None:
            return
        for persona in self.personas:
            voice = [line for role, line in persona.example_dialogue("you") if role == "assistant"]
            await self.memory.sync_persona(
                persona.name,
                canon_facts=persona.canon_as_self(),
                voice_examples=voice or [persona.greeting("you")],
            )

    async def preload_memory(self, *, days: float = 7, limit: int = 128) -> int:
        """Warm the memories of the users who spoke in the last ``days`` (most recent first, at
        most ``limit``), so their first recall after a start is not a cold one; returns how many
        scopes were loaded. Meant as a background task at start-up."""
        if self.memory is None:
            return 0
        since = datetime.now(UTC) - timedelta(days=days)
        speakers = await self.store.recent_speakers(since, limit)
        return await self.memory.preload(speakers, limit=limit)

    async def warm_memory(self, *, persona_name: str, user_id: str) -> bool:
        """Load what ``persona_name`` remembers of ``user_id`` ahead of their message (they
        are typing), so the recall of that turn is not a cold one; returns whether it loaded.

        Cheap to call on every typing signal: a scope warmed in the last
        :data:`WARM_AGAIN_SECONDS` is skipped, and while one warm-up runs, others are dropped
        (a burst of typing never keeps the memory workers from live turns). Never raises:
        a failure costs only the head start.
        """
        if self.memory is None or self.limits.recall_k == 0 or self._warming:
            return False
        key = (persona_name.casefold(), user_id)
        now = time.monotonic()
        if now - self._warmed.get(key, -WARM_AGAIN_SECONDS) < WARM_AGAIN_SECONDS:
            return False
        self._warmed[key] = now
        self._warmed.move_to_end(key)
        while len(self._warmed) > _WARMED_KEPT:
            self._warmed.popitem(last=False)
        self._warming = True
        try:
            return await self.memory.preload([(persona_name, user_id)], limit=1) > 0
        except Exception as error:
            _log.debug("warming the memory of %s failed: %s", user_id, error)
            return False
        finally:
            self._warming = False

    def build_prompt(
        self,
        persona: Persona,
        *,
        user_name: str,
        history: Sequence[HistoryTurn],
        text: str,
        memories: Sequence[str] = (),
        group: bool = False,
        conversation_id: int | None = None,
        window: Sequence[HistoryTurn] | None = None,
        user_id: str | None = None,
    ) -> list[BaseMessage]:
        """The messages for the model, fitted to its context window.

        Laid out so that each turn's prompt starts with the whole of the previous one, which
        the model servers' prompt caches reuse (llama.cpp, vLLM): the card's system prompt, its
        example dialogue (named ``example_user``/``example_assistant``, as SillyTavern marks
        examples), the history window, the new message. What changes every turn, triggered
        lore and recalled ``memories``, is one system message named ``context`` placed
        ``limits.context_depth`` messages from the end (1: just before the new message). The
        context messages of the speaker's earlier turns (``user_id``'s; none without it) stay
        where they were (``HistoryTurn.context``, read with the history), and a lore or memory
        line one of them still shows is not repeated, so a follow-up only adds its reply, its
        context message and its message. Other speakers' context messages are left out: their
        memories are theirs (in a group channel, a prompt of each speaker's own).

        With a ``conversation_id`` the history window keeps its first turn while it fits, and
        restarts at half the budget when it no longer does, so its prefix changes once in many
        turns rather than every turn. In a group channel each user line carries the speaker's
        name. ``window``: the turns :meth:`history_window` chose, when the caller has them.
        """
        if window is None:
            window = self.history_window(
                persona,
                user_name=user_name,
                history=history,
                text=text,
                group=group,
                conversation_id=conversation_id,
                user_id=user_id,
            )
        messages, _ = self._layout(
            persona,
            user_name=user_name,
            user_id=user_id,
            history=history,
            text=text,
            memories=memories,
            group=group,
            window=window,
        )
        return messages

    def _layout(
        self,
        persona: Persona,
        *,
        user_name: str,
        user_id: str | None,
        history: Sequence[HistoryTurn],
        text: str,
        memories: Sequence[str],
        group: bool,
        window: Sequence[HistoryTurn],
    ) -> tuple[list[BaseMessage], SystemMessage | None]:
        """:meth:`build_prompt` of a chosen ``window``, and the turn's own context message."""
        user_name = display_name(user_name)
        kept = _kept_contexts(window, user_id)
        shown = "\n" + "\n".join(str(message.content) for _, message in kept) + "\n"
        lore = [
            line
            for line in self._lore(persona, user_name, history, text)
            if f"\n- {line}\n" not in shown
        ]
        recalled = [line for line in memories if f"\n{line}\n" not in shown]
        context = _context_message(lore, recalled)
        real = [_history_message(t.role, t.author_name, t.content, group)[0] for t in window]
        real.append(HumanMessage(content=_user_line(user_name, text, group)))
        depth = self.limits.context_depth
        placed: dict[int, list[BaseMessage]] = {}
        for anchor, message in kept:
            placed.setdefault(max(0, anchor + 1 - depth), []).append(message)
        if context is not None:
            placed.setdefault(max(0, len(real) - depth), []).append(context)
        chat: list[BaseMessage] = []
        for index, message in enumerate(real):
            chat += placed.get(index, ())
            chat.append(message)
        chat += placed.get(len(real), ())
        return self._head(persona, user_name) + chat, context

    def history_window(
        self,
        persona: Persona,
        *,
        user_name: str,
        history: Sequence[HistoryTurn],
        text: str,
        group: bool = False,
        conversation_id: int | None = None,
        user_id: str | None = None,
    ) -> list[HistoryTurn]:
        """The history turns the prompt carries, with the context messages of ``user_id``'s
        turns kept beside them: what fits beside the card, the new message and the context
        message at its largest (triggered lore and the whole recall budget), so the window
        does not move with what memory recalls."""
        user_name = display_name(user_name)
        lore = self._lore(persona, user_name, history, text)
        reserved = (
            (self.limits.recall_token_budget if self.memory is not None else 0)
            + sum(approx_tokens(line) + 2 for line in lore)
            + approx_tokens(_LORE_HEADER + _MEMORY_HEADER)
            + _MESSAGE_TOKENS
        )
        fixed = [
            *self._head(persona, user_name),
            HumanMessage(content=_user_line(user_name, text, group)),
        ]
        budget = (
            self.limits.context_tokens
            - self.limits.max_new_tokens
            - _MESSAGE_TOKENS  # the reply's own header
            - reserved
            - sum(approx_tokens(str(message.content)) + _MESSAGE_TOKENS for message in fixed)
        )
        return self._history_window(conversation_id, history, budget, group, user_id)

    @staticmethod
    def _lore(
        persona: Persona, user_name: str, history: Sequence[HistoryTurn], text: str
    ) -> list[str]:
        """Lore entries triggered by the last four turns and the new message."""
        recent = [turn.content for turn in history[-4:]] + [text]
        return persona.triggered_lore(recent, user_name)

    @staticmethod
    def _head(persona: Persona, user_name: str) -> list[BaseMessage]:
        """The card's system prompt and its example dialogue: the same every turn."""
        return list(_head_messages(persona, user_name))

    def _history_window(
        self,
        conversation_id: int | None,
        history: Sequence[HistoryTurn],
        budget: int,
        group: bool,
        user_id: str | None,
    ) -> list[HistoryTurn]:
        """The history turns that fit ``budget`` tokens (with the context messages of
        ``user_id``'s turns), starting with a user turn."""
        messages = [
            _history_message(turn.role, turn.author_name, turn.content, group) for turn in history
        ]
        if user_id is not None and any(turn.context for turn in history):
            speakers = {turn.id: turn.author_id for turn in history if turn.role == "user"}
            messages = [
                (message, tokens + _kept_message(turn.context)[1])
                if turn.context and speakers.get(turn.parent_id or 0) == user_id
                else (message, tokens)
                for (message, tokens), turn in zip(messages, history, strict=True)
            ]
        kept_start = self._window_starts.get(conversation_id) if conversation_id else None
        start = next((i for i, turn in enumerate(history) if turn.id == kept_start), None)
        if start is None or sum(tokens for _, tokens in messages[start:]) > budget:
            # A new window: the newest turns within the budget, or within half of the budget
            # and of the turns read for a conversation whose window is kept.
            limit = budget // 2 if conversation_id else budget
            count = self.limits.history_turns // 2 if conversation_id else len(history)
            start, used = len(history), 0
            while start > 0 and len(history) - start < count:
                used += messages[start - 1][1]
                if used > limit:
                    break
                start -= 1
        # A window that starts with the persona's line reads as a continuation; skip it.
        while start < len(history) and history[start].role != "user":
            start += 1
        if conversation_id and start < len(history):
            self._window_starts[conversation_id] = history[start].id
            self._window_starts.move_to_end(conversation_id)
            while len(self._window_starts) > _WINDOWS_KEPT:
                self._window_starts.popitem(last=False)
        return list(history[start:])

    async def _recall(
        self,
        persona: Persona,
        incoming: IncomingMessage,
        text: str,
        window: Sequence[HistoryTurn],
        flags: list[dict[str, Any]],
    ) -> list[str]:
        """Prompt lines of what memory recalls for ``text``: not the turns ``window`` shows
        (memory is for what fell out of the window)."""
        if self.memory is None or self.limits.recall_k == 0:
            return []
        from memory import format_memory_lines

        try:
            hits = await self.memory.recall(
                persona=persona.name,
                user_id=incoming.user_id,
                query_texts=[text],
                k=self.limits.recall_k,
                token_budget=self.limits.recall_token_budget,
                shown_turns=[str(turn.id) for turn in window],
            )
        except Exception as error:  # memory must never cost the user their reply
            _memory_failed("recall failed; answering without memories", error)
            flags.append({"kind": "memory_unavailable", "error": str(error)[:200]})
            return []
        return format_memory_lines(hits)

    async def _check(self, persona: Persona, user_id: str, reply: str) -> list[dict[str, Any]]:
        """Consistency flags of ``reply`` against the card, the persona's past lines and what
        ``user_id`` told it."""
        if self.memory is None:
            return []
        try:
            found = await self.memory.check_reply(
                persona=persona.name, user_id=user_id, reply=reply
            )
        except Exception as error:
            _memory_failed("consistency check failed", error)
            return [{"kind": "check_unavailable", "error": str(error)[:200]}]
        return [_flag_dict(flag) for flag in found]

    async def delete_data_for_user(self, *, requester: str, user_id: str) -> int:
        """Erase everything ``user_id`` is remembered by, in every store that holds it."""
        owners: list[UserDataOwner] = [self.store]
        if self.memory is not None:
            owners.append(self.memory)
        removed = 0
        for owner in owners:
            removed += await owner.delete_data_for_user(requester=requester, user_id=user_id)
        return removed


def _memory_failed(what: str, error: Exception) -> None:
    """One warning line per failure (a Chroma outage fails every turn three ways); the
    traceback only at DEBUG."""
    _log.warning("memory: %s: %s: %s", what, type(error).__name__, str(error)[:200])
    _log.debug("memory failure", exc_info=error)


def _example_messages(persona: Persona, user_name: str) -> list[BaseMessage]:
    """The card's example dialogue as named messages (never mistaken for real turns)."""
    return [
        HumanMessage(content=line, name=EXAMPLE_NAMES["user"])
        if role == "user"
        else AIMessage(content=line, name=EXAMPLE_NAMES["assistant"])
        for role, line in persona.example_dialogue(user_name)
    ]


@functools.lru_cache(maxsize=4096)
def _kept_message(content: str) -> tuple[SystemMessage, int]:
    """An earlier turn's context message, with its token estimate (memoised like
    :func:`_history_message`: the messages are shared, so nothing may change them)."""
    return SystemMessage(content=content, name=CONTEXT_NAME), approx_tokens(
        content
    ) + _MESSAGE_TOKENS


def _kept_contexts(
    window: Sequence[HistoryTurn], user_id: str | None
) -> list[tuple[int, SystemMessage]]:
    """The context messages the replies in ``window`` to ``user_id``'s turns were generated
    with, each with the index in ``window`` of the user turn it was built for (one per user
    turn; none for a turn the window does not show, nor without ``user_id``)."""
    index = {
        turn.id: i
        for i, turn in enumerate(window)
        if turn.role == "user" and user_id is not None and turn.author_id == user_id
    }
    kept: list[tuple[int, SystemMessage]] = []
    anchors: set[int] = set()
    for turn in window:
        anchor = index.get(turn.parent_id) if turn.parent_id is not None else None
        if turn.role != "assistant" or not turn.context or anchor is None or anchor in anchors:
            continue
        anchors.add(anchor)
        kept.append((anchor, _kept_message(turn.context)[0]))
    return kept


def _context_message(lore: Sequence[str], memories: Sequence[str]) -> SystemMessage | None:
    """Triggered lore and recalled memories as one system message, if there are any."""
    parts = []
    if lore:
        parts.append(_LORE_HEADER + "\n".join(f"- {line}" for line in lore))
    if memories:
        parts.append(_MEMORY_HEADER + "\n".join(memories))
    return SystemMessage(content="\n\n".join(parts), name=CONTEXT_NAME) if parts else None


def _to_message(item: dict[str, str]) -> BaseMessage:
    kind = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}[item["role"]]
    return kind(content=item["content"], name=item.get("name"))


def _message_dict(message: BaseMessage) -> dict[str, str]:
    """A prompt message as stored in its snapshot: role, content and, if it has one, name."""
    role = {"system": "system", "human": "user", "ai": "assistant"}.get(message.type, message.type)
    stored = {"role": role, "content": str(message.content)}
    if message.name:
        stored["name"] = message.name
    return stored


def _flag_dict(flag: Any) -> dict[str, Any]:
    if isinstance(flag, dict):
        return flag
    return {
        "kind": flag.kind,
        "score": round(float(flag.score), 4),
        "threshold": flag.threshold,
        "over_threshold": flag.over_threshold,
        "evidence": flag.evidence,
    }
