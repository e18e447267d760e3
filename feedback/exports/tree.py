"""Reading conversation trees for export, one user turn at a time, in bounded memory.

A :class:`TurnTree` is one user turn with the assistant nodes under it (the candidates the model
produced, regenerations, actors' rewrites and takeover messages, siblings in id order), the
actor verdicts on each (ratings and tags as labels, approvals, rejections) and the prompt
snapshots they link to. The sent reply is the node in state ``sent`` (or ``approved``, decided
and waiting for delivery).

:func:`iter_turn_trees` pages through user turns by id (keyset pagination, ``batch_size`` turns
a page) with four indexed queries a page: turns, their replies, the events on those replies, and
the snapshots they use. Each id list travels as one bound value (a PostgreSQL array, a JSON
array on SQLite), and the next page is read while the caller works on this one. Memory stays
flat however large the table is (two pages at most).

Consent is applied in the turn query: a user's turn is read only if the user said yes
(``user_privacy.consent``), or said nothing in a server channel whose guild's
``consent_default`` is true. A DM or terminal turn needs an explicit yes; erased users are
skipped even if some row of theirs survived.

A format built ahead (:mod:`feedback.exports.ahead`) is read another way, with the same trees
in the same order: one statement a page reads its kept rows in turn order (by
``ix_turn_records_kind``, with the same consent rule) and the queued turns, and only the queued
ones are read as trees. So a page of a preference format no longer walks every user turn to
count its replies, nor reads the turns that give no record.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import (
    Integer,
    LargeBinary,
    String,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import aliased
from sqlalchemy.types import NullType

from feedback.database import dialect_name
from feedback.models import (
    Conversation,
    FeedbackEvent,
    GuildSetting,
    MessageNode,
    PromptSnapshot,
    RecordBuild,
    TurnBuildQueue,
    TurnRecords,
    UserPrivacy,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from datetime import datetime

    from sqlalchemy import Select
    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
    from sqlalchemy.sql.elements import ColumnElement

    from feedback.exports.cache import CacheKey
    from feedback.exports.filters import ExportFilter

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "KeptTurn",
    "ReplyNode",
    "Snapshot",
    "TurnTree",
    "count_turns",
    "iter_turn_trees",
    "nth_turn_id",
    "turn_id_range",
]

_log = logging.getLogger(__name__)

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
    _parsed: list[dict[str, Any]] | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The exact messages the model was sent (system, history, the user's message)."""
        if self._parsed is None:
            self._parsed = orjson.loads(self.raw_messages)
        return self._parsed


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


class KeptTurn:
    """A user turn whose kept records are valid: served as they are, not built (see
    :mod:`feedback.exports.cache`). Only its ids and records; cheaper to make than a tree."""

    __slots__ = ("conversation_id", "records", "size", "user_turn_id")

    def __init__(self, user_turn_id: int, conversation_id: int, records: bytes) -> None:
        self.user_turn_id = user_turn_id
        self.conversation_id = conversation_id
        #: The records as JSON lines, each ending in a newline (none: empty).
        self.records = records
        #: How many records. Most turns have one: finding the first newline at the end (memchr)
        #: takes an eighth of counting newlines (8 ms of a 26 MB oasst page).
        end = records.find(b"\n")
        self.size = 0 if end < 0 else 1 if end == len(records) - 1 else records.count(b"\n")


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
    #: Read with a cache key: the turn's revision (what its records, once built, are kept at).
    revision: int = 0

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


def _turn_query(
    flt: ExportFilter,
    *,
    times: bool = True,
    min_replies: int = 1,
    cache: CacheKey | None = None,
    any_author: bool = False,
) -> Any:
    """User turns that pass the filter and consent (``any_author``: whoever wrote them), and
    with ``min_replies`` above 1 have at least that many assistant replies (columns: id,
    conversation id, author id and name, content, persona, scope, with ``times`` the creation
    time, with ``cache`` the revision and the body of the turn's valid kept records, or null).

    The kept body is a correlated subquery, not an outer join: each is one primary-key lookup,
    where PostgreSQL planned the join as a merge over the whole ``turn_records`` index (800 ms
    a page at a million events)."""
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
        # With kept records, the time is converted only for the turns that are built.
        columns.append(
            MessageNode.created_at
            if cache is None
            else type_coerce(MessageNode.created_at, NullType()).label("created_at")
        )
    if cache is not None:
        kept = (
            select(TurnRecords.body)
            .where(
                TurnRecords.user_turn_id == MessageNode.id,
                TurnRecords.kind == cache.kind,
                TurnRecords.build_key == cache.build_key,
                TurnRecords.revision == MessageNode.revision,
            )
            .correlate(MessageNode)
            .scalar_subquery()
        )
        columns += [MessageNode.revision, kept.label("kept_body")]
    query = select(*columns).join(Conversation, Conversation.id == MessageNode.conversation_id)
    conditions = [MessageNode.role == "user", *_filter_conditions(flt)]
    if not any_author:
        for target, on in joins:
            query = query.outerjoin(target, on)
        conditions.append(consent)
    if min_replies > 1:
        reply = aliased(MessageNode)
        replies = (
            select(func.count())
            .where(reply.parent_id == MessageNode.id, reply.role == "assistant")
            .scalar_subquery()
        )
        conditions.append(replies >= min_replies)
    return query.where(*conditions)


async def turn_id_range(
    sessions: async_sessionmaker[AsyncSession], flt: ExportFilter
) -> tuple[int | None, int | None]:
    """The first and the last id of the user turns the filter selects (``None`` if none)."""
    query = _turn_query(flt, times=False)
    async with sessions() as session:
        first = await session.scalar(query.order_by(MessageNode.id).limit(1))
        last = await session.scalar(query.order_by(MessageNode.id.desc()).limit(1))
    return first, last


async def nth_turn_id(
    sessions: async_sessionmaker[AsyncSession],
    flt: ExportFilter,
    *,
    after_id: int | None,
    n: int,
    min_replies: int = 1,
) -> int | None:
    """The id of the ``n``-th user turn after ``after_id`` that the filter selects (with
    ``min_replies``, as :func:`iter_turn_trees` reads them), or ``None`` if there are fewer.

    One indexed query that skips ``n - 1`` turns: where a reader's share of a range ends.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    query = _turn_query(flt, times=False, min_replies=min_replies)
    if after_id is not None:
        query = query.where(MessageNode.id > after_id)
    query = query.order_by(MessageNode.id).offset(n - 1).limit(1)
    async with sessions() as session:
        return await session.scalar(query)


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
)
_SNAPSHOT_COLUMNS = (
    PromptSnapshot.id,
    cast(PromptSnapshot.messages, Text),
    PromptSnapshot.model_name,
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
    """The three follow-up queries of a page, for one dialect, with or without times."""

    replies: _DriverQuery
    events: _DriverQuery
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
        snapshots=_DriverQuery.compile(
            select(*_SNAPSHOT_COLUMNS).where(_in_ids(PromptSnapshot.id, "snapshot_ids", name)),
            dialect,
        ),
    )


@lru_cache(maxsize=4)
def _time_processor(dialect: Dialect) -> Callable[[Any], Any]:
    """What turns a raw ``created_at`` value of ``dialect`` into an aware datetime."""
    column_type = MessageNode.created_at.type.dialect_impl(dialect)
    processor = column_type.result_processor(dialect, None)
    return processor if processor is not None else (lambda value: value)


def _tags(raw: str | None) -> tuple[str, ...]:
    if not raw or raw == "[]":
        return ()
    return tuple(orjson.loads(raw))


async def _read_page(
    connection: AsyncConnection,
    turn_rows: list[Any],
    *,
    times: bool = True,
    cached: bool = False,
) -> list[TurnTree | KeptTurn]:
    """The trees of ``turn_rows``: three more queries (replies, their events, snapshots) for
    the turns without valid kept records (``cached``: the rows carry them, see
    :func:`_turn_query`; the turns with them are :class:`KeptTurn`)."""
    queries = _page_queries(connection.dialect, times)
    driver = (await connection.get_raw_connection()).driver_connection
    trees: dict[int, TurnTree | KeptTurn] = {}
    to_read: dict[int, TurnTree] = {}
    base = 8 if times else 7
    to_time = _time_processor(connection.dialect) if cached and times else None
    for row in turn_rows:
        if cached and row[base + 1] is not None:
            trees[row[0]] = KeptTurn(row[0], row[1], bytes(row[base + 1]))
            continue
        tree = trees[row[0]] = TurnTree(
            row[0], row[1], row[5], row[6], row[2], row[3], row[4], row[7] if times else None
        )
        if cached:
            tree.revision = row[base]
            if to_time is not None:
                tree.created_at = to_time(tree.created_at)
        to_read[row[0]] = tree
    if not to_read:
        return list(trees.values())
    nodes: dict[int, ReplyNode] = {}
    snapshot_ids: set[int] = set()
    for row in await queries.replies.rows(driver, list(to_read)):
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
    for candidate_id, kind, actor_id, rating, tags, result_id in await queries.events.rows(
        driver, list(nodes)
    ):
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
    if snapshot_ids:
        rows = await queries.snapshots.rows(driver, sorted(snapshot_ids))
        by_id = {row[0]: Snapshot(row[0], row[1], row[2]) for row in rows}
        for tree in to_read.values():
            for node in tree.replies:
                snapshot_id = node.snapshot_id
                if snapshot_id is not None and snapshot_id in by_id:
                    tree.snapshots[snapshot_id] = by_id[snapshot_id]
    return list(trees.values())


@dataclass(slots=True)
class _Batch:
    """One read of :func:`iter_turn_trees`: the trees, where the next read starts, and whether
    turns may remain after it."""

    trees: list[TurnTree | KeptTurn]
    position: int
    more: bool
    #: A read that skipped rows (see :func:`_read_kept`): where it began, ``None`` if the
    #: rows to skip ran out first.
    start: int | None = None


def _kept_statement(
    flt: ExportFilter,
    cache: CacheKey,
    position: int,
    last_id: int | None,
    size: int,
    *,
    scan_first: bool,
    skip: int = 0,
) -> tuple[Any, dict[str, int]]:
    """:func:`_kept_query` and the values of its parameters."""
    values = {"position": position, "size": size}
    if last_id is not None:
        values["last_id"] = last_id
    if skip:
        values["offset"], values["scan_size"] = skip - 1, size + 1
    query = _kept_query(flt, cache, last_id is not None, scan_first=scan_first, skip=skip > 0)
    return query, values


@lru_cache(maxsize=64)
def _kept_query(
    flt: ExportFilter, cache: CacheKey, up_to_last_id: bool, *, scan_first: bool, skip: bool
) -> Any:
    """One statement (so one snapshot on both backends) of ``(source, turn id, conversation id,
    body)`` rows, after ``position`` and up to ``last_id`` (its parameters, see
    :func:`_kept_statement`; made once for the pages of one filter: it took an eighth of the
    CPU time of an oasst page, a statement a batch):

    - source 0 if ``cache``'s kind is built ahead under its key;
    - source 1 for each valid kept row with records of the selected turns, the next ``size``
      of them; with ``scan_first``, of the kind's next ``size`` rows, whose last turn id and
      number come in one row of source 3 (and source 4 for those no longer valid);
    - source 2 for each of the next ``size`` queued turns.

    ``scan_first`` (PostgreSQL) takes the kind's rows by ``ix_turn_records_kind`` before any
    join, so a batch costs ``size`` primary-key lookups whatever the statistics say: planned
    with the joins first, PostgreSQL scanned and sorted the whole table for every batch (1.8 s
    a batch, against 60 ms). SQLite plans the joins-first form well, and took 1.6-1.9x as long
    a page with the scan first (likely because it reads that common table expression twice).

    ``skip`` (with ``scan_first``) starts after the kind's ``offset + 1``-th row after
    ``position`` instead, whose turn id comes as source 5 (none if there are fewer): the read
    after the next, made while the next is being read (see :func:`iter_turn_trees`). That
    row's own kept row comes too, as the scan's first; the caller drops it.
    """
    joins, consent = consent_rule(flt)
    turn, queued_turn = TurnRecords.user_turn_id, TurnBuildQueue.user_turn_id
    position, size = bindparam("position", type_=Integer), bindparam("size", type_=Integer)
    kept_span, queued_span = [turn > position], [queued_turn > position]
    if up_to_last_id:
        last_id = bindparam("last_id", type_=Integer)
        kept_span.append(turn <= last_id)
        queued_span.append(queued_turn <= last_id)
    of_kind = (TurnRecords.kind == cache.kind, TurnRecords.build_key == cache.build_key)
    parts: list[Any] = [
        select(literal(0).label("source"), literal(0).label("turn_id"), *_no_tree()).where(
            RecordBuild.kind == cache.kind, RecordBuild.build_key == cache.build_key
        )
    ]
    source: Any = TurnRecords
    turn_id, revision, body = turn, TurnRecords.revision, TurnRecords.body
    if scan_first:
        scan = select(turn.label("turn_id"), TurnRecords.revision, TurnRecords.body).where(
            *of_kind, *kept_span
        )
        if skip:  # the first row scanned is where this read starts
            scan = (
                scan.order_by(turn)
                .offset(bindparam("offset", type_=Integer))
                .limit(bindparam("scan_size", type_=Integer))
            )
        else:
            scan = scan.order_by(turn).limit(size)
        source = scan.cte("scanned")
        turn_id, revision, body = source.c.turn_id, source.c.revision, source.c.body
        parts.append(
            select(
                literal(3).label("source"),
                func.max(turn_id).label("turn_id"),
                (func.count() - (1 if skip else 0)).label("conversation_id"),
                cast(null(), LargeBinary).label("body"),
            ).select_from(source)
        )
        if skip:
            start = select(func.min(turn_id)).select_from(source).scalar_subquery()
            parts.append(select(literal(5), start, *_no_tree()))
            queued_span[0] = queued_turn > start
    fresh = MessageNode.revision == revision
    # Scanned first, a kept row whose turn changed since comes as source 4 (its turn is queued,
    # see feedback.exports.ahead). Compared in the join instead, the revisions made PostgreSQL
    # expect a few rows where it gets thousands, and join each to conversations and users by
    # index: the oasst statement of a 10,000-record page took 96 ms, against 67 with hash joins.
    kind_of_row = case((fresh, 1), else_=4) if scan_first else literal(1)
    on_turn = MessageNode.id == turn_id
    kept = (
        select(
            kind_of_row.label("source"),
            turn_id.label("turn_id"),
            MessageNode.conversation_id.label("conversation_id"),
            body.label("body"),
        )
        .select_from(source)
        .join(MessageNode, on_turn if scan_first else and_(on_turn, fresh))
        .join(Conversation, Conversation.id == MessageNode.conversation_id)
    )
    for target, on in joins:
        kept = kept.outerjoin(target, on)
    # A turn that gives no record has an empty row: nothing to read.
    kept = kept.where(func.length(body) > 0, consent, *_filter_conditions(flt))
    if scan_first:
        parts.append(kept)
    else:
        parts.append(
            select(kept.where(*of_kind, *kept_span).order_by(turn).limit(size).cte("kept"))
        )
    parts.append(
        select(
            select(literal(2).label("source"), queued_turn.label("turn_id"), *_no_tree())
            .where(*queued_span)
            .order_by(queued_turn)
            .limit(size)
            .cte("queued")
        )
    )
    return union_all(*parts)


def _no_tree() -> tuple[Any, Any]:
    """The conversation id and body columns of a :func:`_kept_statement` row that has none."""
    return (
        cast(null(), Integer).label("conversation_id"),
        cast(null(), LargeBinary).label("body"),
    )


async def _read_kept(
    sessions: async_sessionmaker[AsyncSession],
    flt: ExportFilter,
    cache: CacheKey,
    turns: Any,
    position: int,
    last_id: int | None,
    size: int,
    times: bool,
    skip: int = 0,
) -> _Batch | None:
    """The next batch of a kind built ahead, read from its kept rows, with the queued turns
    among them read from ``turns`` (the usual turn query) and merged in id order; ``None`` if
    the kind is not built ahead under ``cache``'s key (any more). With ``skip`` (PostgreSQL),
    the batch after the kind's ``skip``-th kept row after ``position``, which its ``start``
    names.

    The turns served from kept rows are :class:`KeptTurn`. Why this is every turn: see
    :mod:`feedback.exports.ahead` (the kept rows and the queue are read in one statement, so a
    turn that changes meanwhile is in one or the other).
    """
    async with sessions() as session:
        connection = await session.connection()
        dialect = connection.dialect.name
        scan_first = dialect == "postgresql"
        await _plan_for_values(connection)
        query, values = _kept_statement(
            flt, cache, position, last_id, size, scan_first=scan_first, skip=skip
        )
        rows = (await connection.execute(query, values)).all()
        built_ahead, kept, queued = False, [], []
        scan_end, scanned, start = position, 0, None
        for row in rows:
            if row[0] == 1:
                kept.append(row)
            elif row[0] == 2:
                queued.append(row[1])
            elif row[0] == 3:
                scan_end, scanned = row[1] or position, row[2]
            elif row[0] == 0:
                built_ahead = True
            elif row[0] == 5:
                start = row[1]
        if not built_ahead:
            return None
        if skip:
            if start is None:
                return _Batch([], position, True, None)
            position = start  # the scan's first row, so scan_end is at least start
            kept = [row for row in kept if row[1] > start]
        # SQL does not promise the order of a UNION's rows (they come sorted: this is cheap).
        kept.sort(key=itemgetter(1))
        queued.sort()
        if not scan_first and kept:  # joins first: the kept rows are the scan
            scan_end, scanned = kept[-1][1], len(kept)
        # A full part may stop before the other: the batch ends where the first full one does.
        ends = [scan_end] if scanned == size else []
        if len(queued) == size:
            ends.append(queued[-1])
        end = min(ends) if ends else None
        if end is not None:
            del kept[bisect.bisect_right(kept, end, key=itemgetter(1)) :]
            del queued[bisect.bisect_right(queued, end) :]
        trees: list[TurnTree | KeptTurn] = [
            KeptTurn(turn_id, conversation_id, body) for _, turn_id, conversation_id, body in kept
        ]
        kept_ids = {tree.user_turn_id for tree in trees}
        to_build = [turn_id for turn_id in queued if turn_id not in kept_ids]
        if to_build:
            turn_rows = (
                await connection.execute(
                    turns.where(_in_ids(MessageNode.id, "queued_ids", dialect)),
                    {"queued_ids": _id_text(to_build, dialect)},
                )
            ).all()
            if turn_rows:
                built = await _read_page(connection, turn_rows, times=times, cached=True)
                trees = list(heapq.merge(trees, built, key=attrgetter("user_turn_id")))
    last_seen = max([scan_end, *queued])
    return _Batch(trees, end if end is not None else last_seen, end is not None, start)


async def _plan_for_values(connection: AsyncConnection) -> None:
    """On PostgreSQL, plan this transaction's queries of kept records for their values each
    time (``plan_cache_mode``): asyncpg prepares them, and after five runs PostgreSQL may switch
    to a generic plan made while ``turn_records`` looked empty, which scanned the whole table
    for each turn's kept body as it filled (pages of 4-9 s instead of 0.5 s)."""
    if connection.dialect.name == "postgresql":
        await connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")


async def _read_turns(
    sessions: async_sessionmaker[AsyncSession],
    base: Any,
    position: int,
    times: bool,
    cached: bool,
) -> tuple[list[Any], list[TurnTree | KeptTurn]]:
    """One page in its own short transaction: the turn rows after ``position``, and the trees
    (with kept records, planned for the values, see :func:`_plan_for_values`)."""
    async with sessions() as session:
        connection = await session.connection()
        if cached:
            await _plan_for_values(connection)
        turn_rows = (await connection.execute(base.where(MessageNode.id > position))).all()
        if not turn_rows:
            return turn_rows, []
        trees = await _read_page(connection, turn_rows, times=times, cached=cached)
        return turn_rows, trees


async def iter_turn_trees(
    sessions: async_sessionmaker[AsyncSession],
    flt: ExportFilter,
    *,
    after_id: int | None = None,
    last_id: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    times: bool = True,
    prefetch: bool = True,
    read_ahead_until: int | None = None,
    min_replies: int = 1,
    cache: CacheKey | None = None,
    only_ids: list[int] | None = None,
    any_author: bool = False,
    read_two_ahead: bool = False,
) -> AsyncIterator[list[TurnTree | KeptTurn]]:
    """Pages of :class:`TurnTree` in user-turn id order, after ``after_id`` up to ``last_id``.

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

    With a ``cache`` key, each tree carries its revision, and the turns whose kept records are
    valid come as :class:`KeptTurn` (see :mod:`feedback.exports.cache`). When the
    key's kind is built ahead, the pages are read from its kept rows and the queued turns
    (:func:`_read_kept`; the same trees, in the same order), until it no longer is.
    ``only_ids`` keeps to those user turns, and ``any_author`` reads them whatever their
    author's consent (a builder's batch, see :mod:`feedback.exports.ahead`).

    With ``read_two_ahead`` (and ``prefetch``), pages of a kind built ahead on PostgreSQL also
    read the page after the next at the same time (the second with the first), on a second
    connection: it skips the next page's ``batch_size`` kept rows, and is used only if it
    began where the next page ended (else it is read again from there). API pages of oasst
    records, side by side: p50 121 against 141 ms; starting the second read with the first,
    98 against 117 ms. A third page is then in memory at most.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    turns = _turn_query(
        flt, times=times, min_replies=min_replies, cache=cache, any_author=any_author
    ).order_by(MessageNode.id)
    cached = cache is not None
    if last_id is not None:
        turns = turns.where(MessageNode.id <= last_id)
    if only_ids is not None:
        turns = turns.where(MessageNode.id.in_(only_ids))
    base = turns.limit(batch_size)
    kept_first = cache is not None and only_ids is None and not any_author

    async def read(position: int) -> _Batch:
        nonlocal kept_first
        if kept_first:
            assert cache is not None
            batch = await _read_kept(
                sessions, flt, cache, turns, position, last_id, batch_size, times
            )
            if batch is not None:
                return batch
            kept_first = False
        turn_rows, trees = await _read_turns(sessions, base, position, times, cached)
        if not turn_rows:
            return _Batch(trees, position, False)
        return _Batch(trees, turn_rows[-1][0], len(turn_rows) == batch_size)

    async def read_after_next(position: int) -> _Batch | None:
        """The read after the one from ``position``, made at the same time (``None`` if the
        kind is no longer built ahead); :func:`read_from` checks where it began."""
        assert cache is not None
        return await _read_kept(
            sessions, flt, cache, turns, position, last_id, batch_size, times, skip=batch_size
        )

    async def read_from(position: int, guess: asyncio.Task[_Batch | None]) -> _Batch:
        """The read from ``position``: ``guess`` if it began there, else a new one."""
        try:
            batch = await guess
        except SQLAlchemyError:  # read again, and raise if it fails again
            batch = None
        if batch is not None and batch.start == position and kept_first:
            return batch
        return await read(position)

    position = after_id if after_id is not None else 0
    turns_read = 0
    pending: asyncio.Task[_Batch] | None = None
    after_pending: asyncio.Task[_Batch | None] | None = None
    postgresql = dialect_name(sessions) == "postgresql"
    two_ahead = read_two_ahead and prefetch and kept_first and postgresql
    try:
        if two_ahead and (read_ahead_until is None or batch_size < read_ahead_until):
            # the second read starts with the first
            after_pending = asyncio.ensure_future(read_after_next(position))
        while True:
            if pending is not None:
                batch = await pending
                pending = None
            else:
                batch = await read(position)
            position = batch.position
            turns_read += len(batch.trees)
            if (
                batch.more
                and prefetch
                and (read_ahead_until is None or turns_read < read_ahead_until)
            ):
                if after_pending is not None:
                    pending = asyncio.ensure_future(read_from(position, after_pending))
                    after_pending = None
                else:
                    pending = asyncio.ensure_future(read(position))
                # Read two ahead only when the next read cannot give all the turns needed.
                if two_ahead and (
                    read_ahead_until is None or turns_read + batch_size < read_ahead_until
                ):
                    after_pending = asyncio.ensure_future(read_after_next(position))
            if batch.trees:
                yield batch.trees
            if not batch.more:
                return
    finally:
        for task in (pending, after_pending):
            if task is not None:
                task.cancel()
                # Nobody wants that page any more: neither its rows nor its error.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
