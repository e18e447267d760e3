"""What memory stores and hands back: the kinds of memory, the length limit, and the records
returned to callers. Values only; no store access."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

__all__ = [
    "MAX_MEMORY_CHARS",
    "FactEvent",
    "FactEventKind",
    "MemoryHit",
    "MemoryKind",
    "MemoryRecord",
    "as_datetime",
]

#: Longest text one memory holds. Longer turns are truncated; longer pins are refused.
MAX_MEMORY_CHARS = 1000

MemoryKind = Literal["turn", "user_fact", "self_fact", "pin", "canon"]
FactEventKind = Literal["ADD", "UPDATE", "DELETE", "NOOP"]


def as_datetime(timestamp: float) -> datetime:
    """A stored ``created_at`` (POSIX seconds) as an aware UTC datetime."""
    return datetime.fromtimestamp(timestamp, UTC)


@dataclass(frozen=True)
class MemoryHit:
    """One recalled memory; ``score`` is cosine similarity weighted by recency."""

    id: str
    text: str
    kind: MemoryKind
    source: str
    created_at: datetime
    score: float


@dataclass(frozen=True)
class MemoryRecord:
    """One stored memory as :meth:`memory.MemoryService.show_user` lists it."""

    id: str
    persona: str
    user_id: str
    kind: MemoryKind
    text: str
    source: str
    created_at: datetime


@dataclass(frozen=True)
class FactEvent:
    """What a new fact did (mem0-style): ``ADD``, ``UPDATE`` (supersede), ``DELETE`` or ``NOOP``.

    ``subject`` is ``"user"`` (a fact about the user) or ``"persona"`` (a self-statement).
    """

    event: FactEventKind
    persona: str
    user_id: str
    subject: Literal["user", "persona"]
    key: str
    old_value: str | None
    new_value: str | None
    statement: str
    source: str
    created_at: datetime
