"""Greenroom's vector memory: per-persona, per-user recall and consistency checks.

Built on chromadb (always with our own embeddings; Chroma's default embedding function would
download a model) and the bundled all-MiniLM-L6-v2. Never imports ``bot/`` or ``feedback/``.
"""

from __future__ import annotations

from .consistency import ConsistencyFlag
from .embedding import Embedder, HashingEmbedder, SentenceTransformerEmbedder, bundled_model_path
from .errors import MemoryInputError, MemoryStoreError
from .facts import ExtractedFact, extract_facts
from .recall import format_memory_lines
from .records import MAX_MEMORY_CHARS, FactEvent, MemoryHit, MemoryKind, MemoryRecord
from .service import MemoryService

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
