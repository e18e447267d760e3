"""The review queue: finished turns get overlapping, blind reviews from actors after the fact.

A reply the user received enters the queue (:meth:`ReviewQueue.enqueue`) when it is flagged
(a risk flag, or a consistency check over its threshold), when an actor rewrote it, or when its
id falls in the sampled ``share``; each item waits for ``per_item`` reviews. Actors pull items
one at a time (:meth:`ReviewQueue.next_item`) and submit a verdict (:meth:`ReviewQueue.submit`):
an overall rating, rubric scores, the unsafe/invalid flag and whether the reply was acceptable.

Rules the queue keeps, on SQLite and PostgreSQL alike:

- **Once per reviewer.** An actor is given an item at most once until they review it, and never
  after: a lease is keyed ``(item, actor)`` and a review is unique per ``(item, actor)``.
- **Never their own.** An actor is never given a reply they decided live (``live_actor_id``) or
  acted on in a console (any feedback event of theirs on it: a rating, a score, a decision), nor
  a reply to their own message (they were the user: in the terminal, their own actor), nor a
  gold item they made.
- **Blind.** What a reviewer is shown (:class:`ReviewItemView`) is the conversation and the reply,
  nothing else: no other verdict, no live decision, no reason it was queued, and a gold item
  looks like any other.
- **Leases.** A pull leases the item for ``lease`` (15 minutes by default); pulling again while
  the lease is live gives the same item back with a renewed lease. A lease that expires frees the
  item's place for another reviewer, and the reviewer who walked away loses nothing: their
  verdict is still taken if they come back, and their next pull serves the item again if it is
  still open. An item has at most ``reviews_needed`` reviews and live leases together; on
  PostgreSQL the pull locks the item row (``FOR UPDATE SKIP LOCKED``, so concurrent pulls skip
  each other instead of waiting) and counts its leases after the lock, on SQLite the pull runs
  under the database's single write lock, so the count is exact under concurrency on both.
- **Gold.** A share ``gold_rate`` of pulls serves a gold item (:mod:`feedback.gold`) when the
  actor has one left to review; gold items take a review from every actor once and never close.

An item is decided by the agreement of its reviews on ``acceptable`` (:func:`item_status`).
Times come from this process's clock: the processes of one deployment should agree on time.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import (
    Integer,
    String,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased

from feedback.database import autocommit_engine
from feedback.models import (
    Conversation,
    FeedbackEvent,
    GoldItem,
    MessageNode,
    Review,
    ReviewItem,
    ReviewLease,
)
from feedback.rubric import MISSING_UNSAFE, ScoreError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from sqlalchemy import ColumnElement
    from sqlalchemy.ext.asyncio import (
        AsyncConnection,
        AsyncEngine,
        AsyncSession,
        async_sessionmaker,
    )

    from feedback.rubric import Rubric

__all__ = [
    "CONTEXT_MESSAGES",
    "Consensus",
    "FinishedReply",
    "GoldAccuracy",
    "InvalidVerdict",
    "ReviewItemView",
    "ReviewOutcome",
    "ReviewPolicy",
    "ReviewQueue",
    "Verdict",
    "check_verdict",
    "consensus",
    "gold_correct",
    "is_flagged",
    "item_status",
    "live_actor",
    "majority",
    "parse_verdict",
    "review_reason",
    "sampled",
]

_log = logging.getLogger(__name__)

#: Messages of the conversation shown before the reply under review: enough for the reply to
#: make sense, few enough to read in a minute (and to fit a Discord embed).
CONTEXT_MESSAGES = 6
#: Origins of replies worth reviewing: the model's, and actors' rewrites. Canned lines (the
#: fallback, the safety line, greetings) and an actor's takeover lines are not the persona's
#: judgement.
_REVIEWED_ORIGINS = ("model", "rewrite")
#: ``decided_by`` values that are not actors.
_NOT_ACTORS = ("timeout", "safety")
#: A pull that loses its item to a concurrent pull tries the next one, this many times.
_PULL_ATTEMPTS = 4
#: The two kinds of items a pull draws from.
_Pool = Literal["regular", "gold"]
#: "Run the pick" (no row was picked by a combined statement beforehand).
_PICK: Any = object()


class _Refused(Exception):
    """A submission is refused: its transaction rolls back; the message says why."""


class InvalidVerdict(ValueError):
    """A verdict's input is wrong (a score out of range, an unknown dimension...); the message
    names what is wrong and nothing was recorded."""


@dataclass(frozen=True, slots=True)
class ReviewPolicy:
    """The ``reviews`` settings (see :class:`bot.settings.ReviewSettings`)."""

    #: Share of finished turns sampled for review (flagged and rewritten ones always are).
    share: float = 0.1
    #: Reviews each item waits for.
    per_item: int = 3
    #: Majority share of ``acceptable`` an item needs to be accepted.
    acceptance: float = 0.6
    #: How long a pulled item stays the reviewer's.
    lease: timedelta = timedelta(minutes=15)
    #: Share of pulls that serve a gold item.
    gold_rate: float = 0.1


@dataclass(frozen=True, slots=True)
class Verdict:
    """One verdict on a reply: a review, or a lead's gold verdict.

    ``rating`` is the overall score 1-5 (a review must give one; gold may leave it out);
    ``scores`` maps rubric dimensions to 1-5, given under ``rubric_version``; ``unsafe`` is the
    unsafe/invalid flag; ``acceptable`` says whether the reply could go out as it is.
    """

    rating: int | None
    scores: Mapping[str, int]
    unsafe: bool
    acceptable: bool
    rubric_version: str


_YES = {"yes", "y", "true"}
_NO = {"no", "n", "false"}


def check_verdict(
    rubric: Rubric,
    *,
    scores: Mapping[str, object],
    unsafe: object,
    acceptable: object,
    rating: object = None,
    complete: bool = True,
) -> Verdict:
    """A verdict checked against ``rubric``, or :class:`InvalidVerdict` naming the first thing
    wrong (an unknown dimension, a score outside 1 to 5, a missing flag...). ``complete`` (a
    review) also needs every dimension and the overall score; a gold verdict may leave
    dimensions and the overall score out."""
    if not isinstance(acceptable, bool):
        raise InvalidVerdict("say whether the reply is acceptable: acceptable=yes or acceptable=no")
    if not scores and not complete:
        # A gold verdict may be just the flags: the rubric's check wants a score or "unsafe".
        if not isinstance(unsafe, bool):
            raise InvalidVerdict(MISSING_UNSAFE)
        if rating is not None and (
            not isinstance(rating, int) or isinstance(rating, bool) or not 1 <= rating <= 5
        ):
            raise InvalidVerdict(f"overall={rating}: the overall score is a whole number 1 to 5")
        return Verdict(rating, {}, unsafe, acceptable, rubric.version)
    try:
        checked = rubric.check(scores, unsafe=unsafe, rating=rating)
    except ScoreError as error:
        raise InvalidVerdict(str(error)) from None
    if complete:
        missing = [name for name in rubric.names if name not in checked.scores]
        if missing:
            raise InvalidVerdict(f"score every dimension; still to score: {', '.join(missing)}")
        if checked.rating is None:
            raise InvalidVerdict("give the overall score, overall=1 to overall=5")
    return Verdict(
        rating=checked.rating,
        scores=checked.scores,
        unsafe=checked.unsafe,
        acceptable=acceptable,
        rubric_version=checked.rubric_version,
    )


def parse_verdict(rubric: Rubric, text: str, *, complete: bool = True) -> Verdict:
    """Read ``acceptable=yes|no unsafe=yes|no overall=N fidelity=N ...`` (any order) and
    :func:`check_verdict` it; :class:`InvalidVerdict` names the first part that is wrong."""
    acceptable: bool | None = None
    rest: list[str] = []
    for part in text.split():
        name, equals, value = part.partition("=")
        if name.lower() != "acceptable":
            rest.append(part)
            continue
        if acceptable is not None:
            raise InvalidVerdict("acceptable is given twice")
        if not equals or value.lower() not in _YES | _NO:
            raise InvalidVerdict(f"{part!r}: say acceptable=yes or acceptable=no")
        acceptable = value.lower() in _YES
    try:
        checked = rubric.parse_scores(" ".join(rest))
    except ScoreError as error:
        raise InvalidVerdict(str(error)) from None
    return check_verdict(
        rubric,
        scores=checked.scores,
        unsafe=checked.unsafe,
        acceptable=acceptable,
        rating=checked.rating,
        complete=complete,
    )


# -- what enters the queue --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FinishedReply:
    """A reply on its way to the user, as the decision service knows it."""

    candidate_id: int
    conversation_id: int
    #: The node's origin (``model``, ``rewrite``, ``fallback``...).
    origin: str
    flags: Sequence[Mapping[str, Any]] = ()
    #: Who decided it live (an actor id, ``timeout``, ``safety``), or ``None``.
    decided_by: str | None = None


def is_flagged(flags: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a reply's flags put it in front of actors: a risk flag (it was held for one) or a
    consistency check over its threshold. Operational flags (memory or checks unavailable) do
    not count: an outage would flood the queue with ordinary replies."""
    return any(flag.get("kind") == "risk" or flag.get("over_threshold") for flag in flags)


def sampled(candidate_id: int, share: float) -> bool:
    """Whether the reply falls in the sampled ``share``: a hash of its id, so the same reply
    always gets the same answer (a reply delivered again after a restart is not sampled twice
    with another draw) and the ids sampled are spread evenly."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(str(candidate_id).encode("ascii"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2**64


def review_reason(reply: FinishedReply, share: float) -> str | None:
    """Why ``reply`` enters the review queue (``rewritten``, ``flagged``, ``sample``), or
    ``None`` when it does not."""
    if reply.origin not in _REVIEWED_ORIGINS:
        return None
    if reply.origin == "rewrite":
        return "rewritten"
    if is_flagged(reply.flags):
        return "flagged"
    return "sample" if sampled(reply.candidate_id, share) else None


def live_actor(decided_by: str | None) -> str | None:
    """The actor who decided a reply live, from its ``decided_by`` (``None`` for the hold's
    timeout, the safety fallback, or no decision)."""
    return None if decided_by in _NOT_ACTORS else decided_by


# -- what agreement means ------------------------------------------------------------------------


def majority(acceptables: Sequence[bool]) -> tuple[bool | None, float]:
    """The majority value of ``acceptable`` and its share (``None`` on a tie or no reviews)."""
    if not acceptables:
        return None, 0.0
    yes = sum(1 for value in acceptables if value)
    no = len(acceptables) - yes
    share = max(yes, no) / len(acceptables)
    return (None if yes == no else yes > no), share


def item_status(acceptables: Sequence[bool], needed: int, acceptance: float) -> str:
    """``accepted`` once ``needed`` reviews are in and the majority on ``acceptable`` holds at
    least ``acceptance`` of them, ``disputed`` once they are in and it does not, else ``open``."""
    if len(acceptables) < needed:
        return "open"
    _value, share = majority(acceptables)
    return "accepted" if share >= acceptance else "disputed"


def _median_half_up(values: Sequence[int]) -> int:
    return math.floor(statistics.median(values) + 0.5)


@dataclass(frozen=True, slots=True)
class Consensus:
    """What an item's reviews say together: the majority on ``acceptable`` (``None`` on a tie)
    and its share, the median of each dimension and of the rating (rounded half up), the
    majority on ``unsafe``, and the number of reviews."""

    reviews: int
    acceptable: bool | None
    share: float
    scores: dict[str, int]
    rating: int | None
    unsafe: bool | None


def consensus(verdicts: Sequence[Verdict]) -> Consensus:
    """The consensus of ``verdicts`` (a dimension counts the reviews that scored it)."""
    acceptable, share = majority([v.acceptable for v in verdicts])
    unsafe, _ = majority([v.unsafe for v in verdicts])
    by_dimension: dict[str, list[int]] = {}
    for verdict in verdicts:
        for name, score in verdict.scores.items():
            by_dimension.setdefault(name, []).append(int(score))
    ratings = [v.rating for v in verdicts if v.rating is not None]
    return Consensus(
        reviews=len(verdicts),
        acceptable=acceptable,
        share=share,
        scores={name: _median_half_up(values) for name, values in sorted(by_dimension.items())},
        rating=_median_half_up(ratings) if ratings else None,
        unsafe=unsafe,
    )


def gold_correct(review: Verdict, gold: Verdict) -> bool:
    """Whether a review matches a gold verdict: the same ``acceptable`` and ``unsafe``, and every
    dimension gold scored within 1 point (a dimension the review did not score is a miss)."""
    if review.acceptable != gold.acceptable or review.unsafe != gold.unsafe:
        return False
    return all(
        name in review.scores and abs(int(review.scores[name]) - int(score)) <= 1
        for name, score in gold.scores.items()
    )


@dataclass(frozen=True, slots=True)
class GoldAccuracy:
    """One actor's record on gold items: reviews that matched gold, out of gold reviews."""

    actor_id: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        """``correct / total`` (0 with no gold reviews)."""
        return self.correct / self.total if self.total else 0.0


# -- what a reviewer sees --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReviewItemView:
    """An item as a reviewer is shown it: the same fields for every item, gold or not.

    ``context`` is the conversation before the reply, oldest first, as ``(role, speaker, text)``
    (at most :data:`CONTEXT_MESSAGES`); ``reply`` is what the user received.
    """

    item_id: int
    persona: str
    context: tuple[tuple[str, str, str], ...]
    reply: str
    leased_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ReviewOutcome:
    """What a submission did: ``done``, ``duplicate`` (this actor reviewed the item already) or
    ``refused`` (``message`` says why; nothing was recorded)."""

    status: Literal["done", "duplicate", "refused"]
    message: str
    review_id: int | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _insert_for(dialect: str) -> Any:
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


# -- the pull's statements, built once per dialect (their SQL is cached; only values change) -----


def _places_taken(item_id: Any) -> Any:
    """Reviews of an item plus the live leases of actors other than ``:actor`` (a scalar)."""
    reviews = select(func.count()).where(Review.item_id == item_id).scalar_subquery()
    leases = (
        select(func.count())
        .where(
            ReviewLease.item_id == item_id,
            ReviewLease.actor_id != bindparam("actor"),
            ReviewLease.expires_at > bindparam("now", type_=ReviewLease.expires_at.type),
        )
        .scalar_subquery()
    )
    return reviews + leases


def _eligible() -> ColumnElement[bool]:
    """Items ``:actor`` may be given: not decided or acted on by them, not replies to their own
    messages (they were the user), not reviewed by them, not passed over in this pull."""
    actor = bindparam("actor")
    reply, turn = aliased(MessageNode), aliased(MessageNode)
    return and_(
        or_(ReviewItem.live_actor_id.is_(None), ReviewItem.live_actor_id != actor),
        ~exists().where(Review.item_id == ReviewItem.id, Review.actor_id == actor),
        ~exists().where(
            FeedbackEvent.candidate_id == ReviewItem.candidate_id, FeedbackEvent.actor_id == actor
        ),
        ~exists().where(
            reply.id == ReviewItem.candidate_id,
            turn.id == reply.parent_id,
            turn.author_id == actor,
        ),
        ReviewItem.id.not_in(bindparam("passed", expanding=True)),
    )


@dataclass(frozen=True, slots=True)
class _Statements:
    """A pull's statements: renew the actor's live lease, pick an item (regular: skipping
    locked rows or waiting for them; gold), and insert the lease (regular: only while the item
    has room, counted after its lock)."""

    resume: Any
    pick_skip: Any
    pick_wait: Any
    pick_gold: Any
    lease_regular: Any
    lease_gold: Any
    #: PostgreSQL only: the renewal and a pool's first pick in one round trip (a data-modifying
    #: common table expression), by pool; rows ``(item_id, leased_at, needed)``, ``needed``
    #: null for a renewed lease.
    first: dict[str, Any] | None
    #: A submission's statements: lock the item (returning what the submission needs), take
    #: the reviewer's lease off (returning when it began), and insert the review.
    lock_item: Any
    take_lease: Any
    insert_review: Any


@functools.cache
def _statements(dialect: str) -> _Statements:
    when = ReviewLease.expires_at.type
    open_items = select(ReviewItem.id).where(
        or_(ReviewItem.status == "open", ReviewItem.gold_id.is_not(None))
    )
    resume = (
        update(ReviewLease)
        .where(
            ReviewLease.actor_id == bindparam("actor"),
            ReviewLease.expires_at > bindparam("now", type_=when),
            ReviewLease.item_id.in_(open_items),
        )
        .values(expires_at=bindparam("expires", type_=when))
        .returning(ReviewLease.item_id, ReviewLease.created_at)
    )
    regular = (
        select(ReviewItem.id, ReviewItem.reviews_needed)
        .where(
            ReviewItem.status == "open",
            ReviewItem.gold_id.is_(None),
            _places_taken(ReviewItem.id) < ReviewItem.reviews_needed,
            _eligible(),
        )
        .order_by(ReviewItem.id)
        .limit(1)
    )
    gold = (
        select(ReviewItem.id, ReviewItem.reviews_needed)
        .where(
            ReviewItem.gold_id.is_not(None),
            ~exists().where(
                GoldItem.id == ReviewItem.gold_id, GoldItem.created_by == bindparam("actor")
            ),
            _eligible(),
        )
        .order_by(ReviewItem.id)
        .limit(1)
    )

    def lease(room: ColumnElement[bool]) -> Any:
        insert = _insert_for(dialect)(ReviewLease)
        source = select(
            bindparam("item", type_=Integer),
            bindparam("actor", type_=String),
            bindparam("expires", type_=when),
            bindparam("now", type_=when),
        ).where(room)
        statement = insert.from_select(["item_id", "actor_id", "expires_at", "created_at"], source)
        return statement.on_conflict_do_update(
            index_elements=["item_id", "actor_id"],
            set_={
                "expires_at": statement.excluded.expires_at,
                "created_at": statement.excluded.created_at,
            },
        ).returning(ReviewLease.item_id)

    pick_skip = regular.with_for_update(of=ReviewItem, skip_locked=True)
    first = None
    if dialect == "postgresql":
        renewed = resume.cte("renewed")

        def after_renewal(pick: Any) -> Any:
            picked = pick.where(~exists().where(renewed.c.item_id.is_not(None))).cte("picked")
            return select(
                renewed.c.item_id, renewed.c.created_at.label("leased_at"), null().label("needed")
            ).union_all(
                select(picked.c.id, null(), picked.c.reviews_needed),
            )

        first = {"regular": after_renewal(pick_skip), "gold": after_renewal(gold)}
    item = bindparam("item", type_=Integer)
    persona = (
        select(Conversation.persona)
        .where(Conversation.id == ReviewItem.conversation_id)
        .scalar_subquery()
    )
    return _Statements(
        resume=resume,
        pick_skip=pick_skip,
        pick_wait=regular.with_for_update(of=ReviewItem),
        pick_gold=gold,
        lease_regular=lease(_places_taken(item) < bindparam("needed", type_=Integer)),
        lease_gold=lease(true()),
        first=first,
        lock_item=update(ReviewItem)
        .where(ReviewItem.id == item)
        .values(status=ReviewItem.status)
        .returning(
            ReviewItem.live_actor_id,
            ReviewItem.reviews_needed,
            ReviewItem.status,
            ReviewItem.gold_id,
            persona.label("persona"),
        ),
        take_lease=delete(ReviewLease)
        .where(ReviewLease.item_id == item, ReviewLease.actor_id == bindparam("actor"))
        .returning(ReviewLease.created_at),
        insert_review=insert(Review).returning(Review.id),
    )


@dataclass
class ReviewQueue:
    """The review queue over the database: enqueue, pull, show and submit.

    ``rubric_for`` gives the rubric in force for a persona (a verdict given under another
    version is refused: the form was drawn for a rubric that changed since). ``draw`` decides
    each pull's gold share (``random.random`` by default; tests pass their own).
    """

    sessions: async_sessionmaker[AsyncSession]
    policy: ReviewPolicy
    rubric_for: Callable[[str], Rubric]
    draw: Callable[[], float] = field(default=random.random)

    def __post_init__(self) -> None:
        self._autocommit = autocommit_engine(self.sessions)
        self._engine: AsyncEngine = self.sessions.kw["bind"]

    # -- entering the queue ----------------------------------------------------------------

    async def enqueue(self, reply: FinishedReply) -> str | None:
        """Queue ``reply`` if it needs reviews; returns the reason (``None``: not queued). A
        reply queued already stays as it is (one item per reply)."""
        reason = review_reason(reply, self.policy.share)
        if reason is None:
            return None
        engine = self._autocommit
        statement = (
            _insert_for(engine.dialect.name)(ReviewItem)
            .values(
                candidate_id=reply.candidate_id,
                conversation_id=reply.conversation_id,
                live_actor_id=live_actor(reply.decided_by),
                reason=reason,
                reviews_needed=self.policy.per_item,
                status="open",
                created_at=_now(),
            )
            .on_conflict_do_nothing(index_elements=["candidate_id"])
        )
        async with engine.begin() as connection:
            await connection.execute(statement)
        return reason

    async def note_decision(self, candidate_id: int, actor_id: str) -> None:
        """An actor decided a reply that may be queued already (a sent reply approved or
        rewritten in place): they decided it live, so they will not review it."""
        if actor_id in _NOT_ACTORS:
            return
        async with self._autocommit.begin() as connection:
            await connection.execute(
                update(ReviewItem)
                .where(ReviewItem.candidate_id == candidate_id, ReviewItem.live_actor_id.is_(None))
                .values(live_actor_id=actor_id)
            )

    # -- pulling ---------------------------------------------------------------------------

    async def next_item(self, actor_id: str) -> ReviewItemView | None:
        """Lease the next item to ``actor_id`` and show it; ``None`` when none is left for them.

        The caller has checked that ``actor_id`` is an actor. An item leased to them and not
        reviewed yet comes back first (its lease renewed).
        """
        leased = await self.lease(actor_id)
        if leased is None:
            return None
        item_id, leased_at, expires_at = leased
        return await self._view(item_id, leased_at, expires_at)

    async def lease(self, actor_id: str) -> tuple[int, datetime, datetime] | None:
        """Lease the next item to ``actor_id``: ``(item id, leased at, expires at)``, or
        ``None`` when no item is left for them. The work of :meth:`next_item`, without the
        reading of what to show."""
        now = _now()
        expires = now + self.policy.lease
        gold_first = self.draw() < self.policy.gold_rate
        pools: tuple[_Pool, ...] = ("gold", "regular") if gold_first else ("regular", "gold")
        engine = self._engine
        sql = _statements(engine.dialect.name)
        params = {"actor": actor_id, "now": now, "expires": expires, "passed": []}
        async with engine.begin() as connection:
            # The first statement writes: on SQLite the pull holds the write lock from here.
            picked: Any = _PICK
            if sql.first is not None:
                rows = (await connection.execute(sql.first[pools[0]], params)).all()
                resumed = [(row.item_id, row.leased_at) for row in rows if row.needed is None]
                picked = next(((r.item_id, r.needed) for r in rows if r.needed is not None), None)
            else:
                resumed = [tuple(row) for row in await connection.execute(sql.resume, params)]
            if resumed:
                item_id, leased_at = min(resumed)
                return item_id, leased_at, expires
            for index, pool in enumerate(pools):
                taken = await self._take(
                    connection, sql, pool, params, wait=False, first=picked if index == 0 else _PICK
                )
                if taken is not None:
                    return taken, now, expires
        if engine.dialect.name != "postgresql":
            return None  # under SQLite's write lock no item was skipped
        # Items that concurrent pulls held locked were skipped: wait for them now, one
        # transaction (and one lock) at a time, so two waiting pulls cannot deadlock.
        passed: list[int] = []
        for _attempt in range(_PULL_ATTEMPTS):
            before = len(passed)
            async with engine.begin() as connection:
                taken = await self._take(
                    connection, sql, "regular", {**params, "passed": passed}, wait=True
                )
            if taken is not None:
                return taken, now, expires
            if len(passed) == before:
                break  # nothing is left for this actor, locked or not
        return None

    @staticmethod
    async def _take(
        connection: AsyncConnection,
        sql: _Statements,
        pool: _Pool,
        params: dict[str, Any],
        *,
        wait: bool,
        first: Any = _PICK,
    ) -> int | None:
        """Lease the oldest item of ``pool`` the actor may have; its id, or ``None``.

        Regular items are locked before their places are counted: without ``wait`` the pull
        skips items other pulls hold locked and tries up to :data:`_PULL_ATTEMPTS` items; with
        ``wait`` it waits for the oldest one and tries that one only, adding it to
        ``params["passed"]`` when it turns out full. Gold items take every actor: no lock.
        ``first`` is the row a combined statement picked already (``None``: none), if any.
        """
        pick = sql.pick_gold if pool == "gold" else sql.pick_wait if wait else sql.pick_skip
        passed: list[int] = params["passed"]
        for attempt in range(1 if wait else _PULL_ATTEMPTS):
            if attempt == 0 and first is not _PICK:
                row = first
            else:
                row = (await connection.execute(pick, params)).first()
            if row is None:
                return None
            item_id, needed = row
            # Counted again after the lock: a pull that took a place since the pick's snapshot
            # has committed by now (it held the lock).
            insert = sql.lease_gold if pool == "gold" else sql.lease_regular
            leased = await connection.execute(insert, {**params, "item": item_id, "needed": needed})
            if leased.first() is not None:
                return int(item_id)
            passed.append(item_id)
        return None

    # -- showing -----------------------------------------------------------------------------

    async def _view(
        self, item_id: int, leased_at: datetime, expires_at: datetime
    ) -> ReviewItemView | None:
        async with self.sessions() as session:
            item = await session.get(ReviewItem, item_id)
            if item is None:
                return None
            persona, context, reply = await self._conversation(session, item.candidate_id)
        return ReviewItemView(
            item_id=item_id,
            persona=persona,
            context=context,
            reply=reply,
            leased_at=leased_at,
            expires_at=expires_at,
        )

    async def show_reply(
        self, candidate_id: int
    ) -> tuple[str, tuple[tuple[str, str, str], ...], str] | None:
        """A reply as a verdict form shows it: ``(persona, context, reply)``, or ``None`` when
        it is not an assistant reply."""
        async with self.sessions() as session:
            node = await session.get(MessageNode, candidate_id)
            if node is None or node.role != "assistant":
                return None
            return await self._conversation(session, candidate_id)

    @staticmethod
    async def _conversation(
        session: AsyncSession, candidate_id: int
    ) -> tuple[str, tuple[tuple[str, str, str], ...], str]:
        """The reply and the :data:`CONTEXT_MESSAGES` messages above it in its conversation
        (the path the user saw: each user turn's parent is the reply sent before it)."""
        chain = (
            select(MessageNode.id, MessageNode.parent_id, literal(0).label("depth"))
            .where(MessageNode.id == candidate_id)
            .cte("chain", recursive=True)
        )
        chain = chain.union_all(
            select(MessageNode.id, MessageNode.parent_id, chain.c.depth + 1).where(
                MessageNode.id == chain.c.parent_id, chain.c.depth < CONTEXT_MESSAGES
            )
        )
        rows = (
            await session.execute(
                select(
                    MessageNode.role,
                    MessageNode.author_name,
                    MessageNode.content,
                    Conversation.persona,
                )
                .join(chain, MessageNode.id == chain.c.id)
                .join(Conversation, Conversation.id == MessageNode.conversation_id)
                .order_by(chain.c.depth.desc())
            )
        ).all()
        *before, last = rows
        context = tuple((role, name, text) for role, name, text, _persona in before)
        return last.persona, context, last.content

    async def reply_of(self, item_id: int) -> int | None:
        """The reply an item is about, or ``None`` when the item is gone (erased)."""
        async with self.sessions() as session:
            return await session.scalar(
                select(ReviewItem.candidate_id).where(ReviewItem.id == item_id)
            )

    # -- submitting --------------------------------------------------------------------------

    async def submit(self, item_id: int, actor_id: str, verdict: Verdict) -> ReviewOutcome:
        """Record ``actor_id``'s review of an item leased to them (even if the lease expired)
        and decide the item when its reviews are in. A review needs the overall rating.

        Refused: an item never given to this actor, or one they decided live, or a verdict
        given under a rubric that has changed since.
        """
        if verdict.rating is None or not 1 <= verdict.rating <= 5:
            raise InvalidVerdict("give the overall score, overall=1 to overall=5")
        if any(not 1 <= int(score) <= 5 for score in verdict.scores.values()):
            raise InvalidVerdict("a score is a whole number from 1 to 5")
        sql = _statements(self._engine.dialect.name)
        keys = {"item": item_id, "actor": actor_id}
        try:
            async with self._engine.begin() as connection:
                # Submissions of one item take turns, so each decides on every review before it:
                # this first statement writes, which takes the item's row lock on PostgreSQL and
                # the database's write lock on SQLite until the commit.
                item = (await connection.execute(sql.lock_item, keys)).first()
                if item is None:
                    raise _Refused("This item no longer exists (it was erased).")
                leased_at = (await connection.execute(sql.take_lease, keys)).scalar()
                if leased_at is None:
                    reviewed = await connection.scalar(
                        select(Review.id).where(
                            Review.item_id == item_id, Review.actor_id == actor_id
                        )
                    )
                    if reviewed is not None:
                        return ReviewOutcome("duplicate", "You have reviewed this item already.")
                    raise _Refused("This item was not given to you; run /review to get one.")
                if item.live_actor_id == actor_id:
                    raise _Refused("You decided this reply live; it is not yours.")
                if verdict.rubric_version != self._rubric_version(item.persona or ""):
                    raise _Refused(  # rolled back: the lease stays, the reviewer gets a new form
                        "The rubric changed while you were reviewing; run /review for the new form."
                    )
                review_id = (
                    await connection.execute(
                        sql.insert_review,
                        {
                            "item_id": item_id,
                            "actor_id": actor_id,
                            "rating": verdict.rating,
                            "scores": dict(verdict.scores),
                            "unsafe": verdict.unsafe,
                            "acceptable": verdict.acceptable,
                            "rubric_version": verdict.rubric_version,
                            "leased_at": leased_at,
                            "created_at": _now(),
                        },
                    )
                ).scalar_one()
                if item.gold_id is None:
                    acceptables = (
                        await connection.scalars(
                            select(Review.acceptable).where(Review.item_id == item_id)
                        )
                    ).all()
                    status = item_status(acceptables, item.reviews_needed, self.policy.acceptance)
                    if status != item.status:
                        await connection.execute(
                            update(ReviewItem)
                            .where(ReviewItem.id == item_id)
                            .values(status=status, decided_at=_now() if status != "open" else None)
                        )
        except _Refused as refused:
            return ReviewOutcome("refused", str(refused))
        return ReviewOutcome("done", "Recorded. Run /review for the next item.", review_id)

    def _rubric_version(self, persona: str) -> str | None:
        """The version of the rubric ``persona``'s replies are scored under (``None`` when its
        card's rubric is broken or the persona is gone: nothing can be scored then)."""
        try:
            return self.rubric_for(persona).version
        except (ValueError, LookupError) as error:
            _log.warning("replies of persona %r cannot be scored: %s", persona, error)
            return None

    # -- reading -------------------------------------------------------------------------------

    async def verdicts(self, item_id: int) -> list[Verdict]:
        """The reviews of an item, oldest first (for consensus and reports)."""
        async with self.sessions() as session:
            rows = (
                await session.scalars(
                    select(Review).where(Review.item_id == item_id).order_by(Review.id)
                )
            ).all()
        return [_verdict_of(row) for row in rows]

    async def gold_accuracy(self) -> dict[str, GoldAccuracy]:
        """Each actor's accuracy on gold items (:func:`gold_correct`), by actor id."""
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(Review, GoldItem)
                    .join(ReviewItem, ReviewItem.id == Review.item_id)
                    .join(GoldItem, GoldItem.id == ReviewItem.gold_id)
                )
            ).all()
        correct: Counter[str] = Counter()
        total: Counter[str] = Counter()
        for review, gold in rows:
            total[review.actor_id] += 1
            correct[review.actor_id] += gold_correct(_verdict_of(review), _verdict_of(gold))
        return {
            actor: GoldAccuracy(actor, correct[actor], count)
            for actor, count in sorted(total.items())
        }


def _verdict_of(row: Review | GoldItem) -> Verdict:
    return Verdict(
        rating=row.rating,
        scores=dict(row.scores or {}),
        unsafe=bool(row.unsafe),
        acceptable=bool(row.acceptable),
        rubric_version=row.rubric_version,
    )
