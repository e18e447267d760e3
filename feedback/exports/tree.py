"""Reading conversation trees for export, one user turn at a time, in bounded memory.

A :class:`TurnTree` is one user turn with the assistant nodes under it (the candidates the model
produced, regenerations, actors' rewrites and takeover messages, siblings in id order), the
actor verdicts on each (ratings and tags as labels, approvals, rejections) and the prompt
snapshots they link to. The sent reply is the node in state ``sent`` (or ``approved``, decided
and waiting for delivery).

:func:`iter_turn_trees` is the one read path of exports and API pages: it pages through user
turns by id (keyset pagination, ``batch_size`` turns a page) with five indexed queries a page:
turns, their replies, the events on those replies, the reviews of those replies (review items
and their reviews, see :class:`ReviewSummary`), and the snapshots they use. Each id list
travels as one bound value (a PostgreSQL array, a JSON array on SQLite), and the next page is
read while the caller works on this one. Memory stays flat however large the table is (two
pages at most).

Consent is applied in the turn query: a user's turn is read only if the user said yes
(``user_privacy.consent``), or said nothing in a server channel whose guild's
``consent_default`` is true. A DM or terminal turn needs an explicit yes; erased users are
skipped even if some row of theirs survived.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import (
    Integer,
    String,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    false,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import aliased

from feedback.models import (
    Conversation,
    FeedbackEvent,
    GuildSetting,
    MessageNode,
    PromptSnapshot,
    Review,
    ReviewItem,
    UserPrivacy,
)
from feedback.store import examples_named

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from datetime import datetime

    from sqlalchemy import Select
    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
    from sqlalchemy.sql.elements import ColumnElement

    from feedback.exports.filters import ExportFilter

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ReplyNode",
    "ReviewSummary",
    "Snapshot",
    "TurnTree",
    "count_turns",
    "iter_turn_trees",
]

#: User turns read per page: four queries a page, a few thousand rows in memory.
DEFAULT_BATCH_SIZE = 1000
#: States of the reply that went out, or was decided and waits for delivery.
FINAL_STATES = ("sent", "approved")
#: Event kinds by which an actor turns a candidate down for another reply.
_REJECTING_KINDS = ("rewrite", "regenerate")
_CHANNEL_PREFIX = "channel:"


@dataclass(slots=True)
class Snapshot:
    """A prompt snapshot as stored; ``messages`` is parsed on first use."""

    id: int
    raw_messages: str
    model_name: str
    #: The persona card version that produced the prompt.
    persona_version: str
    raw_params: str
    _parsed: list[dict[str, Any]] | None = None
    _examples_named: bool | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The exact messages the model was sent: the card's system prompt, its example
        dialogue (named ``example_user``/``example_assistant``), the history, a late system
        message named ``context`` (lore and memories) and the user's message."""
        if self._parsed is None:
            self._parsed = orjson.loads(self.raw_messages)
        return self._parsed

    @property
    def examples_named(self) -> bool:
        """Whether the example dialogue can be told from real turns (see
        :func:`feedback.store.examples_named`); prompts stored before the markers cannot."""
        if self._examples_named is None:
            params = orjson.loads(self.raw_params or "{}") or {}
            self._examples_named = examples_named(self.messages, params)
        return self._examples_named


@dataclass(slots=True)
class ReviewSummary:
    """A reply's review item: its status, and each reviewer's verdict in review order."""

    #: ``open``, ``accepted`` or ``disputed``.
    status: str
    #: ``(actor id, overall rating, {dimension: score}, unsafe, acceptable)`` of each review.
    reviews: list[tuple[str, int, dict[str, int], bool, bool]] = field(default_factory=list)


@dataclass(slots=True)
class ReplyNode:
    """An assistant node with the verdicts actors gave it."""

    id: int
    origin: str
    state: str
    author_id: str
    content: str
    snapshot_id: int | None
    decided_by: str | None
    #: ``None`` when the tree was read with ``times=False``.
    created_at: datetime | None
    #: ``(actor id, rating or None, tags)`` of each ``rate`` event, in event order.
    ratings: list[tuple[str, int | None, tuple[str, ...]]] = field(default_factory=list)
    #: Actors who approved this node (hold timeouts are not actors).
    approved_by: list[str] = field(default_factory=list)
    #: The actor who turned it down by rewriting or regenerating it, and the replacing node.
    rejected_by: str | None = None
    replaced_by: int | None = None
    #: For a rewrite: the node it rewrote.
    rewrite_of: int | None = None
    #: Live rubric scores (``score`` events), the latest per actor: actor id ->
    #: ``({dimension: score}, unsafe)``; ``None`` when nobody scored it live.
    scored: dict[str, tuple[dict[str, int], bool | None]] | None = None
    #: Its review item, if it was queued for review.
    review: ReviewSummary | None = None

    @property
    def is_final(self) -> bool:
        """The reply that went out (or was decided to)."""
        return self.state in FINAL_STATES

    @property
    def is_model_output(self) -> bool:
        """A model candidate (not a canned fallback, a greeting or an actor's text)."""
        return self.origin == "model"

    @property
    def trainable(self) -> bool:
        """Usable as a training target or alternative: model output or an actor's text."""
        return self.origin in ("model", "rewrite", "takeover")

    @property
    def mean_rating(self) -> float | None:
        """The mean of the actors' ratings, or ``None`` if nobody rated it."""
        if not self.ratings:
            return None
        values = [rating for _, rating, _ in self.ratings if rating is not None]
        return sum(values) / len(values) if values else None

    @property
    def rating_count(self) -> int:
        """How many ratings (not tag-only events) it has."""
        return sum(rating is not None for _, rating, _ in self.ratings)

    @property
    def tag_counts(self) -> dict[str, int]:
        """How many rate events put each tag on it."""
        counts: dict[str, int] = {}
        for _, _, tags in self.ratings:
            for tag in tags:
                counts[tag] = counts.get(tag, 0) + 1
        return counts

    @property
    def endorsed(self) -> bool:
        """An actor chose this text: wrote it (rewrite, takeover) or approved it."""
        return self.origin in ("rewrite", "takeover") or bool(self.approved_by)

    def carries_any(self, tags: tuple[str, ...]) -> bool:
        """Whether a rate event put one of ``tags`` on it (always true for no tags)."""
        if not tags:
            return True
        return any(tag in event_tags for _, _, event_tags in self.ratings for tag in tags)


@dataclass(slots=True)
class TurnTree:
    """One user turn and its replies (siblings in id order), ready to turn into records."""

    user_turn_id: int
    conversation_id: int
    persona: str
    scope: str
    user_id: str
    user_name: str
    content: str
    #: ``None`` when the tree was read with ``times=False``.
    created_at: datetime | None
    replies: list[ReplyNode] = field(default_factory=list)
    snapshots: dict[int, Snapshot] = field(default_factory=dict)

    @property
    def is_group(self) -> bool:
        """A server channel (user lines in prompts carry the speaker's name)."""
        return self.scope.startswith(_CHANNEL_PREFIX)

    @property
    def final(self) -> ReplyNode | None:
        """The reply that went out (the latest if several were marked), or ``None``."""
        for node in reversed(self.replies):
            if node.state in FINAL_STATES:
                return node
        return None

    def node(self, node_id: int) -> ReplyNode | None:
        """The sibling with this id, if it is under this turn."""
        for node in self.replies:
            if node.id == node_id:
                return node
        return None

    def snapshot_for(self, node: ReplyNode) -> Snapshot | None:
        """The node's prompt snapshot, else the first sibling's (a takeover has none)."""
        if node.snapshot_id is not None and node.snapshot_id in self.snapshots:
            return self.snapshots[node.snapshot_id]
        for sibling in self.replies:
            if sibling.snapshot_id is not None and sibling.snapshot_id in self.snapshots:
                return self.snapshots[sibling.snapshot_id]
        return None

    @property
    def reviewed(self) -> bool:
        """Whether any actor gave a verdict on a reply of this turn."""
        return any(
            node.ratings
            or node.approved_by
            or node.rejected_by
            or node.origin == "takeover"
            or node.origin == "rewrite"
            for node in self.replies
        )


def consent_rule(flt: ExportFilter) -> tuple[list[Any], ColumnElement[bool]]:
    """The outer joins and the condition that keep only turns whose author consented.

    Shared with the lease queue (:mod:`feedback.queue`), so both apply the same rule.
    """
    joins: list[Any] = [
        (UserPrivacy, UserPrivacy.user_id == MessageNode.author_id),
        (GuildSetting, GuildSetting.guild_key == Conversation.guild_key),
    ]
    condition = and_(
        or_(UserPrivacy.erased_at.is_(None), MessageNode.created_at > UserPrivacy.erased_at),
        or_(
            UserPrivacy.consent.is_(True),
            and_(
                UserPrivacy.consent.is_(None),
                Conversation.scope.startswith(_CHANNEL_PREFIX),
                func.coalesce(GuildSetting.consent_default, false()).is_(True),
            ),
        ),
    )
    return joins, condition


def _filter_conditions(flt: ExportFilter) -> list[ColumnElement[bool]]:
    """What ``--since``, ``--until`` and ``--persona`` keep (on the turn and its conversation)."""
    conditions: list[ColumnElement[bool]] = []
    if flt.since is not None:
        conditions.append(MessageNode.created_at >= flt.since)
    if flt.until is not None:
        conditions.append(MessageNode.created_at < flt.until)
    if flt.persona is not None:
        conditions.append(Conversation.persona == flt.persona)
    return conditions


def _turn_query(flt: ExportFilter, *, times: bool = True, min_replies: int = 1) -> Any:
    """User turns that pass the filter and consent, and with ``min_replies`` above 1 have at
    least that many assistant replies (columns: id, conversation id, author id and name,
    content, persona, scope, and with ``times`` the creation time)."""
    joins, consent = consent_rule(flt)
    columns: list[Any] = [
        MessageNode.id,
        MessageNode.conversation_id,
        MessageNode.author_id,
        MessageNode.author_name,
        MessageNode.content,
        Conversation.persona,
        Conversation.scope,
    ]
    if times:
        columns.append(MessageNode.created_at)
    query = select(*columns).join(Conversation, Conversation.id == MessageNode.conversation_id)
    for target, on in joins:
        query = query.outerjoin(target, on)
    conditions = [MessageNode.role == "user", *_filter_conditions(flt), consent]
    if min_replies > 1:
        reply = aliased(MessageNode)
        replies = (
            select(func.count())
            .where(reply.parent_id == MessageNode.id, reply.role == "assistant")
            .scalar_subquery()
        )
        conditions.append(replies >= min_replies)
    return query.where(*conditions)


async def count_turns(
    sessions: async_sessionmaker[AsyncSession], flt: ExportFilter, *, min_replies: int = 1
) -> int:
    """How many user turns the filter selects (the total of a progress bar; pass the
    ``min_replies`` the export reads with, see :func:`iter_turn_trees`)."""
    subquery = _turn_query(flt, times=False, min_replies=min_replies).subquery()
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(subquery)) or 0)


_REPLY_COLUMNS = (
    MessageNode.id,
    MessageNode.parent_id,
    MessageNode.origin,
    MessageNode.state,
    MessageNode.author_id,
    MessageNode.content,
    MessageNode.prompt_snapshot_id,
    MessageNode.decided_by,
)
_EVENT_COLUMNS = (
    FeedbackEvent.candidate_id,
    FeedbackEvent.kind,
    FeedbackEvent.actor_id,
    FeedbackEvent.rating,
    cast(FeedbackEvent.tags, Text),
    FeedbackEvent.result_id,
    cast(FeedbackEvent.scores, Text),
    FeedbackEvent.unsafe,
)
_REVIEW_COLUMNS = (
    ReviewItem.candidate_id,
    ReviewItem.status,
    Review.actor_id,
    Review.rating,
    cast(Review.scores, Text),
    Review.unsafe,
    Review.acceptable,
)
_SNAPSHOT_COLUMNS = (
    PromptSnapshot.id,
    cast(PromptSnapshot.messages, Text),
    PromptSnapshot.model_name,
    PromptSnapshot.persona_version,
    cast(PromptSnapshot.params, Text),
)


def _in_ids(column: Any, name: str, dialect: str) -> ColumnElement[bool]:
    """``column IN (ids)`` with the whole list in one bound text value (see :func:`_id_text`).

    PostgreSQL casts it to an integer array (``= ANY(CAST(:ids AS INTEGER[]))``), SQLite reads
    it as a JSON array with ``json_each``; a list of thousands of separate parameters costs
    more to render, send and plan than the rows it selects. Those are the two backends
    Greenroom runs on.
    """
    if dialect == "postgresql":
        return column == any_(cast(bindparam(name, type_=Text), postgresql.ARRAY(Integer)))
    if dialect == "sqlite":
        values = select(literal_column("value")).select_from(
            func.json_each(bindparam(name, type_=String))
        )
        return column.in_(values.scalar_subquery())
    raise ValueError(f"exports read SQLite or PostgreSQL, not {dialect}")


def _id_text(ids: list[int], dialect: str) -> str:
    """The bound value of an :func:`_in_ids` list: ``{1,2}`` (a PostgreSQL array literal) or
    ``[1,2]`` (JSON). Text, because asyncpg's encoding of a Python list as an array checks
    every element and took longer than the query it fed."""
    joined = ",".join(map(str, ids))
    return f"{{{joined}}}" if dialect == "postgresql" else f"[{joined}]"


@dataclass(frozen=True, slots=True)
class _DriverQuery:
    """A SELECT with one id-list parameter, compiled once, run on the driver connection.

    The bulk reads skip SQLAlchemy's result layer (its rows, and a compiled-cache lookup per
    statement; about 7 % of a SQLite export's instructions): rows come back as the driver's
    tuples (aiosqlite) or records (asyncpg), read once by position, and only columns whose
    type converts values (timestamps) pass through their result processor.
    """

    sql: str
    dialect: str
    #: ``(column index, result processor)`` for the columns that need converting.
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]

    @classmethod
    def compile(cls, statement: Select[Any], dialect: Dialect) -> _DriverQuery:
        compiled = statement.compile(dialect=dialect)
        processors = []
        for index, column in enumerate(statement.selected_columns):
            processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if processor is not None:
                processors.append((index, processor))
        return cls(compiled.string, dialect.name, tuple(processors))

    async def rows(self, driver: Any, ids: list[int]) -> list[Any]:
        """The rows for ``ids`` (``driver``: the connection's aiosqlite or asyncpg connection)."""
        bound = _id_text(ids, self.dialect)
        if self.dialect == "sqlite":
            rows: list[Any] = list(await driver.execute_fetchall(self.sql, (bound,)))
        else:
            rows = await driver.fetch(self.sql, bound)
        if self.processors:
            rows = [list(row) for row in rows]
            for row in rows:
                for index, processor in self.processors:
                    row[index] = processor(row[index])
        return rows


@dataclass(frozen=True, slots=True)
class _PageQueries:
    """The four follow-up queries of a page, for one dialect, with or without times."""

    replies: _DriverQuery
    events: _DriverQuery
    reviews: _DriverQuery
    snapshots: _DriverQuery


@lru_cache(maxsize=16)
def _page_queries(dialect: Dialect, times: bool) -> _PageQueries:
    name = dialect.name
    reply_columns: tuple[Any, ...] = _REPLY_COLUMNS
    if times:
        reply_columns = (*reply_columns, MessageNode.created_at)
    # A constant, not a bound value: each query's only parameter is its id list.
    assistant = literal_column("'assistant'")
    return _PageQueries(
        replies=_DriverQuery.compile(
            select(*reply_columns)
            .where(_in_ids(MessageNode.parent_id, "turn_ids", name))
            .where(MessageNode.role == assistant)
            .order_by(MessageNode.id),
            dialect,
        ),
        events=_DriverQuery.compile(
            select(*_EVENT_COLUMNS)
            .where(_in_ids(FeedbackEvent.candidate_id, "node_ids", name))
            .order_by(FeedbackEvent.id),
            dialect,
        ),
        reviews=_DriverQuery.compile(
            select(*_REVIEW_COLUMNS)
            .select_from(ReviewItem)
            .outerjoin(Review, Review.item_id == ReviewItem.id)
            .where(_in_ids(ReviewItem.candidate_id, "node_ids", name))
            .order_by(ReviewItem.id, Review.id),
            dialect,
        ),
        snapshots=_DriverQuery.compile(
            select(*_SNAPSHOT_COLUMNS).where(_in_ids(PromptSnapshot.id, "snapshot_ids", name)),
            dialect,
        ),
    )


def _tags(raw: str | None) -> tuple[str, ...]:
    if not raw or raw == "[]":
        return ()
    return tuple(orjson.loads(raw))


def _scores(raw: str | None) -> dict[str, int]:
    if not raw or raw in ("null", "{}"):
        return {}
    return {str(name): value for name, value in orjson.loads(raw).items() if type(value) is int}


async def _read_page(
    connection: AsyncConnection, turn_rows: list[Any], *, times: bool = True
) -> list[TurnTree]:
    """The trees of ``turn_rows``: four more queries (replies, their events, their reviews,
    snapshots)."""
    queries = _page_queries(connection.dialect, times)
    driver = (await connection.get_raw_connection()).driver_connection
    trees: dict[int, TurnTree] = {
        row[0]: TurnTree(
            row[0], row[1], row[5], row[6], row[2], row[3], row[4], row[7] if times else None
        )
        for row in turn_rows
    }
    nodes: dict[int, ReplyNode] = {}
    snapshot_ids: set[int] = set()
    for row in await queries.replies.rows(driver, list(trees)):
        node = ReplyNode(
            row[0],
            row[2],
            row[3],
            row[4],
            row[5],
            row[6],
            row[7],
            row[8] if times else None,
        )
        nodes[node.id] = node
        trees[row[1]].replies.append(node)
        if node.snapshot_id is not None:
            snapshot_ids.add(node.snapshot_id)
    if not nodes:
        return list(trees.values())
    node_ids = list(nodes)
    for (
        candidate_id,
        kind,
        actor_id,
        rating,
        tags,
        result_id,
        scores,
        unsafe,
    ) in await queries.events.rows(driver, node_ids):
        node = nodes.get(candidate_id)
        if node is None:
            continue
        if kind == "rate":
            node.ratings.append((actor_id, rating, _tags(tags)))
        elif kind == "approve":
            node.approved_by.append(actor_id)
        elif kind in _REJECTING_KINDS:
            node.rejected_by = actor_id
            node.replaced_by = result_id
            if kind == "rewrite" and result_id in nodes:
                nodes[result_id].rewrite_of = node.id
        elif kind == "score":
            if node.scored is None:
                node.scored = {}
            node.scored[actor_id] = (_scores(scores), None if unsafe is None else bool(unsafe))
    for (
        candidate_id,
        status,
        actor_id,
        rating,
        scores,
        unsafe,
        acceptable,
    ) in await queries.reviews.rows(driver, node_ids):
        node = nodes.get(candidate_id)
        if node is None:
            continue
        if node.review is None:
            node.review = ReviewSummary(status)
        if actor_id is not None:
            node.review.reviews.append(
                (actor_id, rating, _scores(scores), bool(unsafe), bool(acceptable))
            )
    if snapshot_ids:
        rows = await queries.snapshots.rows(driver, sorted(snapshot_ids))
        by_id = {row[0]: Snapshot(row[0], row[1], row[2], row[3], row[4]) for row in rows}
        for tree in trees.values():
            for node in tree.replies:
                snapshot_id = node.snapshot_id
                if snapshot_id is not None and snapshot_id in by_id:
                    tree.snapshots[snapshot_id] = by_id[snapshot_id]
    return list(trees.values())


async def _read_turns(
    sessions: async_sessionmaker[AsyncSession], base: Any, position: int, times: bool
) -> list[TurnTree]:
    """One page in its own short transaction: the trees of the turns after ``position``."""
    async with sessions() as session:
        connection = await session.connection()
        turn_rows = (await connection.execute(base.where(MessageNode.id > position))).all()
        if not turn_rows:
            return []
        return await _read_page(connection, turn_rows, times=times)


async def iter_turn_trees(
    sessions: async_sessionmaker[AsyncSession],
    flt: ExportFilter,
    *,
    after_id: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    times: bool = True,
    prefetch: bool = True,
    read_ahead_until: int | None = None,
    min_replies: int = 1,
) -> AsyncIterator[list[TurnTree]]:
    """Pages of :class:`TurnTree` in user-turn id order, after ``after_id``.

    Each page is read in its own short transaction, so a long export never holds a database
    snapshot open; turns added while it runs are picked up if their id is still ahead.
    ``times=False`` leaves ``created_at`` out (``None``): only the oasst format shows times.
    With ``min_replies`` above 1, turns with fewer assistant replies are left out (the database
    skips them): preference pairs need two siblings, and most turns have one reply.

    With ``prefetch`` the next page is read by a background task while the caller works on
    this one (at most two pages in memory). It only progresses while the caller awaits
    something, so a caller that spends long on a page should ``await asyncio.sleep(0)`` now
    and then. The task is cancelled when the iteration is closed early. A caller that needs
    about N turns passes ``read_ahead_until=N``: once N turns are read, the next page is read
    only when asked for, so none is read to be thrown away.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    base = (
        _turn_query(flt, times=times, min_replies=min_replies)
        .order_by(MessageNode.id)
        .limit(batch_size)
    )
    position = after_id if after_id is not None else 0
    turns_read = 0
    pending: asyncio.Task[list[TurnTree]] | None = None
    try:
        while True:
            if pending is not None:
                trees = await pending
                pending = None
            else:
                trees = await _read_turns(sessions, base, position, times)
            if not trees:
                return
            position = trees[-1].user_turn_id
            turns_read += len(trees)
            more = len(trees) == batch_size
            if more and prefetch and (read_ahead_until is None or turns_read < read_ahead_until):
                pending = asyncio.ensure_future(_read_turns(sessions, base, position, times))
            yield trees
            if not more:
                return
    finally:
        if pending is not None:
            pending.cancel()
            # Nobody wants that page any more: neither its rows nor its error.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
