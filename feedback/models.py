"""Greenroom's database tables (SQLAlchemy 2.0 typed models).

Conversations are kept as trees, like OpenAssistant's exports: a user turn's parent is the reply
sent before it, and under each user turn the candidates the model produced and the actors'
rewrites are siblings. The reply that went out carries ``state == "sent"``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiToken",
    "AssistantState",
    "Base",
    "ChannelSetting",
    "Conversation",
    "ConversationClaim",
    "ErasureTombstone",
    "FeedbackEvent",
    "GoldItem",
    "GuildSetting",
    "Lease",
    "MessageNode",
    "PendingAction",
    "PromptSnapshot",
    "Review",
    "ReviewItem",
    "ReviewLease",
    "ReviewReason",
    "ReviewStatus",
    "UserPrivacy",
    "UserTurnState",
]

#: A user turn: waiting for an answer, answered, or refused before generation.
UserTurnState = ("pending", "answered")
#: An assistant node: produced, waiting for an actor, went out, passed over, or never sent.
AssistantState = ("candidate", "held", "sent", "rejected", "dropped", "withheld")
#: Why a finished turn is in the review queue: sampled, flagged, rewritten live, or a gold item.
ReviewReason = ("sample", "flagged", "rewritten", "gold")
#: A review item: still taking reviews, accepted by agreement, or disputed.
ReviewStatus = ("open", "accepted", "disputed")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp on every backend (SQLite keeps naive UTC; we add the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """The one declarative base of Greenroom's tables."""

    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class Conversation(Base):
    """One conversation: a transport scope (a DM, a channel, a terminal user) with one persona."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("transport", "scope", "persona"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transport: Mapped[str] = mapped_column(String(32))
    scope: Mapped[str] = mapped_column(String(128))
    persona: Mapped[str] = mapped_column(String(64))
    #: The server the conversation happens in (``discord:<guild id>``); ``None`` for DMs.
    guild_key: Mapped[str | None] = mapped_column(String(64), default=None)
    #: The actor console's thread for this conversation (takeover messages are typed there).
    console_thread_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class PromptSnapshot(Base):
    """Exactly what the model saw for one candidate: messages, card version, memories, params."""

    __tablename__ = "prompt_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    messages: Mapped[list[Any]] = mapped_column(JSON)
    persona: Mapped[str] = mapped_column(String(64))
    persona_version: Mapped[str] = mapped_column(String(64))
    memories: Mapped[list[Any]] = mapped_column(JSON, default=list)
    model_name: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The content of the ``context`` message (lore and memories) built for this turn, also
    #: found in ``messages``; the next turns' prompts keep it in place. ``None``: it had none,
    #: or the snapshot predates migration 0009.
    context: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class MessageNode(Base):
    """A node of the conversation tree: a user turn, a model candidate or an actor's text."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        Index("ix_messages_parent_id", "parent_id"),
        Index("ix_messages_author_id", "author_id"),
        Index("ix_messages_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), default=None
    )
    #: ``user`` or ``assistant``.
    role: Mapped[str] = mapped_column(String(16))
    #: ``user``, ``model``, ``fallback``, ``safety_fallback``, ``rewrite``, ``takeover`` or
    #: ``greeting``.
    origin: Mapped[str] = mapped_column(String(16))
    #: The user's id, the actor's id, or the persona's name for model output.
    author_id: Mapped[str] = mapped_column(String(128))
    author_name: Mapped[str] = mapped_column(String(128))
    content: Mapped[str] = mapped_column(Text)
    #: See :data:`UserTurnState` and :data:`AssistantState`.
    state: Mapped[str] = mapped_column(String(16))
    #: The transport's ids of the delivered message, space-separated when it was split
    #: (e.g. Discord message ids); for a user turn, the id of the message the user sent.
    external_id: Mapped[str | None] = mapped_column(String(255), default=None)
    prompt_snapshot_id: Mapped[int | None] = mapped_column(
        ForeignKey("prompt_snapshots.id", ondelete="SET NULL"), default=None
    )
    #: Consistency and generation flags, each ``{"kind": ..., "score": ..., "evidence": ...}``.
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    #: For a held candidate: when the hold ends (then it is sent as-is or dropped).
    hold_until: Mapped[datetime | None] = mapped_column(default=None)
    #: Where the actor console shows this candidate (``channel id/message id``).
    console_ref: Mapped[str | None] = mapped_column(String(64), default=None)
    #: Who decided this candidate's fate (an actor id, or ``timeout``).
    decided_by: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ChannelSetting(Base):
    """What a transport channel is bound to: a persona (and, later, a moderation mode)."""

    __tablename__ = "channel_settings"

    #: ``transport:channel id``, e.g. ``discord:1234``.
    channel_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    guild_key: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    persona: Mapped[str | None] = mapped_column(String(64), default=None)
    #: ``auto`` or ``review``; ``None`` falls back to the persona's mode.
    mode: Mapped[str | None] = mapped_column(String(16), default=None)
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class GuildSetting(Base):
    """A server's actor console and privacy defaults."""

    __tablename__ = "guild_settings"

    guild_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    console_channel_id: Mapped[str | None] = mapped_column(String(32), default=None)
    actor_role_id: Mapped[str | None] = mapped_column(String(32), default=None)
    #: Leads are actors who also hold this role: they mark and import gold items.
    lead_role_id: Mapped[str | None] = mapped_column(String(32), default=None)
    #: Whether members' turns may be exported for training when they have not said.
    consent_default: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class ConversationClaim(Base):
    """One actor at a time holds a conversation, until the claim expires or is released."""

    __tablename__ = "conversation_claims"

    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    actor_id: Mapped[str] = mapped_column(String(128))
    actor_name: Mapped[str] = mapped_column(String(128))
    takeover: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[datetime]


class PendingAction(Base):
    """An actor's action acknowledged before its work is done: a regeneration takes longer than
    Discord's 3 s to answer, so the request is stored first and removed in the same commit that
    records its result. A restart finds what is left and finishes it."""

    __tablename__ = "pending_actions"

    #: The action's idempotency key (the Discord interaction id).
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: ``regenerate``.
    kind: Mapped[str] = mapped_column(String(24))
    candidate_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    actor_id: Mapped[str] = mapped_column(String(128))
    actor_name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class FeedbackEvent(Base):
    """One actor action on a candidate: the input of the correction queue.

    ``idempotency_key`` (e.g. the Discord interaction id) makes a click delivered twice record
    one event. Queue state: ``lease_id`` while a training job holds it, ``consumed_at`` once
    acknowledged.
    """

    __tablename__ = "feedback_events"
    __table_args__ = (
        Index("ix_feedback_events_queue", "consumed_at", "id"),
        Index("ix_feedback_events_candidate_id", "candidate_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: ``approve``, ``rewrite``, ``regenerate``, ``rate``, ``score``, ``takeover``,
    #: ``takeover_message``, ``release``, ``timeout_send``, ``timeout_drop`` or
    #: ``safety_fallback``.
    kind: Mapped[str] = mapped_column(String(24))
    actor_id: Mapped[str] = mapped_column(String(128))
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    candidate_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), default=None
    )
    #: The node the action produced: a rewrite, a regenerated candidate, a takeover message.
    result_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), default=None
    )
    persona: Mapped[str] = mapped_column(String(64))
    persona_version: Mapped[str | None] = mapped_column(String(64), default=None)
    prompt_snapshot_id: Mapped[int | None] = mapped_column(
        ForeignKey("prompt_snapshots.id", ondelete="SET NULL"), default=None
    )
    rating: Mapped[int | None] = mapped_column(Integer, default=None)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    original_text: Mapped[str | None] = mapped_column(Text, default=None)
    new_text: Mapped[str | None] = mapped_column(Text, default=None)
    edit_distance: Mapped[int | None] = mapped_column(Integer, default=None)
    #: A ``score`` event's rubric scores, ``{dimension: 1..5}`` (``rating`` may carry the
    #: overall score beside them), the rubric version they were given under, and the
    #: unsafe/invalid flag every score carries.
    scores: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    rubric_version: Mapped[str | None] = mapped_column(String(16), default=None)
    unsafe: Mapped[bool | None] = mapped_column(Boolean, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    lease_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    consumed_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Lease(Base):
    """A batch of queue records claimed by one training job until ``expires_at``."""

    __tablename__ = "leases"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job: Mapped[str] = mapped_column(String(128))
    token_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_tokens.id", ondelete="SET NULL"), default=None
    )
    expires_at: Mapped[datetime]
    acked_at: Mapped[datetime | None] = mapped_column(default=None)
    #: Set when a user erased data some of its records were built from: the lease can no longer
    #: be acknowledged, and its remaining records return to the queue.
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ErasureTombstone(Base):
    """One record erased by its user's request, kept after the rows it was built from are gone.

    ``id`` orders the erasure feed (rows are inserted under a table lock, so ids are committed
    in order); ``record_key`` names the rows (see :mod:`feedback.record_ids`), from which the
    feed derives the pseudonymous record id with the API's secret.
    """

    __tablename__ = "erasure_tombstones"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_key: Mapped[str] = mapped_column(String(80))
    #: The erased user (as in ``user_privacy``, which keeps it too); sent as its pseudonym.
    user_id: Mapped[str] = mapped_column(String(128))
    erased_at: Mapped[datetime]


class ReviewItem(Base):
    """A finished turn's reply in the review queue, waiting for ``reviews_needed`` verdicts.

    ``candidate_id`` is the reply the user received; one item per reply. ``live_actor_id``
    decided it live and may not review it. ``gold_id`` is set when the item serves a gold item.
    """

    __tablename__ = "review_items"
    __table_args__ = (
        Index("ix_review_items_status_id", "status", "id"),
        Index("ix_review_items_conversation_id", "conversation_id"),
        Index("ix_review_items_gold_id", "gold_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    candidate_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), unique=True
    )
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    live_actor_id: Mapped[str | None] = mapped_column(String(128), default=None)
    #: See :data:`ReviewReason`.
    reason: Mapped[str] = mapped_column(String(16))
    reviews_needed: Mapped[int] = mapped_column(Integer)
    #: See :data:`ReviewStatus`.
    status: Mapped[str] = mapped_column(String(16), default="open")
    gold_id: Mapped[int | None] = mapped_column(
        ForeignKey("gold_items.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    decided_at: Mapped[datetime | None] = mapped_column(default=None)


class ReviewLease(Base):
    """An actor's hold on a review item until ``expires_at``; an expired lease is free."""

    __tablename__ = "review_leases"

    item_id: Mapped[int] = mapped_column(
        ForeignKey("review_items.id", ondelete="CASCADE"), primary_key=True
    )
    actor_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Review(Base):
    """One actor's verdict on a review item: overall rating, rubric scores, unsafe flag, and
    whether the reply was acceptable. One per actor per item. ``leased_at`` is when the reviewer
    got the item (time to decision: ``created_at - leased_at``)."""

    __tablename__ = "reviews"
    __table_args__ = (
        UniqueConstraint("item_id", "actor_id"),
        Index("ix_reviews_actor_id", "actor_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id", ondelete="CASCADE"))
    actor_id: Mapped[str] = mapped_column(String(128))
    rating: Mapped[int] = mapped_column(Integer)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)
    unsafe: Mapped[bool] = mapped_column(Boolean)
    acceptable: Mapped[bool] = mapped_column(Boolean)
    rubric_version: Mapped[str] = mapped_column(String(16))
    leased_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class GoldItem(Base):
    """A lead's reference verdict on a reply, against which reviewers' accuracy is measured."""

    __tablename__ = "gold_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    candidate_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), unique=True
    )
    rating: Mapped[int | None] = mapped_column(Integer, default=None)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)
    unsafe: Mapped[bool] = mapped_column(Boolean)
    acceptable: Mapped[bool] = mapped_column(Boolean)
    rubric_version: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ApiToken(Base):
    """A trainer's bearer token, stored as a SHA-256 hash; revoked tokens stop at once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: ``read`` (pull and page) or ``lease`` (also claim and acknowledge batches).
    scope: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class UserPrivacy(Base):
    """A user's consent to training use, and when they asked to be forgotten."""

    __tablename__ = "user_privacy"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: ``None``: not said; the server's default applies.
    consent: Mapped[bool | None] = mapped_column(Boolean, default=None)
    erased_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
