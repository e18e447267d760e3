"""Greenroom's vector memory: per-persona, per-user recall and consistency checks.

Built on chromadb (always with our own embeddings; Chroma's default embedding function would
download a model) and the bundled all-MiniLM-L6-v2. Never imports ``bot/`` or ``feedback/``.
"""

from __future__ import annotations

from .embedding import Embedder, HashingEmbedder, SentenceTransformerEmbedder, bundled_model_path
from .errors import MemoryInputError, MemoryStoreError
from .facts import ExtractedFact, extract_facts
from .service import (
    MAX_MEMORY_CHARS,
    ConsistencyFlag,
    FactEvent,
    MemoryHit,
    MemoryKind,
    MemoryRecord,
    MemoryService,
    format_memory_lines,
)

__all__ = [
    "MAX_MEMORY_CHARS",
    "ConsistencyFlag",
    "Embedder",
    "ExtractedFact",
    "FactEvent",
    "HashingEmbedder",
    "MemoryHit",
    "MemoryInputError",
    "MemoryKind",
    "MemoryRecord",
    "MemoryService",
    "MemoryStoreError",
    "SentenceTransformerEmbedder",
    "bundled_model_path",
    "extract_facts",
    "format_memory_lines",
]
