"""Actors' decisions on replies, for every console: decide, deliver, mark sent, remember.

The Discord console, the terminal and any other console call one :class:`DecisionService`; it
knows nothing of Discord. A transport registers an :class:`Outlet` (how a reply reaches the
users of its conversations), and consoles subscribe to :class:`DecisionNews` to redraw what they
show, whichever console took the decision.

Every action follows one order: the decision is committed (first decision wins, see
:class:`~feedback.corrections.CorrectionStore`), the console is told (its ``acknowledge``
callback), the reply goes out, it is marked sent, and memory keeps what the user received. A
crash after the commit loses nothing: :meth:`DecisionService.resume` delivers what was decided
but not sent, finishes acknowledged regenerations and restarts the holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

from bot.faults import crash_point
from bot.llm import GenerationError
from bot.moderation import Risk
from feedback.corrections import ActionOutcome, Actor, InvalidAction
from feedback.gold import GoldStore
from feedback.reviews import FinishedReply, ReviewQueue
from feedback.rubric import DEFAULT_DIMENSIONS, Rubric, RubricError, ScoreError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from contextlib import AbstractAsyncContextManager

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from bot.engine import ConversationEngine, Reply
    from feedback.corrections import CorrectionStore, HeldCandidate
    from feedback.models import Conversation, MessageNode
    from feedback.reviews import ReviewPolicy, Verdict

__all__ = [
    "Acknowledge",
    "ConversationRef",
    "DecisionNews",
    "DecisionService",
    "Delivery",
    "Listener",
    "Outlet",
]

_log = logging.getLogger(__name__)

#: Called once an action is committed (or refused), before its reply goes out: a console
#: answers its actor here (Discord must hear back within 3 s; delivery can take longer).
Acknowledge: TypeAlias = Callable[[ActionOutcome], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ConversationRef:
    """Where a conversation lives: enough for an outlet to find its user."""

    id: int
    transport: str
    scope: str
    persona: str
    guild_key: str | None = None

    @classmethod
    def of(cls, conversation: Conversation) -> ConversationRef:
        """The reference of a stored conversation."""
        return cls(
            conversation.id,
            conversation.transport,
            conversation.scope,
            conversation.persona,
            conversation.guild_key,
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """A reply on its way to the user."""

    node_id: int
    conversation: ConversationRef
    persona: str
    text: str
    #: Transport ids of the messages showing an earlier version: edit them in place.
    edit_ids: tuple[str, ...] = ()
    #: The transport id of the last message before this reply (the user's, or the persona's
    #: previous line).
    after_id: str | None = None
    #: Whether that message is the user's message this reply answers.
    answers_user: bool = False
    #: After a restart the reply may already be out: look for it before sending again.
    recovering: bool = False


class Outlet(Protocol):
    """How replies reach the users of one transport's conversations."""

    async def deliver(self, delivery: Delivery) -> str | None:
        """Send (or edit in place) the reply; returns the transport ids that now carry it,
        space-separated (``None`` where the transport has none). Idempotent on
        ``delivery.node_id`` where the transport allows it."""
        ...

    async def say(self, conversation: ConversationRef, persona: str, text: str) -> None:
        """A line from the persona that answers nothing (the holding line)."""
        ...

    def waiting(self, conversation: ConversationRef) -> AbstractAsyncContextManager[None]:
        """Shown to the user while a reply is held for an actor (Discord: typing)."""
        ...


NewsKind = Literal[
    "held", "sent", "decided", "withheld", "regenerated", "rated", "scored", "claimed", "released"
]


@dataclass(frozen=True, slots=True)
class DecisionNews:
    """Something consoles may want to redraw: a reply held, sent, decided or withheld (an
    urgent reply no actor reviewed), a new candidate, a rating or rubric scores, a conversation
    claimed or released."""

    kind: NewsKind
    conversation_id: int
    #: The candidate the news is about (``None`` for claims).
    candidate_id: int | None = None
    #: The node an action produced (a rewrite, a regenerated candidate), if any.
    result_id: int | None = None
    #: Who acted (``timeout`` for an expired hold, ``safety`` for a withheld reply; ``None`` for
    #: the engine's own replies).
    actor_id: str | None = None


#: A console's subscription to :class:`DecisionNews`.
Listener: TypeAlias = Callable[["DecisionNews"], Awaitable[None]]


def _now() -> datetime:
    return datetime.now(UTC)


class DecisionService:
    """Decides, delivers, marks sent and remembers, for every console and transport."""

    def __init__(
        self,
        *,
        engine: ConversationEngine,
        corrections: CorrectionStore,
        hold_seconds: float = 45.0,
        on_timeout: Literal["send", "drop"] = "send",
        help_resources: Sequence[str] = (),
        rubric: Rubric | None = None,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.corrections = corrections
        self.hold_seconds = hold_seconds
        self.on_timeout = on_timeout
        #: Sent after the persona's safety line in place of an urgent reply no actor reviewed.
        self.help_resources = tuple(help_resources)
        #: The deployment's rubric; a persona's card may add dimensions (:meth:`rubric_for`).
        self.rubric = rubric if rubric is not None else Rubric.of(DEFAULT_DIMENSIONS)
        self._rubrics: dict[tuple[str, str], Rubric] = {}
        self._outlets: dict[str, Outlet] = {}
        self._listeners: list[Listener] = []
        #: Candidates this process holds, each with the event its decision sets.
        self._held_here: dict[int, asyncio.Event] = {}
        self._holds: set[asyncio.Task[None]] = set()
        #: The review queue finished replies enter, and the gold verdicts (see
        #: :meth:`add_reviews`; ``None`` until then: no reply is queued).
        self.reviews: ReviewQueue | None = None
        self.gold: GoldStore | None = None

    # -- wiring ----------------------------------------------------------------------------

    def add_reviews(self, sessions: async_sessionmaker[AsyncSession], policy: ReviewPolicy) -> None:
        """Queue finished replies for overlapping reviews under ``policy``, and keep gold
        verdicts; both judge a reply under its persona's rubric (:meth:`rubric_for`)."""
        self.reviews = ReviewQueue(sessions, policy, self.rubric_for)
        self.gold = GoldStore(sessions, policy, self.rubric_for)

    def add_outlet(self, transport: str, outlet: Outlet) -> None:
        """Deliver the replies of ``transport``'s conversations through ``outlet``."""
        self._outlets[transport] = outlet

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with every piece of news (its failures are logged, not raised)."""
        self._listeners.append(listener)

    async def _publish(self, news: DecisionNews) -> None:
        for listener in list(self._listeners):
            try:
                await listener(news)
            except Exception:
                _log.exception("a console failed to take news %s", news)

    def _outlet(self, conversation: ConversationRef) -> Outlet | None:
        outlet = self._outlets.get(conversation.transport)
        if outlet is None:
            _log.warning(
                "no outlet for %s; conversation %s gets nothing",
                conversation.transport,
                conversation.id,
            )
        return outlet

    # -- new candidates ----------------------------------------------------------------------

    async def present(self, reply: Reply, *, hold: bool) -> None:
        """Put a new candidate in front of its user at once, or hold it for an actor
        (``hold``) for :attr:`hold_seconds`. An urgent candidate that is not held is never
        sent: the persona's safety line and the help resources go out instead."""
        incoming = reply.incoming
        conversation = ConversationRef(
            reply.conversation_id,
            incoming.transport,
            incoming.scope,
            reply.persona,
            incoming.guild_key,
        )
        if hold:
            until = _now() + timedelta(seconds=self.hold_seconds)
            # Ours before it is held: a resume running meanwhile leaves it to this call.
            self._held_here.setdefault(reply.candidate_id, asyncio.Event())
            await self.corrections.hold(reply.candidate_id, until)
            self._start_hold(reply.candidate_id, until, conversation)
            await self._publish(DecisionNews("held", reply.conversation_id, reply.candidate_id))
            return
        if reply.risk.urgent:
            await self._withhold(reply.candidate_id, conversation, reply.risk.reasons)
            return
        outlet = self._outlet(conversation)
        if outlet is None:
            return
        await self._queue_for_review(
            FinishedReply(
                reply.candidate_id,
                reply.conversation_id,
                "fallback" if reply.fallback else "model",
                reply.flags,
            )
        )
        sent_as = await outlet.deliver(
            Delivery(
                node_id=reply.candidate_id,
                conversation=conversation,
                persona=reply.persona,
                text=reply.text,
                after_id=incoming.external_id,
                answers_user=True,
                recovering=reply.redelivered,
            )
        )
        crash_point("turn.after_send")
        await self.store.mark_sent(reply.candidate_id, sent_as)
        crash_point("turn.after_mark_sent")
        await self._remember(
            persona=reply.persona,
            user_id=incoming.user_id,
            conversation_id=reply.conversation_id,
            turns=[
                (str(reply.user_turn_id), "user", incoming.text, incoming.user_name),
                (str(reply.candidate_id), "assistant", reply.text, reply.persona),
            ],
        )
        await self._publish(DecisionNews("sent", reply.conversation_id, reply.candidate_id))

    # -- actions on a candidate ----------------------------------------------------------------

    async def describe_decision(self, candidate_id: int) -> str:
        """Why a candidate can no longer be decided, in words for the actor."""
        return await self.corrections.describe_decision(candidate_id)

    async def approve(
        self,
        candidate_id: int,
        *,
        actor: Actor,
        key: str | None,
        acknowledge: Acknowledge | None = None,
    ) -> ActionOutcome:
        """Send a held candidate as it is, or confirm a sent one."""
        outcome = await self.corrections.approve(candidate_id, actor=actor, key=key)
        return await self._carry_out(outcome, candidate_id, actor, acknowledge)

    async def rewrite(
        self,
        candidate_id: int,
        *,
        actor: Actor,
        text: str,
        key: str | None,
        acknowledge: Acknowledge | None = None,
    ) -> ActionOutcome:
        """Send the actor's text instead of the candidate (editing a sent reply in place).

        Raises :class:`~feedback.corrections.InvalidAction` for a bad text (nothing recorded).
        """
        outcome = await self.corrections.rewrite(candidate_id, actor=actor, text=text, key=key)
        return await self._carry_out(outcome, candidate_id, actor, acknowledge)

    async def rate(
        self,
        candidate_id: int,
        *,
        actor: Actor,
        rating: int | None,
        tags: Sequence[str] = (),
        key: str | None,
    ) -> ActionOutcome:
        """A 1-5 rating and/or tags. Raises :class:`~feedback.corrections.InvalidAction`."""
        outcome = await self.corrections.rate(
            candidate_id, actor=actor, rating=rating, tags=tags, key=key
        )
        node = await self.store.get_node(candidate_id)
        if outcome.status == "done" and node is not None:
            await self._publish(
                DecisionNews("rated", node.conversation_id, candidate_id, actor_id=actor.id)
            )
        return outcome

    def rubric_for(self, persona: str) -> Rubric:
        """The rubric replies of ``persona`` are scored under: the deployment's dimensions,
        then the card's (``data.extensions.greenroom.rubric``). Raises
        :class:`~feedback.rubric.RubricError` naming the card when its dimensions are wrong,
        and :class:`~personas.UnknownPersonaError` for an unknown persona."""
        found = self.engine.personas.get(persona)
        cache_key = (found.name, found.version_hash)
        rubric = self._rubrics.get(cache_key)
        if rubric is None:
            try:
                rubric = self.rubric.extended(found.greenroom.rubric)
            except RubricError as error:
                raise RubricError(f"persona {found.name}'s card rubric: {error}") from None
            self._rubrics[cache_key] = rubric
        return rubric

    async def rubric_of_reply(self, candidate_id: int) -> Rubric:
        """The rubric a reply is scored under (its conversation's persona's). Raises
        :class:`~feedback.corrections.InvalidAction` when the reply is gone or the persona's
        rubric is wrong."""
        node = await self.store.get_node(candidate_id)
        conversation = (
            await self.store.get_conversation(node.conversation_id) if node is not None else None
        )
        if node is None or node.role != "assistant" or conversation is None:
            raise InvalidAction("This reply no longer exists (the conversation was deleted).")
        try:
            return self.rubric_for(conversation.persona)
        except (RubricError, KeyError) as error:
            raise InvalidAction(f"This reply cannot be scored: {error}") from None

    async def score(
        self,
        candidate_id: int,
        *,
        actor: Actor,
        scores: Mapping[str, object],
        unsafe: object,
        rating: object = None,
        key: str | None,
        rubric_version: str | None = None,
    ) -> ActionOutcome:
        """An actor's rubric scores on a reply, stored as one ``score`` event (the overall
        score, if given, in its ``rating``).

        ``rubric_version``: the version the actor was shown (a console form opened earlier);
        when the rubric has changed since, the scores are refused and the actor scores again.
        Raises :class:`~feedback.corrections.InvalidAction` naming what is wrong (an unknown
        dimension, a score outside 1 to 5, no unsafe flag); nothing is stored then.
        """
        rubric = await self.rubric_of_reply(candidate_id)
        if rubric_version is not None and rubric_version != rubric.version:
            raise InvalidAction(
                "The rubric changed since this form was opened; nothing was stored. "
                "Open the scores again."
            )
        try:
            checked = rubric.check(scores, unsafe=unsafe, rating=rating)
        except ScoreError as error:
            raise InvalidAction(f"Not scored: {error}.") from None
        outcome = await self.corrections.score(candidate_id, actor=actor, scores=checked, key=key)
        node = await self.store.get_node(candidate_id)
        if outcome.status == "done" and node is not None:
            await self._publish(
                DecisionNews("scored", node.conversation_id, candidate_id, actor_id=actor.id)
            )
        return outcome

    async def regenerate(
        self,
        candidate_id: int,
        *,
        actor: Actor,
        key: str | None = None,
        deliver: bool = False,
        acknowledge: Acknowledge | None = None,
    ) -> ActionOutcome:
        """A new candidate for the same prompt. The request is stored and acknowledged first
        (generation outlasts Discord's 3 s; a restart finishes it), then generated.

        The new candidate waits for its own decision: held if the old one was held, otherwise
        left for an actor to approve. With ``deliver`` (the terminal, where the user is their
        own actor) it goes out at once in place of the old one.

        Raises :class:`~bot.llm.GenerationError` or :class:`LookupError` when no candidate can be
        made (the request is dropped; the caller tells the actor).
        """
        key = key or f"regen:{uuid.uuid4().hex}"
        refused = await self.corrections.request_regeneration(candidate_id, actor=actor, key=key)
        if acknowledge is not None:
            await acknowledge(
                refused or ActionOutcome("accepted", "Regenerating.", candidate_id=candidate_id)
            )
        if refused is not None:
            return refused
        return await self._finish_regeneration(candidate_id, actor=actor, key=key, deliver=deliver)

    async def _finish_regeneration(
        self, candidate_id: int, *, actor: Actor, key: str, deliver: bool = False
    ) -> ActionOutcome:
        node = await self.store.get_node(candidate_id)
        parent = await self.store.get_node(node.parent_id) if node and node.parent_id else None
        try:
            if node is None or parent is None:
                raise LookupError("this reply no longer exists")
            text, snapshot, flags = await self.engine.regenerate(
                candidate_id, user_id=parent.author_id, user_name=parent.author_name
            )
        except (GenerationError, LookupError):
            await self.corrections.drop_pending(key)
            raise
        held = node.state == "held" and not deliver
        until = _now() + timedelta(seconds=self.hold_seconds) if held else None
        outcome = await self.corrections.regenerate(
            candidate_id,
            actor=actor,
            text=text,
            snapshot=snapshot,
            flags=flags,
            hold_until=until,
            key=key,
            decide=deliver,
        )
        if outcome.status == "refused":
            await self.corrections.drop_pending(key)
            return outcome
        if outcome.status != "done" or outcome.result_id is None:
            return outcome
        if until is not None:
            self._stop_hold(candidate_id)
            self._start_hold(outcome.result_id, until, None)
        if deliver:
            self._stop_hold(candidate_id)
            await self._deliver_outcome(outcome)
        await self._publish(
            DecisionNews(
                "regenerated",
                node.conversation_id,
                candidate_id,
                result_id=outcome.result_id,
                actor_id=actor.id,
            )
        )
        return outcome

    async def _carry_out(
        self,
        outcome: ActionOutcome,
        candidate_id: int,
        actor: Actor,
        acknowledge: Acknowledge | None,
    ) -> ActionOutcome:
        """After a decision's commit: tell the console, stop the hold, deliver, tell everyone."""
        if acknowledge is not None:
            await acknowledge(outcome)
        if outcome.status == "refused":
            return outcome
        self._stop_hold(candidate_id)
        if outcome.status == "done":
            if self.reviews is not None:  # a reply queued when it went out is now decided
                await self.reviews.note_decision(candidate_id, actor.id)
            await self._deliver_outcome(outcome)
            node = await self.store.get_node(candidate_id)
            if node is not None:
                await self._publish(
                    DecisionNews(
                        "decided",
                        node.conversation_id,
                        candidate_id,
                        result_id=outcome.result_id,
                        actor_id=actor.id,
                    )
                )
        return outcome

    # -- actions on a conversation ---------------------------------------------------------------

    async def _conversation(self, conversation_id: int) -> ConversationRef | None:
        conversation = await self.store.get_conversation(conversation_id)
        return ConversationRef.of(conversation) if conversation is not None else None

    async def take_over(
        self,
        conversation_id: int,
        *,
        actor: Actor,
        key: str | None,
        acknowledge: Acknowledge | None = None,
    ) -> ActionOutcome:
        """The actor speaks as the persona; the model stays silent until :meth:`release`."""
        conversation = await self._conversation(conversation_id)
        if conversation is None:
            outcome = ActionOutcome("refused", "This conversation no longer exists.")
        else:
            outcome = await self.corrections.claim(
                conversation_id, actor=actor, takeover=True, persona=conversation.persona, key=key
            )
        if acknowledge is not None:
            await acknowledge(outcome)
        if outcome.status == "done":
            await self._publish(DecisionNews("claimed", conversation_id, actor_id=actor.id))
        return outcome

    async def release(
        self,
        conversation_id: int,
        *,
        actor: Actor,
        key: str | None,
        acknowledge: Acknowledge | None = None,
    ) -> ActionOutcome:
        """Give the conversation back to the model."""
        conversation = await self._conversation(conversation_id)
        if conversation is None:
            outcome = ActionOutcome("refused", "This conversation no longer exists.")
        else:
            outcome = await self.corrections.release(
                conversation_id, actor=actor, persona=conversation.persona, key=key
            )
        if acknowledge is not None:
            await acknowledge(outcome)
        if outcome.status == "done":
            await self._publish(DecisionNews("released", conversation_id, actor_id=actor.id))
        return outcome

    async def speak_as_persona(
        self,
        conversation_id: int,
        *,
        actor: Actor,
        text: str,
        key: str | None,
        acknowledge: Acknowledge | None = None,
    ) -> ActionOutcome:
        """What the actor holding a takeover types, sent to the user as the persona.

        Raises :class:`~feedback.corrections.InvalidAction` for an empty or too long line.
        """
        conversation = await self._conversation(conversation_id)
        if conversation is None:
            return ActionOutcome("refused", "This conversation no longer exists.")
        last = await self.store.history(conversation_id, 1)
        outcome = await self.corrections.takeover_message(
            conversation_id,
            actor=actor,
            persona=conversation.persona,
            text=text,
            parent_id=last[-1].id if last else None,
            key=key,
        )
        if acknowledge is not None:
            await acknowledge(outcome)
        if outcome.status == "done":
            await self._deliver_outcome(outcome)
            await self._publish(
                DecisionNews(
                    "decided", conversation_id, result_id=outcome.result_id, actor_id=actor.id
                )
            )
        return outcome

    async def _withhold(
        self, candidate_id: int, conversation: ConversationRef, reasons: Sequence[str]
    ) -> None:
        """Send the persona's safety line and the help resources instead of an urgent
        candidate no actor reviewed; the candidate is kept, ``withheld``, for actors to see."""
        persona = self.engine.personas.get(conversation.persona)
        text = "\n".join([persona.safety_line(seed=candidate_id), *self.help_resources])
        outcome = await self.corrections.withhold(candidate_id, text=text, reasons=reasons)
        if outcome.status != "done":
            return
        _log.warning(
            "urgent reply %s withheld (no actor reviewed it); safety line sent", candidate_id
        )
        await self._deliver_outcome(outcome)
        await self._publish(
            DecisionNews(
                "withheld",
                conversation.id,
                candidate_id,
                result_id=outcome.result_id,
                actor_id="safety",
            )
        )

    # -- reviews after the fact -------------------------------------------------------------

    async def _queue_for_review(self, reply: FinishedReply) -> None:
        """Queue a reply on its way out for overlapping reviews, if it needs them (flagged,
        rewritten, or sampled). Before it is sent: a crash after the send cannot lose it, and a
        reply delivered again after a restart is queued once."""
        if self.reviews is not None:
            await self.reviews.enqueue(reply)

    async def mark_gold(
        self, candidate_id: int, *, lead: Actor, verdict: Verdict, note: str | None = None
    ) -> str:
        """Store a lead's verdict on a reply as gold (replacing an earlier gold verdict on it);
        returns what was done, in words. The caller checked that ``lead`` is a lead. Raises
        :class:`~feedback.reviews.InvalidVerdict` naming what is wrong (nothing stored)."""
        if self.gold is None:
            raise RuntimeError("reviews are not set up: call add_reviews first")
        return await self.gold.mark(candidate_id, by=lead.id, verdict=verdict, note=note)

    # -- delivery ----------------------------------------------------------------------------

    async def _deliver_outcome(self, outcome: ActionOutcome) -> None:
        """Deliver the node an action decided to send, if it still waits."""
        if outcome.result_id is None:
            return
        node = await self.store.get_node(outcome.result_id)
        if node is not None and node.state == "approved":
            await self.deliver_node(node)

    async def deliver_node(self, node: MessageNode, *, recovering: bool = False) -> None:
        """Deliver one ``approved`` node (new messages, or an edit of those it inherited), mark
        it sent and remember it. ``recovering``: after a restart, it may be out already."""
        conversation = await self._conversation(node.conversation_id)
        outlet = self._outlet(conversation) if conversation is not None else None
        if conversation is None or outlet is None:
            return
        parent = await self.store.get_node(node.parent_id) if node.parent_id else None
        after = parent.external_id.split()[-1] if parent and parent.external_id else None
        if parent is not None and parent.role == "user":
            await self._queue_for_review(
                FinishedReply(
                    node.id, node.conversation_id, node.origin, node.flags, node.decided_by
                )
            )
        crash_point("deliver.before_send")
        sent_as = await outlet.deliver(
            Delivery(
                node_id=node.id,
                conversation=conversation,
                persona=node.author_name,
                text=node.content,
                edit_ids=tuple(node.external_id.split()) if node.external_id else (),
                after_id=after,
                answers_user=parent is not None and parent.role == "user",
                recovering=recovering,
            )
        )
        crash_point("deliver.after_send")
        await self.store.mark_sent(node.id, sent_as)
        if parent is not None:
            await self._remember_delivered(node, parent)

    async def _remember_delivered(self, node: MessageNode, parent: MessageNode) -> None:
        """Memory keeps what the user received: a reply that replaced an earlier one (a
        rewrite, a regeneration) takes that one's place, under the id of the first reply sent
        for the user's turn."""
        memory = self.engine.memory
        if memory is None:
            return
        persona, user_id = node.author_name, parent.author_id
        first_sent = (
            await self.store.first_sent_reply(node.parent_id) if parent.role == "user" else None
        )
        if first_sent is None or first_sent == node.id:
            await self._remember(
                persona=persona,
                user_id=user_id,
                conversation_id=node.conversation_id,
                turns=[(str(t.id), t.role, t.content, t.author_name) for t in (parent, node)],
            )
            return
        try:
            await memory.replace_turn(
                persona=persona, user_id=user_id, turn_id=str(first_sent), text=node.content
            )
        except Exception as error:
            _log.warning(
                "memory: could not replace turn %s with node %s (%s); remembering it anew",
                first_sent,
                node.id,
                error,
            )
            await self._remember(
                persona=persona,
                user_id=user_id,
                conversation_id=node.conversation_id,
                turns=[(str(first_sent), "assistant", node.content, persona)],
            )

    async def _remember(
        self,
        *,
        persona: str,
        user_id: str,
        conversation_id: int,
        turns: Sequence[tuple[str, str, str, str]],
    ) -> None:
        """Remember sent turns ``(memory id, role, text, speaker)``; a failure is logged (the
        user has their reply; memory only loses this turn)."""
        memory = self.engine.memory
        if memory is None:
            return
        try:
            for turn_id, role, text, speaker in turns:
                await memory.remember_turn(
                    persona=persona,
                    user_id=user_id,
                    conversation_id=str(conversation_id),
                    turn_id=turn_id,
                    role=role,  # type: ignore[arg-type]
                    text=text,
                    speaker=speaker,
                )
        except Exception as error:
            _log.warning(
                "memory: could not remember turns %s: %s: %s",
                [turn[0] for turn in turns],
                type(error).__name__,
                str(error)[:200],
            )

    # -- holds -------------------------------------------------------------------------------

    def _start_hold(
        self, candidate_id: int, until: datetime, conversation: ConversationRef | None
    ) -> None:
        """Wait for an actor in the background, until ``until``."""
        self._held_here.setdefault(candidate_id, asyncio.Event())
        task = asyncio.create_task(self._hold(candidate_id, until, conversation))
        self._holds.add(task)
        task.add_done_callback(self._holds.discard)

    def _stop_hold(self, candidate_id: int) -> None:
        event = self._held_here.get(candidate_id)
        if event is not None:
            event.set()

    async def _hold(
        self, candidate_id: int, until: datetime, conversation: ConversationRef | None
    ) -> None:
        """Show the user the reply is coming until an actor decides or the hold runs out; then
        send it as it is or drop it for the persona's holding line (``on_timeout``)."""
        decided = self._held_here.setdefault(candidate_id, asyncio.Event())
        try:
            if conversation is None:
                node = await self.store.get_node(candidate_id)
                conversation = await self._conversation(node.conversation_id) if node else None
            outlet = self._outlet(conversation) if conversation is not None else None
            waiting = (
                outlet.waiting(conversation)
                if outlet is not None and conversation is not None
                else contextlib.nullcontext()
            )
            remaining = max(0.0, (until - _now()).total_seconds())
            async with waiting:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(decided.wait(), remaining)
            if decided.is_set():
                return
            node = await self.store.get_node(candidate_id)
            risk = Risk.from_flags(node.flags if node is not None else ())
            if risk.urgent and conversation is not None:
                await self._withhold(candidate_id, conversation, risk.reasons)
                return
            send = self.on_timeout == "send"
            outcome = await self.corrections.expire_hold(candidate_id, send=send)
            if outcome.status != "done":
                return
            if send:
                await self._deliver_outcome(outcome)
            elif conversation is not None and outlet is not None:
                persona = self.engine.personas.get(conversation.persona)
                await outlet.say(
                    conversation, persona.name, persona.holding_line(seed=candidate_id)
                )
            if conversation is not None:
                await self._publish(
                    DecisionNews("decided", conversation.id, candidate_id, actor_id="timeout")
                )
        except Exception:
            _log.exception("hold of candidate %s failed", candidate_id)
        finally:
            self._held_here.pop(candidate_id, None)

    # -- restarts ----------------------------------------------------------------------------

    async def resume(self) -> list[HeldCandidate]:
        """After a restart: finish acknowledged regenerations, deliver what was decided but
        not sent, and restart the holds of an earlier process; returns those candidates (the
        ones this process held meanwhile are its own already)."""
        for pending in await self.corrections.pending_regenerations():
            try:
                await self._finish_regeneration(
                    pending.candidate_id,
                    actor=Actor(pending.actor_id, pending.actor_name),
                    key=pending.key,
                )
            except Exception:
                _log.exception("could not finish regeneration %s after restart", pending.key)
        for node in await self.corrections.undelivered():
            try:
                await self.deliver_node(node, recovering=True)
            except Exception:
                _log.exception("could not deliver node %s after restart", node.id)
        held = [
            candidate
            for candidate in await self.corrections.held_candidates()
            if candidate.id not in self._held_here  # not held by this process since it started
        ]
        for candidate in held:
            self._start_hold(candidate.id, candidate.hold_until, None)
        _log.info("resumed %d held candidates", len(held))
        return held

    async def close(self) -> None:
        """Stop hold timers (their candidates stay held in the database and resume later)."""
        holds = [task for task in self._holds if not task.done()]
        for task in holds:
            task.cancel()
        if holds:
            await asyncio.wait(holds, timeout=10)
