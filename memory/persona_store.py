"""What a persona itself holds, shared by all its users: the card's canon facts and its voice
(card examples and actor-approved replies), each cached in memory until it changes.

The caches are per process: a second process writing the same store is not seen until this one
syncs the persona again (the embedded store serves one process anyway). Blocking calls.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from .chroma_store import digest
from .consistency import voice_centroid

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .chroma_store import ChromaStore

__all__ = ["Canon", "PersonaStore"]

#: ``(texts, vectors, ids, created_at)`` of a persona's canon facts.
Canon = tuple[list[str], np.ndarray, list[str], list[float]]


class PersonaStore:
    """Canon and voice of each persona in ``store``, embedded with ``embed`` (``dim`` wide)."""

    def __init__(
        self, store: ChromaStore, embed: Callable[[Sequence[str]], np.ndarray], dim: int
    ) -> None:
        self._store = store
        self._embed = embed
        self._dim = dim
        self._canon: dict[str, Canon] = {}
        self._voice: dict[str, tuple[np.ndarray | None, int]] = {}

    def sync(self, persona: str, canon: list[str], voice: list[str]) -> None:
        """Make the card's canon and voice lines exactly ``canon`` and ``voice`` (ids are text
        hashes: unchanged lines stay, stale ones go); approved voice lines are kept."""
        for collection, kind, texts in (
            (self._store.canon(persona), "canon", canon),
            (self._store.voice(persona), "voice", voice),
        ):
            wanted = {f"{kind}:{digest(t)}": t for t in texts}
            existing = collection.get(where={"source": "card"}, include=[])["ids"]
            stale = [i for i in existing if i not in wanted]
            if stale:
                collection.delete(ids=stale)
            missing = [(i, t) for i, t in wanted.items() if i not in set(existing)]
            if missing:
                now = time.time()
                collection.add(
                    ids=[i for i, _ in missing],
                    documents=[t for _, t in missing],
                    embeddings=self._embed([t for _, t in missing]),
                    metadatas=[
                        {"kind": kind, "source": "card", "persona": persona, "created_at": now}
                        for _ in missing
                    ],
                )
        self._canon.pop(persona, None)
        self._voice.pop(persona, None)

    def add_voice(self, persona: str, text: str) -> None:
        """Add an actor-approved reply to the persona's voice (one record per distinct text)."""
        self._store.voice(persona).upsert(
            ids=[f"voice:{digest(text)}"],
            documents=[text],
            embeddings=self._embed([text]),
            metadatas=[
                {"kind": "voice", "source": "actor", "persona": persona, "created_at": time.time()}
            ],
        )
        self._voice.pop(persona, None)

    def forget_canon(self, persona: str) -> None:
        """Drop the cached canon (after a write to the canon collection elsewhere)."""
        self._canon.pop(persona, None)

    def canon(self, persona: str) -> Canon:
        """The persona's canon, cached until the next sync."""
        cached = self._canon.get(persona)
        if cached is None:
            got = self._store.canon(persona).get(include=["documents", "embeddings", "metadatas"])
            vectors = np.asarray(got["embeddings"], dtype=np.float32).reshape(-1, self._dim)
            times = [float(m.get("created_at", 0.0)) for m in got["metadatas"] or []]
            cached = (list(got["documents"] or []), vectors, list(got["ids"]), times)
            self._canon[persona] = cached
        return cached

    def voice(self, persona: str) -> tuple[np.ndarray | None, int]:
        """The persona's voice centroid (``None`` without lines) and how many lines made it."""
        cached = self._voice.get(persona)
        if cached is None:
            got = self._store.voice(persona).get(include=["embeddings"])
            vectors = np.asarray(got["embeddings"], dtype=np.float32).reshape(-1, self._dim)
            cached = (voice_centroid(vectors), len(vectors))
            self._voice[persona] = cached
        return cached
