"""Recall scoring: which candidate memories go into the prompt, and how they read there.

A candidate's score is its cosine to the query, times a recency weight for turns (half-life
14 days, floor 0.8: an old turn still counts, facts and pins do not age). The best are kept
while they fit a token budget (chars / 4, an estimate: no tokenizer on this path), skipping
near-duplicates and texts already in the prompt. Pure functions over vectors; no store access.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .records import MemoryHit, as_datetime

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "DUPLICATE_COSINE",
    "Candidate",
    "format_memory_lines",
    "recency_weight",
    "scope_candidates",
    "select",
]

#: Two memories more similar than this (cosine) are near-duplicates.
DUPLICATE_COSINE = 0.95
_TURN_HALF_LIFE_DAYS = 14.0
_LINE_CHARS = 240
_KIND_LABELS = {
    "user_fact": "user fact",
    "self_fact": "your fact",
    "pin": "pinned",
    "canon": "canon",
}

#: ``(score, hit, vector)``: the vector is the memory's, for the near-duplicate check.
Candidate = tuple[float, MemoryHit, np.ndarray]


def recency_weight(kind: str, created: float, now: float) -> float:
    """1.0 for facts, pins and canon; for turns 0.8 plus 0.2 halved every 14 days of age."""
    if kind != "turn":
        return 1.0
    age_days = max(0.0, now - created) / 86400.0
    return 0.8 + 0.2 * 0.5 ** (age_days / _TURN_HALF_LIFE_DAYS)


def scope_candidates(result: dict[str, Any], now: float) -> list[Candidate]:
    """Candidates from a Chroma cosine query result (one query; documents, metadatas,
    distances and embeddings included)."""
    candidates: list[Candidate] = []
    rows = zip(
        result["ids"][0],
        (result["documents"] or [[]])[0],
        (result["metadatas"] or [[]])[0],
        (result["distances"] or [[]])[0],
        (result["embeddings"] or [[]])[0],
        strict=True,
    )
    for memory_id, document, metadata, distance, vector in rows:
        similarity = 1.0 - float(distance)
        created = float(metadata.get("created_at", now))
        hit = MemoryHit(
            id=memory_id,
            text=document or "",
            kind=metadata["kind"],
            source=str(metadata.get("source", "")),
            created_at=as_datetime(created),
            score=similarity * recency_weight(metadata["kind"], created, now),
        )
        candidates.append((hit.score, hit, np.asarray(vector, dtype=np.float32)))
    return candidates


def select(
    candidates: Iterable[Candidate], in_prompt: Iterable[str], k: int, token_budget: int
) -> list[MemoryHit]:
    """The best-scored candidates, at most ``k``, within ``token_budget``; texts equal to one
    ``in_prompt`` (whitespace and case aside) and near-duplicates of a kept one are skipped."""
    ordered = sorted(candidates, key=lambda c: c[0], reverse=True)
    seen = {" ".join(t.split()).casefold() for t in in_prompt}
    kept: list[MemoryHit] = []
    kept_vectors: list[np.ndarray] = []
    used = 0
    for _, hit, vector in ordered:
        if len(kept) >= k:
            break
        if " ".join(hit.text.split()).casefold() in seen:
            continue
        if kept_vectors and float(np.max(np.stack(kept_vectors) @ vector)) > DUPLICATE_COSINE:
            continue
        cost = _line_tokens(hit.text)
        if used + cost > token_budget:
            continue
        kept.append(hit)
        kept_vectors.append(vector)
        used += cost
    return kept


def format_memory_lines(hits: Sequence[MemoryHit]) -> list[str]:
    """Short prompt lines, e.g. ``"- (user fact) Sister: Maya"`` or ``"- (user said) ..."``."""
    lines = []
    for hit in hits:
        if hit.kind == "turn":
            label = "you said" if hit.source == "assistant" else "user said"
        else:
            label = _KIND_LABELS[hit.kind]
        text = " ".join(hit.text.split())
        if len(text) > _LINE_CHARS:
            text = text[: _LINE_CHARS - 1] + "…"
        lines.append(f"- ({label}) {text}")
    return lines


def _line_tokens(hit_text: str) -> int:
    """Approximate tokens of one prompt line (chars / 4, rounded up)."""
    return math.ceil((min(len(hit_text), _LINE_CHARS) + 16) / 4)
