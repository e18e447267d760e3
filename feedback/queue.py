"""The correction queue: feedback events handed to training jobs in leased batches.

One record of the queue is one row of ``feedback_events`` (every kind: approvals, rewrites,
ratings, takeovers...), in id order. A record is *available* while ``consumed_at`` is empty and
it has no lease or its lease has expired; *leased* while a live lease holds it; *consumed* once
the lease was acknowledged.

- :func:`claim_batch` leases up to ``limit`` available records to a job in one statement
  (``UPDATE ... WHERE id IN (SELECT ... ORDER BY id LIMIT n) RETURNING id``). On PostgreSQL the
  inner select takes ``FOR UPDATE SKIP LOCKED``, so concurrent jobs skip each other's rows
  instead of waiting or sharing them; on SQLite the statement runs under the database's single
  write lock. Either way no record is in two live leases.
- Expired leases need no sweeper: the claim treats a record whose lease has expired as available.
- :func:`ack` marks a lease's records consumed, only while the lease is live. An acknowledgement
  that arrives after expiry is refused (:class:`LeaseExpired`), because the records may already
  be in another job's lease; it can never consume records another job has re-leased, since it
  only touches rows still carrying its own lease id, locked before the expiry is checked.
  Acknowledging twice is harmless (the second says ``already_acked``), so a trainer may retry.
- An erasure revokes the open leases holding an erased record (:mod:`feedback.erasure`): their
  acknowledgement is refused (:class:`LeaseRevoked`), and their remaining records are available
  again at once, like those of an expired lease.

Times come from this process's clock: the API processes of one deployment should agree on time.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import aliased

from feedback.exports.filters import ExportFilter
from feedback.exports.tree import consent_rule
from feedback.models import Conversation, FeedbackEvent, Lease, MessageNode, PromptSnapshot

if TYPE_CHECKING:
    from sqlalchemy import Select
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = [
    "MAX_BATCH",
    "MAX_TTL",
    "MIN_TTL",
    "AckResult",
    "LeaseBatch",
    "LeaseExpired",
    "LeaseRevoked",
    "QueueError",
    "QueueRecord",
    "UnknownLease",
    "ack",
    "claim_batch",
    "record_query",
    "stats",
]

_log = logging.getLogger(__name__)

#: The most records one lease may hold (bounds the response size and the statement's work).
MAX_BATCH = 10_000
#: Lease lifetimes: long enough to train on a batch, short enough that a crashed job's
#: records come back the same day.
MIN_TTL = timedelta(seconds=10)
MAX_TTL = timedelta(days=1)


class QueueError(Exception):
    """A queue operation cannot be done; the message says why."""


class UnknownLease(QueueError):
    """No lease has this id."""


class LeaseExpired(QueueError):
    """The lease ran out before it was acknowledged; its records went back to the queue."""


class LeaseRevoked(QueueError):
    """A user erased data some of the lease's records came from; the lease cannot be
    acknowledged, and its other records went back to the queue."""


@dataclass(frozen=True, slots=True)
class QueueRecord:
    """One feedback event with what a trainer needs: the texts and the prompt the model saw.

    ``candidate_text`` is the reply the action was about (what an approval approves, what a
    rating rates); ``result_text`` is what the action produced (a rewrite, a regenerated
    candidate, an actor's takeover message). ``prompt`` is the prompt snapshot's messages.
    """

    event_id: int
    kind: str
    actor_id: str
    conversation_id: int
    persona: str
    persona_version: str | None
    rating: int | None
    tags: list[str]
    original_text: str | None
    new_text: str | None
    edit_distance: int | None
    candidate_text: str | None
    result_text: str | None
    prompt: list[dict[str, Any]] | None
    created_at: datetime
    #: The author of the user turn the action answered, if the event concerns one.
    user_id: str | None
    user_name: str | None
    #: Whether that user allows training use (the rule of :mod:`feedback.exports`); events
    #: without a user turn count as not consented.
    consented: bool

    @classmethod
    def from_row(cls, row: Any) -> QueueRecord:
        """A record from a row of :func:`record_query`."""
        event, candidate_text, result_text, messages, user_id, user_name, consented = row
        return cls(
            event_id=event.id,
            kind=event.kind,
            actor_id=event.actor_id,
            conversation_id=event.conversation_id,
            persona=event.persona,
            persona_version=event.persona_version,
            rating=event.rating,
            tags=list(event.tags or []),
            original_text=event.original_text,
            new_text=event.new_text,
            edit_distance=event.edit_distance,
            candidate_text=candidate_text,
            result_text=result_text,
            prompt=messages,
            created_at=event.created_at,
            user_id=user_id,
            user_name=user_name,
            consented=bool(consented),
        )


@dataclass(frozen=True, slots=True)
class LeaseBatch:
    """A claimed batch. With nothing available, ``lease_id`` is ``None`` and no lease exists."""

    lease_id: str | None
    job: str
    expires_at: datetime | None
    records: list[QueueRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AckResult:
    """What an acknowledgement did: how many records it consumed, and whether it was a retry."""

    lease_id: str
    consumed: int
    acked_at: datetime
    already_acked: bool = False


def _now() -> datetime:
    return datetime.now(UTC)


def _available(now: datetime) -> Any:
    """The SQL condition of an available record at ``now``."""
    expired = select(Lease.id).where(
        Lease.acked_at.is_(None), or_(Lease.expires_at <= now, Lease.revoked_at.is_not(None))
    )
    return (
        FeedbackEvent.consumed_at.is_(None),
        or_(FeedbackEvent.lease_id.is_(None), FeedbackEvent.lease_id.in_(expired)),
    )


async def claim_batch(
    sessions: async_sessionmaker[AsyncSession],
    job: str,
    limit: int,
    ttl: timedelta,
    token_id: int | None = None,
) -> LeaseBatch:
    """Lease up to ``limit`` (1 to :data:`MAX_BATCH`) available records to ``job`` for ``ttl``.

    Records come oldest first. Concurrent callers (tasks, processes, hosts) never receive the
    same record while its lease is live.
    """
    if not 1 <= limit <= MAX_BATCH:
        raise QueueError(f"a batch holds 1 to {MAX_BATCH:,} records, not {limit:,}")
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise QueueError(
            f"a lease lasts {MIN_TTL.total_seconds():.0f} to {MAX_TTL.total_seconds():.0f} "
            f"seconds, not {ttl.total_seconds():g}"
        )
    if not job or len(job) > 128:
        raise QueueError("a job name is 1 to 128 characters")
    now = _now()
    lease_id = str(uuid.uuid4())
    free = (
        select(FeedbackEvent.id)
        .where(*_available(now))
        .order_by(FeedbackEvent.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    async with sessions.begin() as session:
        claimed = (
            await session.scalars(
                update(FeedbackEvent)
                .where(FeedbackEvent.id.in_(free))
                .values(lease_id=lease_id)
                .returning(FeedbackEvent.id)
                .execution_options(synchronize_session=False)
            )
        ).all()
        if not claimed:
            return LeaseBatch(lease_id=None, job=job, expires_at=None)
        expires_at = now + ttl
        session.add(Lease(id=lease_id, job=job, token_id=token_id, expires_at=expires_at))
        records = await _records(session, lease_id)
    _log.info("leased %d records to job %r (lease %s)", len(records), job, lease_id)
    return LeaseBatch(lease_id=lease_id, job=job, expires_at=expires_at, records=records)


def record_query() -> Select[Any]:
    """The select of :class:`QueueRecord` rows; add ``where`` and ``order_by`` clauses, then
    map rows with :meth:`QueueRecord.from_row`.

    The user turn is the parent of the candidate (or of the result, for a takeover message);
    its author's consent is decided by the same rule as the exports.
    """
    candidate = aliased(MessageNode)
    result = aliased(MessageNode)
    user_turn = MessageNode  # unaliased: the consent rule of the exports is written against it
    joins, consent = consent_rule(ExportFilter())
    query = (
        select(
            FeedbackEvent,
            candidate.content,
            result.content,
            PromptSnapshot.messages,
            user_turn.author_id,
            user_turn.author_name,
            case((and_(user_turn.id.is_not(None), consent), True), else_=False),
        )
        .outerjoin(candidate, candidate.id == FeedbackEvent.candidate_id)
        .outerjoin(result, result.id == FeedbackEvent.result_id)
        .outerjoin(PromptSnapshot, PromptSnapshot.id == FeedbackEvent.prompt_snapshot_id)
        .outerjoin(
            user_turn,
            and_(
                user_turn.id == func.coalesce(candidate.parent_id, result.parent_id),
                user_turn.role == "user",
            ),
        )
        .join(Conversation, Conversation.id == FeedbackEvent.conversation_id)
    )
    for target, on in joins:
        query = query.outerjoin(target, on)
    return query


async def _records(session: AsyncSession, lease_id: str) -> list[QueueRecord]:
    rows = await session.execute(
        record_query().where(FeedbackEvent.lease_id == lease_id).order_by(FeedbackEvent.id)
    )
    return [QueueRecord.from_row(row) for row in rows]


async def ack(sessions: async_sessionmaker[AsyncSession], lease_id: str) -> AckResult:
    """Mark a live lease's records consumed.

    Raises :class:`UnknownLease` or :class:`LeaseExpired`; a second acknowledgement returns
    ``already_acked=True`` and consumes nothing.
    """
    async with sessions.begin() as session:
        # Lock the lease row first (on SQLite: take the write lock), then the records still
        # carrying this lease; only then read the clock, so a claim that re-leased some of
        # them has either finished (and we see the lease expired) or must wait for us.
        await session.execute(
            update(Lease)
            .where(Lease.id == lease_id)
            .values(job=Lease.job)
            .execution_options(synchronize_session=False)
        )
        lease = await session.scalar(select(Lease).where(Lease.id == lease_id))
        if lease is None:
            raise UnknownLease(f"no lease {lease_id!r}")
        if lease.acked_at is not None:
            return AckResult(lease_id, 0, lease.acked_at, already_acked=True)
        await session.execute(
            select(FeedbackEvent.id)
            .where(FeedbackEvent.lease_id == lease_id, FeedbackEvent.consumed_at.is_(None))
            .with_for_update()
        )
        now = _now()
        if lease.revoked_at is not None:
            raise LeaseRevoked(
                f"lease {lease_id} was revoked at "
                f"{lease.revoked_at.isoformat(timespec='seconds')}: a user erased data some of "
                "its records came from. Drop the whole batch, delete the erased records (GET "
                "/v1/erasures lists their record_id) and claim a new batch"
            )
        if lease.expires_at <= now:
            raise LeaseExpired(
                f"lease {lease_id} expired at {lease.expires_at.isoformat(timespec='seconds')}; "
                "its records went back to the queue: claim a new batch"
            )
        consumed = await session.execute(
            update(FeedbackEvent)
            .where(FeedbackEvent.lease_id == lease_id, FeedbackEvent.consumed_at.is_(None))
            .values(consumed_at=now)
            .execution_options(synchronize_session=False)
        )
        lease.acked_at = now
        job = lease.job
    count = consumed.rowcount or 0
    _log.info("lease %s of job %r acknowledged: %d records consumed", lease_id, job, count)
    return AckResult(lease_id, count, now)


async def stats(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    """Record counts: ``total``, ``available``, ``leased``, ``consumed``, the same split by
    ``kind`` and by ``persona``, and the number of ``live_leases``."""
    now = _now()
    live = select(Lease.id).where(
        Lease.acked_at.is_(None), Lease.expires_at > now, Lease.revoked_at.is_(None)
    )
    consumed = FeedbackEvent.consumed_at.is_not(None)
    leased = FeedbackEvent.lease_id.in_(live)
    async with sessions() as session:
        rows = (
            await session.execute(
                select(
                    FeedbackEvent.kind,
                    FeedbackEvent.persona,
                    func.count(),
                    func.sum(case((consumed, 1), else_=0)),
                    func.sum(case((consumed, 0), (leased, 1), else_=0)),
                ).group_by(FeedbackEvent.kind, FeedbackEvent.persona)
            )
        ).all()
        live_leases = await session.scalar(select(func.count()).select_from(live.subquery()))

    def blank() -> dict[str, int]:
        return {"total": 0, "available": 0, "leased": 0, "consumed": 0}

    totals = blank()
    by_kind: dict[str, dict[str, int]] = defaultdict(blank)
    by_persona: dict[str, dict[str, int]] = defaultdict(blank)
    for kind, persona, total, n_consumed, n_leased in rows:
        split = {
            "total": int(total),
            "available": int(total) - int(n_consumed or 0) - int(n_leased or 0),
            "leased": int(n_leased or 0),
            "consumed": int(n_consumed or 0),
        }
        for bucket in (totals, by_kind[kind], by_persona[persona]):
            for key, value in split.items():
                bucket[key] += value
    return {
        **totals,
        "live_leases": int(live_leases or 0),
        "by_kind": dict(sorted(by_kind.items())),
        "by_persona": dict(sorted(by_persona.items())),
    }
