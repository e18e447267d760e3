"""The trainer HTTP API: page corrections in export formats, lease batches, acknowledge them.

Routes (all but ``/healthz`` and the docs need a bearer token):

- ``GET /v1/corrections?format=F&cursor=C&limit=L`` (scope ``read``): export records in a
  stable order, ``limit`` 1 to 10,000, each with its ``quality`` (rubric scores, reviews,
  agreement, the deciding actors' trust); filters ``min_reviews``, ``min_agreement``,
  ``min_trust`` and ``dimension=fidelity>=4`` (repeatable) as ``greenroom export``'s.
- ``POST /v1/leases`` (scope ``lease``): claim a batch of queue records for a job.
- ``POST /v1/leases/{id}/ack`` (scope ``lease``): mark a live lease's records consumed
  (409 once it has expired, or was revoked because a user erased some of its records). Any
  ``lease`` token may acknowledge any lease, so the workers of one job can share the work.
- ``GET /v1/erasures?cursor=C&limit=L`` (scope ``read``): the erasure feed, tombstones of
  records users erased (``record_id``, ``user``, ``erased_at``), oldest first, after ``C`` (an
  earlier page's ``next_cursor``, or a manifest's ``erasure_cursor``).
- ``GET /v1/stats`` (scope ``read``): queue counts.
- ``GET /healthz``: database ping. OpenAPI at ``/openapi.json``, Swagger UI at ``/docs``.

Large bodies are serialised with orjson straight to bytes (no validation pass), which keeps
10,000-record pages fast.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response
from sqlalchemy import text

from feedback.api.auth import require_scope
from feedback.api.errors import ApiError, install_error_handlers
from feedback.api.records import (
    CursorError,
    ReviewFactsMemo,
    decode_cursor,
    lease_record,
    page,
)
from feedback.api.schemas import (
    AckResponse,
    ErasureFeedResponse,
    ErrorResponse,
    Format,
    LeaseRequest,
    LeaseResponse,
    PageResponse,
)
from feedback.erasure import (
    FeedCursorError,
    decode_feed_cursor,
    encode_feed_cursor,
    feed_position,
    read_feed,
)
from feedback.exports import ExportError, ExportFilter
from feedback.exports.filters import MAX_DIMENSION_RULES, MAX_MIN_REVIEWS, check_dimensions
from feedback.exports.manifest import build_manifest
from feedback.queue import MAX_BATCH as MAX_PAGE
from feedback.queue import (
    LeaseExpired,
    LeaseRevoked,
    QueueError,
    UnknownLease,
    ack,
    claim_batch,
    stats,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from feedback.models import ApiToken

__all__ = ["create_app"]

_log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing, unknown or revoked token."},
    403: {"model": ErrorResponse, "description": "The token's scope is too small."},
    422: {"model": ErrorResponse, "description": "A parameter is wrong; the message says which."},
}

ReadToken = Annotated["ApiToken", Depends(require_scope("read"))]
LeaseToken = Annotated["ApiToken", Depends(require_scope("lease"))]


def _json(data: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json")


def create_app(
    sessions: async_sessionmaker[AsyncSession],
    *,
    pseudonym_secret: bytes,
    dimensions: Iterable[str] = (),
) -> FastAPI:
    """The API over ``sessions``; ``pseudonym_secret`` keys the actor and conversation
    pseudonyms (keep it stable, or pseudonyms change between runs). ``dimensions`` are the
    rubric's and the cards' dimension names, which ``dimension`` filters may name (with those
    stored reviews scored, and ``overall``)."""
    rubric_dimensions = frozenset(dimensions) | {"overall"}
    if len(pseudonym_secret) < 16:
        raise ValueError("the pseudonym secret must be at least 16 bytes")
    app = FastAPI(
        title="Greenroom trainer API",
        version="1",
        description="Corrections by human actors, as training data. Authenticate with "
        "`Authorization: Bearer <token>`; create tokens with `greenroom tokens create`.",
    )
    app.state.sessions = sessions
    app.state.pseudonym_secret = pseudonym_secret
    app.state.review_facts = ReviewFactsMemo(sessions)
    install_error_handlers(app)

    @app.get("/healthz", tags=["health"], responses={503: {"model": ErrorResponse}})
    async def healthz(request: Request) -> dict[str, str]:
        """The database answers (no token needed)."""
        try:
            async with request.app.state.sessions() as session:
                await session.execute(text("SELECT 1"))
        except Exception as error:
            _log.warning("health check failed: %s", error)
            raise ApiError(503, "database unreachable") from None
        return {"status": "ok"}

    @app.get(
        "/v1/corrections",
        tags=["corrections"],
        response_model=PageResponse,
        responses=_ERRORS,
    )
    async def corrections(
        request: Request,
        _token: ReadToken,
        format: Annotated[Format, Query(description="The export format of the records.")],
        cursor: Annotated[
            str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Most records.")] = 100,
        persona: Annotated[str | None, Query(max_length=64)] = None,
        since: Annotated[
            datetime | None, Query(description="Events at or after (ISO 8601).")
        ] = None,
        until: Annotated[datetime | None, Query(description="Events before (ISO 8601).")] = None,
        min_rating: Annotated[int | None, Query(ge=1, le=5)] = None,
        tag: Annotated[
            list[str] | None,
            Query(description="Only records whose target reply carries one of these tags."),
        ] = None,
        min_reviews: Annotated[
            int | None,
            Query(ge=1, le=MAX_MIN_REVIEWS, description="Only replies with this many reviews."),
        ] = None,
        min_agreement: Annotated[
            float | None,
            Query(ge=0, le=1, description="Only replies whose reviews agree this much (0-1)."),
        ] = None,
        min_trust: Annotated[
            float | None,
            Query(ge=0, le=1, description="Only replies whose deciders' mean trust reaches this."),
        ] = None,
        dimension: Annotated[
            list[str] | None,
            Query(
                max_length=MAX_DIMENSION_RULES,
                description="Consensus score rules such as `fidelity>=4` (>=, <=, >, <, =); "
                "`overall` is the reviews' rating.",
            ),
        ] = None,
    ) -> Response:
        """A page of correction records in ``format``, in a stable order (by user turn).

        Records of one user turn are never split across pages, so a page may stop short of
        ``limit``, or pass it when a single turn has more records. ``manifest`` says what the
        page holds and where the erasure feed stood before it was read: keep its
        ``erasure_cursor`` to ask ``/v1/erasures`` later what to delete.
        """
        try:
            after = None if cursor is None else decode_cursor(cursor, format)
        except CursorError as error:
            raise ApiError(422, f"query parameter cursor: {error}") from None
        try:
            flt = ExportFilter(
                since=since,
                until=until,
                persona=persona,
                min_rating=min_rating,
                tags=tuple(tag or ()),
                min_reviews=min_reviews,
                min_agreement=min_agreement,
                min_trust=min_trust,
                dimensions=tuple(dimension or ()),
            )
            facts = await request.app.state.review_facts.get()
            check_dimensions(flt, rubric_dimensions | facts.dimensions)
        except ExportError as error:
            message = str(error)
            for option in ("min-rating", "min-reviews", "min-agreement", "min-trust"):
                message = message.replace(f"--{option}", option.replace("-", "_"))
            message = message.replace("--", "")
            raise ApiError(422, f"query parameters: {message}") from None
        exported_at = datetime.now(UTC)
        erasure_cursor = encode_feed_cursor(await feed_position(request.app.state.sessions))
        result = await page(
            request.app.state.sessions,
            format,
            flt,
            pseudonym_secret=request.app.state.pseudonym_secret,
            after=after,
            limit=limit,
            trust=facts.trust,
        )
        return _json(
            {
                "records": result.records,
                "next_cursor": result.next_cursor,
                "has_more": result.has_more,
                "manifest": build_manifest(
                    fmt=format,
                    flt=flt,
                    records=len(result.records),
                    erasure_cursor=erasure_cursor,
                    exported_at=exported_at,
                ),
            }
        )

    @app.get(
        "/v1/erasures",
        tags=["corrections"],
        response_model=ErasureFeedResponse,
        responses=_ERRORS,
    )
    async def erasures(
        request: Request,
        _token: ReadToken,
        cursor: Annotated[
            str | None,
            Query(
                max_length=100,
                description="`next_cursor` of the previous page, or a manifest's "
                "`erasure_cursor`; none to start from the first erasure.",
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Most tombstones.")] = 1000,
    ) -> Response:
        """Records users erased since ``cursor``, oldest first, as tombstones: delete every
        record whose ``record_id`` is listed from your datasets and from future training runs.

        Tombstones are kept for good, so any old cursor still works; poll with ``next_cursor``
        (it is set even when nothing is new).
        """
        try:
            after = 0 if cursor is None else decode_feed_cursor(cursor)
        except FeedCursorError as error:
            raise ApiError(422, f"query parameter cursor: {error}") from None
        feed = await read_feed(
            request.app.state.sessions,
            after=after,
            limit=limit,
            pseudonym_secret=request.app.state.pseudonym_secret,
        )
        return _json(
            {
                "tombstones": feed.tombstones,
                "next_cursor": feed.next_cursor,
                "has_more": feed.has_more,
            }
        )

    @app.post(
        "/v1/leases",
        tags=["leases"],
        response_model=LeaseResponse,
        responses=_ERRORS,
    )
    async def create_lease(request: Request, token: LeaseToken, body: LeaseRequest) -> Response:
        """Claim up to ``limit`` records for ``job`` until ``ttl_seconds`` from now.

        Concurrent jobs never receive the same record; records of a lease that expires
        unacknowledged return to the queue.
        """
        try:
            batch = await claim_batch(
                request.app.state.sessions,
                body.job,
                body.limit,
                timedelta(seconds=body.ttl_seconds),
                token.id,
            )
        except QueueError as error:
            raise ApiError(422, str(error)) from None
        secret = request.app.state.pseudonym_secret
        return _json(
            {
                "lease_id": batch.lease_id,
                "job": batch.job,
                "expires_at": batch.expires_at,
                "records": [lease_record(r, secret) for r in batch.records],
            }
        )

    @app.post(
        "/v1/leases/{lease_id}/ack",
        tags=["leases"],
        response_model=AckResponse,
        responses={
            **_ERRORS,
            404: {"model": ErrorResponse, "description": "No such lease."},
            409: {
                "model": ErrorResponse,
                "description": "The lease expired first, or was revoked because a user erased "
                "some of its records (the message says which).",
            },
        },
    )
    async def ack_lease(request: Request, _token: LeaseToken, lease_id: uuid.UUID) -> AckResponse:
        """Mark the lease's records consumed. Retrying is safe (``already_acked``)."""
        try:
            result = await ack(request.app.state.sessions, str(lease_id))
        except UnknownLease as error:
            raise ApiError(404, str(error)) from None
        except (LeaseExpired, LeaseRevoked) as error:
            raise ApiError(409, str(error)) from None
        return AckResponse(
            lease_id=result.lease_id,
            consumed=result.consumed,
            acked_at=result.acked_at,
            already_acked=result.already_acked,
        )

    @app.get("/v1/stats", tags=["corrections"], responses=_ERRORS)
    async def queue_stats(request: Request, _token: ReadToken) -> dict[str, Any]:
        """Record counts: total, available, leased, consumed; by kind and by persona."""
        return await stats(request.app.state.sessions)

    return app
