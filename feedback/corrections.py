"""Actors' decisions on candidate replies, recorded as feedback events.

Each action is one transaction that commits before the caller acknowledges the actor, so an
acknowledged action is never lost. The first decision on a candidate wins (a conditional update
on ``decided_by``); a later one is refused with what happened. An ``idempotency_key`` (such as the
Discord interaction id) makes the same action delivered twice record one event.

Candidate states: ``candidate`` (produced), ``held`` (waiting for an actor until
``hold_until``), ``approved`` (decided to go out, not yet delivered), ``sent``, ``replaced``
(sent, then rewritten in place), ``rejected`` (an alternative not used), ``dropped``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from rapidfuzz.distance import Levenshtein
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError

from feedback.database import autocommit, autocommit_engine
from feedback.models import (
    ConversationClaim,
    FeedbackEvent,
    MessageNode,
    PendingAction,
    PromptSnapshot,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from feedback.rubric import Scores
    from feedback.store import SnapshotData

__all__ = [
    "MAX_REWRITE_CHARS",
    "TAGS",
    "ActionOutcome",
    "Actor",
    "CorrectionStore",
    "HeldCandidate",
    "InvalidAction",
    "check_tags",
]

_log = logging.getLogger(__name__)

#: The tags actors may put on a reply: the same names in Discord, the terminal and exports.
TAGS = (
    "in-character",
    "off-persona",
    "wrong-tone",
    "too-long",
    "too-short",
    "unsafe",
    "factual-error",
    "good-timing",
    "emotionally-resonant",
    "funny",
)
#: A rewrite must fit in one Discord message.
MAX_REWRITE_CHARS = 2000
_OPEN_STATES = ("candidate", "held", "sent")
_DECISION_VERBS = {
    "approve": "approved",
    "rewrite": "rewritten",
    "regenerate": "regenerated",
    "timeout_send": "sent when the hold ran out",
    "timeout_drop": "dropped when the hold ran out",
}


class InvalidAction(ValueError):
    """The action's input is wrong (empty rewrite, unknown tag...); nothing was recorded."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an id (``discord:123``, ``terminal:ann``) and a display name."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """What an action did. ``result_id`` is the node to deliver, if any.

    ``accepted``: a request stored to be finished later (a regeneration); ``duplicate``: the
    same action seen before (same idempotency key); ``refused``: ``message`` says why.
    """

    status: Literal["done", "accepted", "duplicate", "refused"]
    message: str
    event_id: int | None = None
    candidate_id: int | None = None
    result_id: int | None = None


@dataclass(frozen=True, slots=True)
class HeldCandidate:
    """A candidate waiting for an actor, as needed to resume its hold after a restart."""

    id: int
    conversation_id: int
    hold_until: datetime
    console_ref: str | None
    flags: list[Any] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


def check_tags(tags: Sequence[str]) -> list[str]:
    """The tags as recorded: known ones only (else :class:`InvalidAction`), once each, in
    :data:`TAGS` order."""
    unknown = [tag for tag in tags if tag not in TAGS]
    if unknown:
        raise InvalidAction(f"unknown tag {unknown[0]!r}; use one of: {', '.join(TAGS)}")
    return sorted(set(tags), key=TAGS.index)


def check_rewrite(original: str, text: str) -> str:
    """The rewrite text, stripped, or :class:`InvalidAction` saying what is wrong with it."""
    text = text.strip()
    if not text:
        raise InvalidAction("The rewrite is empty; type the reply the persona should send.")
    if len(text) > MAX_REWRITE_CHARS:
        raise InvalidAction(
            f"The rewrite is {len(text):,} characters; the limit is {MAX_REWRITE_CHARS:,}."
        )
    if text == original.strip():
        raise InvalidAction("The rewrite is identical to the candidate; use Approve instead.")
    return text


_CLAIMS = ConversationClaim.__table__
_CLAIM = select(_CLAIMS).where(_CLAIMS.c.conversation_id == bindparam("conversation_id"))


class CorrectionStore:
    """Records actor actions; every method commits before it returns."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        claim_ttl: timedelta = timedelta(minutes=10),
    ) -> None:
        self._sessions = sessions
        self._autocommit = autocommit_engine(sessions)
        self.claim_ttl = claim_ttl

    # -- helpers -------------------------------------------------------------------------

    async def _duplicate(self, session: AsyncSession, key: str | None) -> ActionOutcome | None:
        if key is None:
            return None
        event = await session.scalar(
            select(FeedbackEvent).where(FeedbackEvent.idempotency_key == key)
        )
        if event is None:
            return None
        return ActionOutcome(
            "duplicate",
            "Already recorded.",
            event_id=event.id,
            candidate_id=event.candidate_id,
            result_id=event.result_id,
        )

    async def _replace_sent_sibling(self, session: AsyncSession, node: MessageNode) -> None:
        """If a sibling of ``node`` was sent, ``node`` takes its place: it inherits the sent
        message ids (to be edited in place) and the sibling becomes ``replaced``."""
        sibling = await session.scalar(
            select(MessageNode).where(
                MessageNode.parent_id == node.parent_id,
                MessageNode.role == "assistant",
                MessageNode.state == "sent",
                MessageNode.id != node.id,
            )
        )
        if sibling is None or node.parent_id is None:
            return
        sibling.state = "replaced"
        node.external_id = sibling.external_id

    async def _claim_blocks(
        self, session: AsyncSession, conversation_id: int, actor: Actor
    ) -> str | None:
        claim = await session.get(ConversationClaim, conversation_id)
        if claim is None or claim.actor_id == actor.id or claim.expires_at <= _now():
            return None
        return f"{claim.actor_name} holds this conversation until {claim.expires_at:%H:%M:%S} UTC."

    async def _record(
        self,
        session: AsyncSession,
        *,
        kind: str,
        actor: Actor,
        node: MessageNode | None,
        key: str | None,
        conversation_id: int | None = None,
        persona: str | None = None,
        **values: Any,
    ) -> ActionOutcome:
        """Add the event and commit; a concurrent duplicate key turns into ``duplicate``.

        An event on a candidate ``node`` takes its conversation and persona from the node;
        a conversation event (no node) names them.
        """
        if node is not None:
            conversation_id, persona = node.conversation_id, node.author_name
        snapshot = None
        if node is not None and node.prompt_snapshot_id is not None:
            snapshot = await session.get(PromptSnapshot, node.prompt_snapshot_id)
        event = FeedbackEvent(
            kind=kind,
            actor_id=actor.id,
            conversation_id=conversation_id,
            candidate_id=node.id if node is not None else None,
            persona=persona,
            persona_version=snapshot.persona_version if snapshot is not None else None,
            prompt_snapshot_id=node.prompt_snapshot_id if node is not None else None,
            idempotency_key=key,
            tags=values.pop("tags", []),
            **values,
        )
        session.add(event)
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            duplicate = await self._duplicate(session, key)
            if duplicate is None:
                raise
            return duplicate
        return ActionOutcome(
            "done",
            "Recorded.",
            event_id=event.id,
            candidate_id=event.candidate_id,
            result_id=event.result_id,
        )

    async def _decide(
        self, session: AsyncSession, node: MessageNode, actor: Actor, new_state: str | None
    ) -> str | None:
        """Take the decision on ``node`` if nobody has; returns why not otherwise."""
        node_id = node.id
        values: dict[str, Any] = {"decided_by": actor.id}
        if new_state is not None:
            values["state"] = new_state
        result = await session.execute(
            update(MessageNode)
            .where(
                MessageNode.id == node_id,
                MessageNode.decided_by.is_(None),
                MessageNode.state.in_(_OPEN_STATES),
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            return None
        await session.rollback()
        return await self.describe_decision(node_id)

    async def _open(
        self, session: AsyncSession, candidate_id: int, actor: Actor, key: str | None
    ) -> MessageNode | ActionOutcome:
        """The candidate an action is about, or the outcome that ends the action early: the
        same click seen before (duplicate), or a conversation another actor holds (refused)."""
        if duplicate := await self._duplicate(session, key):
            return duplicate
        node = await self._load(session, candidate_id)
        if blocked := await self._claim_blocks(session, node.conversation_id, actor):
            return ActionOutcome("refused", blocked, candidate_id=candidate_id)
        return node

    async def _twin_or_refused(
        self, session: AsyncSession, key: str | None, why: str, candidate_id: int
    ) -> ActionOutcome:
        """A decision lost its race: to the same click delivered twice (then this delivery is
        a duplicate of the one that won), or to someone else (refused, with why)."""
        if duplicate := await self._duplicate(session, key):
            return duplicate
        return ActionOutcome("refused", why, candidate_id=candidate_id)

    async def describe_decision(self, candidate_id: int) -> str:
        """Why a candidate can no longer be decided, in words for the actor."""
        async with self._sessions() as session:
            node = await session.get(MessageNode, candidate_id)
            if node is None:
                return "This reply no longer exists (the conversation was deleted)."
            event = await session.scalar(
                select(FeedbackEvent)
                .where(
                    FeedbackEvent.candidate_id == candidate_id,
                    FeedbackEvent.kind.in_(tuple(_DECISION_VERBS)),
                )
                .order_by(FeedbackEvent.id)
                .limit(1)
            )
        if event is not None:
            who = "" if event.actor_id == "timeout" else f" by {event.actor_id}"
            return f"Already {_DECISION_VERBS[event.kind]}{who}."
        if node.decided_by:
            return f"Already decided by {node.decided_by}."
        return f"This reply is already {node.state}."

    async def _load(self, session: AsyncSession, candidate_id: int) -> MessageNode:
        node = await session.get(MessageNode, candidate_id)
        if node is None or node.role != "assistant":
            raise InvalidAction("This reply no longer exists (the conversation was deleted).")
        return node

    # -- candidates ----------------------------------------------------------------------

    async def hold(self, candidate_id: int, until: datetime) -> None:
        """Hold a candidate for an actor until ``until``."""
        async with self._sessions() as session:
            await session.execute(
                update(MessageNode)
                .where(MessageNode.id == candidate_id)
                .values(state="held", hold_until=until)
            )
            await session.commit()

    async def set_console_ref(self, node_id: int, ref: str) -> None:
        """Remember where the console shows this candidate (``channel/message``)."""
        async with self._sessions() as session:
            await session.execute(
                update(MessageNode).where(MessageNode.id == node_id).values(console_ref=ref)
            )
            await session.commit()

    async def approve(self, candidate_id: int, *, actor: Actor, key: str | None) -> ActionOutcome:
        """Approve: a held candidate goes out as it is; a sent one is confirmed."""
        async with self._sessions() as session:
            node = await self._open(session, candidate_id, actor, key)
            if isinstance(node, ActionOutcome):
                return node
            already_sent = node.state == "sent"
            why = await self._decide(session, node, actor, None if already_sent else "approved")
            if why:
                return await self._twin_or_refused(session, key, why, candidate_id)
            if not already_sent:
                await self._replace_sent_sibling(session, node)
            return await self._record(
                session,
                kind="approve",
                actor=actor,
                node=node,
                key=key,
                result_id=None if already_sent else node.id,
            )

    async def rewrite(
        self, candidate_id: int, *, actor: Actor, text: str, key: str | None
    ) -> ActionOutcome:
        """Replace the candidate with the actor's text, as a sibling node.

        A held candidate becomes ``rejected`` and the rewrite goes out; a sent one becomes
        ``replaced`` and the rewrite inherits its message ids, to be edited in place.
        """
        async with self._sessions() as session:
            node = await self._open(session, candidate_id, actor, key)
            if isinstance(node, ActionOutcome):
                return node
            text = check_rewrite(node.content, text)
            was_sent = node.state == "sent"
            why = await self._decide(session, node, actor, "replaced" if was_sent else "rejected")
            if why:
                return await self._twin_or_refused(session, key, why, candidate_id)
            rewrite = MessageNode(
                conversation_id=node.conversation_id,
                parent_id=node.parent_id,
                role="assistant",
                origin="rewrite",
                author_id=actor.id,
                author_name=node.author_name,
                content=text,
                state="approved",
                external_id=node.external_id if was_sent else None,
                prompt_snapshot_id=node.prompt_snapshot_id,
                decided_by=actor.id,
                flags=[],
            )
            session.add(rewrite)
            await session.flush()
            if not was_sent:
                await self._replace_sent_sibling(session, rewrite)
            return await self._record(
                session,
                kind="rewrite",
                actor=actor,
                node=node,
                key=key,
                result_id=rewrite.id,
                original_text=node.content,
                new_text=text,
                edit_distance=Levenshtein.distance(node.content, text),
            )

    async def request_regeneration(
        self, candidate_id: int, *, actor: Actor, key: str
    ) -> ActionOutcome | None:
        """Store the request before acknowledging it (generation outlasts Discord's 3 s).

        Returns ``None`` when it is stored (or was already, for a click delivered twice), or
        the refusal to show: a decided candidate, a conversation another actor holds.
        """
        async with self._sessions() as session:
            node = await self._open(session, candidate_id, actor, key)
            if isinstance(node, ActionOutcome):
                return node
            decided = node.decided_by is not None
            if decided and (node.state != "sent" or node.decided_by != actor.id):
                return ActionOutcome(
                    "refused", await self.describe_decision(candidate_id), candidate_id=candidate_id
                )
            if await session.get(PendingAction, key) is None:
                session.add(
                    PendingAction(
                        key=key,
                        kind="regenerate",
                        candidate_id=candidate_id,
                        actor_id=actor.id,
                        actor_name=actor.name,
                    )
                )
                try:
                    await session.commit()
                except IntegrityError:  # the same click, delivered twice at once
                    await session.rollback()
        return None

    async def pending_regenerations(self) -> list[PendingAction]:
        """Regenerations acknowledged but not finished (after a restart), oldest first."""
        async with autocommit(self._sessions) as session:
            rows = await session.scalars(
                select(PendingAction)
                .where(PendingAction.kind == "regenerate")
                .order_by(PendingAction.created_at)
            )
            return list(rows.all())

    async def drop_pending(self, key: str) -> None:
        """Forget a request that cannot be finished (the model failed; the actor was told)."""
        async with autocommit(self._sessions) as session:
            await session.execute(delete(PendingAction).where(PendingAction.key == key))

    async def regenerate(
        self,
        candidate_id: int,
        *,
        actor: Actor,
        text: str,
        snapshot: SnapshotData,
        flags: Sequence[dict[str, Any]],
        hold_until: datetime | None,
        key: str | None,
        decide: bool = False,
    ) -> ActionOutcome:
        """Keep the old candidate as a rejected alternative and add a new one beside it.

        The new candidate is held until ``hold_until`` (or left ``candidate`` when ``None``),
        waiting for its own decision; with ``decide`` the actor's regeneration is also their
        decision (a solo user in the terminal): it is ``approved`` to go out, in place of a
        sent sibling.
        """
        async with self._sessions() as session:
            node = await self._open(session, candidate_id, actor, key)
            if isinstance(node, ActionOutcome):
                return node
            if node.state != "sent":
                # A sent reply stays out until its new sibling is approved (then edited in
                # place); an unsent one is set aside as a rejected alternative.
                why = await self._decide(session, node, actor, "rejected")
                if why:
                    return ActionOutcome("refused", why, candidate_id=candidate_id)
            elif node.decided_by is not None and node.decided_by != actor.id:
                return ActionOutcome(
                    "refused", await self.describe_decision(candidate_id), candidate_id=candidate_id
                )
            row = snapshot.to_row()
            session.add(row)
            await session.flush()
            fresh = MessageNode(
                conversation_id=node.conversation_id,
                parent_id=node.parent_id,
                role="assistant",
                origin="model",
                author_id=node.author_id,
                author_name=node.author_name,
                content=text,
                state="approved" if decide else "held" if hold_until is not None else "candidate",
                hold_until=None if decide else hold_until,
                prompt_snapshot_id=row.id,
                console_ref=node.console_ref,
                decided_by=actor.id if decide else None,
                flags=list(flags),
            )
            session.add(fresh)
            await session.flush()
            if decide:
                await self._replace_sent_sibling(session, fresh)
            if key is not None:  # the request, if one was stored, ends in the same commit
                await session.execute(delete(PendingAction).where(PendingAction.key == key))
            return await self._record(
                session,
                kind="regenerate",
                actor=actor,
                node=node,
                key=key,
                result_id=fresh.id,
                original_text=node.content,
                new_text=text,
            )

    async def rate(
        self,
        candidate_id: int,
        *,
        actor: Actor,
        rating: int | None,
        tags: Sequence[str] = (),
        key: str | None,
    ) -> ActionOutcome:
        """A 1-5 rating and/or tags; several actors may rate the same reply."""
        if rating is not None and not 1 <= rating <= 5:
            raise InvalidAction(f"A rating is 1 to 5, not {rating}.")
        checked = check_tags(tags)
        if rating is None and not checked:
            raise InvalidAction("Give a rating from 1 to 5, or at least one tag.")
        async with self._sessions() as session:
            if duplicate := await self._duplicate(session, key):
                return duplicate
            node = await self._load(session, candidate_id)
            return await self._record(
                session,
                kind="rate",
                actor=actor,
                node=node,
                key=key,
                rating=rating,
                tags=checked,
            )

    async def score(
        self,
        candidate_id: int,
        *,
        actor: Actor,
        scores: Scores,
        key: str | None,
    ) -> ActionOutcome:
        """An actor's rubric scores on a reply (checked by :meth:`Rubric.check
        <feedback.rubric.Rubric.check>`), stored as one ``score`` event with the rubric version
        and the unsafe flag, and the overall score in ``rating`` when given. Several actors may
        score the same reply, and one actor again (each score is kept)."""
        async with self._sessions() as session:
            if duplicate := await self._duplicate(session, key):
                return duplicate
            node = await self._load(session, candidate_id)
            return await self._record(
                session,
                kind="score",
                actor=actor,
                node=node,
                key=key,
                rating=scores.rating,
                scores=dict(scores.scores),
                unsafe=scores.unsafe,
                rubric_version=scores.rubric_version,
            )

    async def expire_hold(self, candidate_id: int, *, send: bool) -> ActionOutcome:
        """The hold ran out with no actor: send as-is, or drop (the caller sends a holding
        line). Refused if an actor decided first."""
        timeout = Actor("timeout", "timeout")
        async with self._sessions() as session:
            node = await self._load(session, candidate_id)
            why = await self._decide(session, node, timeout, "approved" if send else "dropped")
            if why:
                return ActionOutcome("refused", why, candidate_id=candidate_id)
            return await self._record(
                session,
                kind="timeout_send" if send else "timeout_drop",
                actor=timeout,
                node=node,
                key=f"timeout:{candidate_id}",
                result_id=node.id if send else None,
            )

    async def withhold(
        self, candidate_id: int, *, text: str, reasons: Sequence[str]
    ) -> ActionOutcome:
        """An urgent candidate no actor can review is ``withheld`` (never sent) and ``text`` (the
        persona's safety line and help resources) goes out instead, as a sibling node that no
        export trains on. Refused if an actor decided first."""
        safety = Actor("safety", "safety")
        async with self._sessions() as session:
            node = await self._load(session, candidate_id)
            why = await self._decide(session, node, safety, "withheld")
            if why:
                return ActionOutcome("refused", why, candidate_id=candidate_id)
            replacement = MessageNode(
                conversation_id=node.conversation_id,
                parent_id=node.parent_id,
                role="assistant",
                origin="safety_fallback",
                author_id=f"persona:{node.author_name}",
                author_name=node.author_name,
                content=text,
                state="approved",
                prompt_snapshot_id=node.prompt_snapshot_id,
                decided_by=safety.id,
                flags=[{"kind": "safety_fallback", "withheld": node.id, "reasons": list(reasons)}],
            )
            session.add(replacement)
            await session.flush()
            return await self._record(
                session,
                kind="safety_fallback",
                actor=safety,
                node=node,
                key=f"safety:{candidate_id}",
                result_id=replacement.id,
            )

    async def held_candidates(self) -> list[HeldCandidate]:
        """Every candidate still waiting for an actor (to resume holds after a restart)."""
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(MessageNode)
                    .where(MessageNode.state == "held", MessageNode.decided_by.is_(None))
                    .order_by(MessageNode.id)
                )
            ).all()
        return [
            HeldCandidate(
                id=row.id,
                conversation_id=row.conversation_id,
                hold_until=row.hold_until or _now(),
                console_ref=row.console_ref,
                flags=list(row.flags),
            )
            for row in rows
        ]

    async def undelivered(self) -> list[MessageNode]:
        """Nodes decided to go out but not yet delivered (e.g. a crash between the two)."""
        async with self._sessions() as session:
            return list(
                (
                    await session.scalars(
                        select(MessageNode)
                        .where(MessageNode.state == "approved")
                        .order_by(MessageNode.id)
                    )
                ).all()
            )

    # -- conversations -------------------------------------------------------------------

    async def claim_holder(self, conversation_id: int) -> ConversationClaim | None:
        """The live claim on a conversation, if any (one Core read, no transaction: every turn
        asks). The claim returned is not attached to a session."""
        async with self._autocommit.begin() as connection:
            result = await connection.execute(_CLAIM, {"conversation_id": conversation_id})
            row = result.first()
        if row is None or row.expires_at <= _now():
            return None
        return ConversationClaim(**row._mapping)

    async def claim(
        self,
        conversation_id: int,
        *,
        actor: Actor,
        takeover: bool,
        persona: str,
        key: str | None,
    ) -> ActionOutcome:
        """Claim a conversation (``takeover``: the model goes silent) for :attr:`claim_ttl`."""
        async with self._sessions() as session:
            if duplicate := await self._duplicate(session, key):
                return duplicate
            if blocked := await self._claim_blocks(session, conversation_id, actor):
                return ActionOutcome("refused", blocked)
            await session.execute(
                delete(ConversationClaim).where(
                    ConversationClaim.conversation_id == conversation_id
                )
            )
            session.add(
                ConversationClaim(
                    conversation_id=conversation_id,
                    actor_id=actor.id,
                    actor_name=actor.name,
                    takeover=takeover,
                    expires_at=_now() + self.claim_ttl,
                )
            )
            if not takeover:
                try:
                    await session.commit()
                except IntegrityError:
                    await session.rollback()
                    return ActionOutcome("refused", "Another actor claimed it a moment ago.")
                return ActionOutcome("done", "Claimed.")
            return await self._record(
                session,
                kind="takeover",
                actor=actor,
                node=None,
                conversation_id=conversation_id,
                persona=persona,
                key=key,
            )

    async def release(
        self, conversation_id: int, *, actor: Actor, persona: str, key: str | None
    ) -> ActionOutcome:
        """Give a conversation back to the model."""
        async with self._sessions() as session:
            if duplicate := await self._duplicate(session, key):
                return duplicate
            if blocked := await self._claim_blocks(session, conversation_id, actor):
                return ActionOutcome("refused", blocked)
            claim = await session.get(ConversationClaim, conversation_id)
            if claim is None:
                return ActionOutcome("refused", "Nobody holds this conversation.")
            await session.delete(claim)
            return await self._record(
                session,
                kind="release",
                actor=actor,
                node=None,
                conversation_id=conversation_id,
                persona=persona,
                key=key,
            )

    async def takeover_message(
        self,
        conversation_id: int,
        *,
        actor: Actor,
        persona: str,
        text: str,
        parent_id: int | None,
        key: str | None,
    ) -> ActionOutcome:
        """What an actor types as the persona while holding a takeover; to be delivered."""
        text = text.strip()
        if not text:
            raise InvalidAction("The message is empty.")
        if len(text) > MAX_REWRITE_CHARS:
            raise InvalidAction(
                f"The message is {len(text):,} characters; the limit is {MAX_REWRITE_CHARS:,}."
            )
        async with self._sessions() as session:
            if duplicate := await self._duplicate(session, key):
                return duplicate
            claim = await session.get(ConversationClaim, conversation_id)
            if claim is None or not claim.takeover or claim.expires_at <= _now():
                return ActionOutcome("refused", "Take over the conversation first.")
            if claim.actor_id != actor.id:
                return ActionOutcome("refused", f"{claim.actor_name} holds this conversation.")
            # Conditional: a Release committed since the read above wins, and the line is refused
            # with a reason (not lost to an error).
            extended = await session.execute(
                update(ConversationClaim)
                .where(
                    ConversationClaim.conversation_id == conversation_id,
                    ConversationClaim.actor_id == actor.id,
                    ConversationClaim.takeover.is_(True),
                )
                .values(expires_at=_now() + self.claim_ttl)
                .execution_options(synchronize_session=False)
            )
            if extended.rowcount != 1:
                await session.rollback()
                return ActionOutcome(
                    "refused", "The conversation was released before this line; it was not sent."
                )
            node = MessageNode(
                conversation_id=conversation_id,
                parent_id=parent_id,
                role="assistant",
                origin="takeover",
                author_id=actor.id,
                author_name=persona,
                content=text,
                state="approved",
                decided_by=actor.id,
                flags=[],
            )
            session.add(node)
            await session.flush()
            return await self._record(
                session,
                kind="takeover_message",
                actor=actor,
                node=None,
                conversation_id=conversation_id,
                persona=persona,
                key=key,
                result_id=node.id,
                new_text=text,
            )
