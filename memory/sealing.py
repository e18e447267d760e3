"""Chroma collections whose writes reach disk at once, so an eviction cannot undo them.

Chroma 1.5's embedded store keeps loaded HNSW indexes in an LRU cache (``RLIMIT_NOFILE // 5``
of them: 204 with the common limit of 1,024) and writes an index to disk every second write
(``hnsw:sync_threshold`` is at least 2). When it evicts an index with a write not yet on disk
and loads it again, the index comes back from disk without that write, in that process until
it restarts: a collection with one record fails every query ("Nothing found on disk"), the last
record of a collection with an odd count is missing, and a deleted record is found again
(measured with ``bench/bench_chroma_cache.py``: 65 of 120 one-record collections failed, 100
of 120 three-record ones came back short, and 106 of 120 deleted records came back).

:class:`SealedCollection` follows every write with a deletion of an id that never exists:
Chroma counts it as a write, so a write left alone makes two and the index goes to disk; a
seal left alone itself loses nothing. The cost is one more small write a call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

__all__ = ["SEAL_ID", "SealedCollection"]

#: The id the seal deletes; no memory id looks like it (theirs are ``kind:hex`` or hashes).
SEAL_ID = "~greenroom-seal"


class SealedCollection:
    """A Chroma ``Collection`` whose ``add``, ``upsert``, ``update`` and ``delete`` are each
    followed by a seal; everything else is the collection's own."""

    __slots__ = ("collection",)

    def __init__(self, collection: Collection) -> None:
        self.collection = collection

    def __getattr__(self, name: str) -> Any:
        return getattr(self.collection, name)

    def add(self, **kwargs: Any) -> None:
        self.collection.add(**kwargs)
        self._seal()

    def upsert(self, **kwargs: Any) -> None:
        self.collection.upsert(**kwargs)
        self._seal()

    def update(self, **kwargs: Any) -> None:
        self.collection.update(**kwargs)
        self._seal()

    def delete(self, **kwargs: Any) -> None:
        self.collection.delete(**kwargs)
        self._seal()

    def _seal(self) -> None:
        self.collection.delete(ids=[SEAL_ID])
