"""Request and response bodies of the trainer API, as shown in its OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from feedback.queue import MAX_BATCH, MAX_TTL, MIN_TTL

__all__ = [
    "AckResponse",
    "ErasureFeedResponse",
    "ErrorResponse",
    "Format",
    "LeaseRecord",
    "LeaseRequest",
    "LeaseResponse",
    "PageResponse",
    "Tombstone",
]

Format = Literal["openai-sft", "openai-dpo", "trl-sft", "trl-dpo", "trl-kto", "oasst"]


class LeaseRequest(BaseModel):
    """Claim a batch of queue records for a training job."""

    model_config = ConfigDict(extra="forbid")

    job: str = Field(min_length=1, max_length=128, description="The training job's name.")
    limit: int = Field(default=100, ge=1, le=MAX_BATCH, description="Most records to claim.")
    ttl_seconds: int = Field(
        default=600,
        ge=int(MIN_TTL.total_seconds()),
        le=int(MAX_TTL.total_seconds()),
        description="How long the job may take before the records return to the queue.",
    )


class LeaseRecord(BaseModel):
    """One leased feedback event. Ids are pseudonyms; texts are redacted, and all ``null``
    when the user has not consented to training use (``consented`` false). ``record_id`` is
    what the erasure feed names when the event is erased."""

    record_id: str
    event_id: int
    kind: str
    actor: str
    user: str | None
    conversation: str
    consented: bool
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


class LeaseResponse(BaseModel):
    """A claimed batch; ``lease_id`` is null when nothing was available."""

    lease_id: str | None
    job: str
    expires_at: datetime | None
    records: list[LeaseRecord]


class AckResponse(BaseModel):
    """What an acknowledgement consumed; a retried one has ``already_acked`` and consumes 0."""

    lease_id: str
    consumed: int
    acked_at: datetime
    already_acked: bool


class PageResponse(BaseModel):
    """A page of export records. Pass ``next_cursor`` back to continue (also after the end,
    to receive only newer records); ``has_more`` says whether more were waiting."""

    records: list[dict[str, Any]]
    next_cursor: str | None
    has_more: bool
    manifest: dict[str, Any] = Field(
        description="Format, filters, record count, time, the erasure feed's cursor before "
        "the page was read (`erasure_cursor`) and the Greenroom version, as in the "
        "`<file>.manifest.json` of `greenroom export`."
    )


class Tombstone(BaseModel):
    """A record a user erased: delete it wherever you keep it."""

    record_id: str = Field(description="The `record_id` of export records and lease items.")
    user: str = Field(description="The erased user's pseudonym (`user_<hash>`).")
    erased_at: datetime


class ErasureFeedResponse(BaseModel):
    """A page of the erasure feed; poll again with ``next_cursor`` (always set)."""

    tombstones: list[Tombstone]
    next_cursor: str
    has_more: bool


class _ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, str]] | None = None


class ErrorResponse(BaseModel):
    """Every error: a machine-readable code and a message for people."""

    error: _ErrorDetail
