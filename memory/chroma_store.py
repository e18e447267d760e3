"""The Chroma adapter: which collections hold what, how they are opened, and the workarounds on
Chroma 1.5's internals that keep them fast and their writes durable.

Layout: one collection per (persona, user) scope holding turns, facts and pins, one per persona
for canon facts, one per persona for its voice, and one per user for the fact history. A scope's
recall is an unfiltered query on a small collection instead of a ``where`` filter on a shared one,
and one user's memories cannot come back in another user's conversation. Names are hashes of the
user id and the persona, so they carry no personal data and stay within Chroma's limits.

Workarounds, each tied to Chroma 1.5's embedded store (a Chroma server manages its own):

* :func:`index_cache_limit`: Chroma sizes its cache of loaded HNSW indexes from the open-files
  limit and has no setting for it, so the limit is lowered while a client starts.
* :class:`SealedCollection`: an evicted index loses writes not yet on disk; each write is
  followed by a second one so the index reaches disk.
* :func:`index_chroma_lookups`: two lookups by collection that Chroma runs unindexed.
* :data:`COLLECTION_METADATA`: small ``hnsw:batch_size``/``hnsw:sync_threshold`` so a small
  collection's index is on disk at once rather than replayed from Chroma's log on each load.

Figures behind these choices: ``bench/RESULTS.md`` (memory section).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import resource
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

__all__ = [
    "CANON_PREFIX",
    "COLLECTION_METADATA",
    "DEFAULT_INDEX_CACHE_SIZE",
    "FILES_PER_INDEX",
    "HISTORY_PREFIX",
    "SCOPE_PREFIX",
    "SEAL_ID",
    "SPARE_FILES",
    "VOICE_PREFIX",
    "ChromaStore",
    "SealedCollection",
    "digest",
    "index_cache_limit",
    "index_chroma_lookups",
]

_log = logging.getLogger(__name__)

SCOPE_PREFIX = "gr_s_"
HISTORY_PREFIX = "gr_h_"
CANON_PREFIX = "gr_c_"
VOICE_PREFIX = "gr_v_"
#: Small collections sync their HNSW index to disk at once; otherwise Chroma keeps their records
#: in its log and re-reads it (a scan of an unindexed table) whenever it loads the index.
COLLECTION_METADATA = {"hnsw:space": "cosine", "hnsw:batch_size": 2, "hnsw:sync_threshold": 2}
#: Scopes whose indexes an embedded store keeps loaded at most (each about 2.8 MB, however few
#: vectors it holds); Chroma's own default is the open-files limit / 5, often 204 or 4,000.
DEFAULT_INDEX_CACHE_SIZE = 1024
#: Chroma's divisor: the open files it budgets for one loaded index.
FILES_PER_INDEX = 5
#: Files the process may open beyond those it has while the limit is lowered (Chroma's start
#: opens its database and imports modules).
SPARE_FILES = 64
#: The id a seal deletes; no memory id looks like it (theirs are ``kind:hex`` or hashes).
SEAL_ID = "~greenroom-seal"

_RLIMIT_LOCK = threading.Lock()


def digest(text: str) -> str:
    """A short stable hash: collection names carry no user id or persona name."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- workarounds on Chroma's internals ---------------------------------------------------------


@contextlib.contextmanager
def index_cache_limit(indexes: int) -> Iterator[None]:
    """Chroma clients started in the block keep at most about ``indexes`` indexes loaded.

    Chroma sizes its LRU cache of loaded indexes as ``RLIMIT_NOFILE // 5`` when a client starts
    and accepts no setting for it, so the soft open-files limit is lowered for that moment (the
    way Chroma's own server is sized, ``chroma_server_nofile``), then restored. Limits: the first
    start of a store path in a process sets its size (Chroma shares one system per path); room is
    kept for the files already open plus :data:`SPARE_FILES`, so the cache may come out larger
    than asked; other threads see the lower limit meanwhile; a limit already lower is left alone.
    """
    if indexes < 1:
        raise ValueError(f"the index cache needs room for one index at least, not {indexes}")
    with _RLIMIT_LOCK:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = max(indexes * FILES_PER_INDEX, _open_files() + SPARE_FILES)
        lower = soft == resource.RLIM_INFINITY or wanted < soft
        if lower:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        try:
            yield
        finally:
            if lower:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open_files() -> int:
    """Files this process has open (0 where ``/proc`` does not say)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def index_chroma_lookups(database: Path) -> None:
    """Index the two lookups by collection that Chroma 1.5 runs unindexed on the first touch of a
    collection in a process (a cold recall, or any add to a new scope).

    ``embeddings_queue (topic, seq_id)`` (Chroma reads and purges a collection's log records with
    ``WHERE topic = ?``) and ``segments (collection)`` (two segments per collection, looked up
    with ``WHERE collection = ?``). Unindexed, both scan the whole table, which grows with the
    number of scopes. Chroma neither creates nor drops these (``IF NOT EXISTS``); a Chroma
    server's database is out of reach, so only an embedded store gets them.
    """
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as connection:
        connection.execute(
            "CREATE INDEX IF NOT EXISTS greenroom_embeddings_queue_topic"
            " ON embeddings_queue (topic, seq_id)"
        )
        connection.execute(
            "CREATE INDEX IF NOT EXISTS greenroom_segments_collection ON segments (collection)"
        )
        connection.commit()


class SealedCollection:
    """A Chroma ``Collection`` whose ``add``, ``upsert``, ``update`` and ``delete`` are each
    followed by a seal; everything else is the collection's own.

    Chroma 1.5 writes an index to disk every second write (``hnsw:sync_threshold`` is at least 2)
    and, when it evicts an index with a write not yet on disk and loads it again, that write is
    gone until the process restarts (a one-record collection fails every query, a deleted record
    is found again). The seal deletes an id that never exists: Chroma counts it as a write, so a
    write left alone makes two and reaches disk; a seal left alone loses nothing. Cost: one more
    small write a call.
    """

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


# -- the adapter -------------------------------------------------------------------------------


class ChromaStore:
    """Greenroom's collections in one Chroma client; blocking calls, not thread-confined.

    Build it with :meth:`open`. Collection handles are made on first use and kept; every handle
    it returns is a :class:`SealedCollection`. Errors are Chroma's own (the caller wraps them).
    """

    def __init__(self, client: ClientAPI) -> None:
        self.client = client
        self._handles: dict[str, SealedCollection] = {}
        self._handles_lock = threading.Lock()

    @classmethod
    def open_embedded(cls, path: Path, *, index_cache_size: int) -> ChromaStore:
        """``chromadb.PersistentClient(path)``, its index cache sized and its lookups indexed.

        Probes that ``path`` can be written first; any failure propagates.
        """
        import chromadb
        from chromadb.config import Settings

        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".greenroom-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
        with index_cache_limit(index_cache_size):
            client = chromadb.PersistentClient(path=str(path), settings=_settings(Settings))
        client.list_collections(limit=1)
        index_chroma_lookups(path / "chroma.sqlite3")
        return cls(client)

    @classmethod
    def open_server(cls, host: str, port: int) -> ChromaStore:
        """``chromadb.HttpClient(host, port)``, after one heartbeat; any failure propagates."""
        import chromadb
        from chromadb.config import Settings

        client = chromadb.HttpClient(host=host, port=port, settings=_settings(Settings))
        client.heartbeat()
        return cls(client)

    def heartbeat(self) -> None:
        self.client.heartbeat()

    def close(self) -> None:
        """Forget the handles and close the client (``Client.close``: an embedded store leaves
        its files as a clean stop does, so the next process loads each scope at full speed)."""
        with self._handles_lock:
            self._handles.clear()
        close_client = getattr(self.client, "close", None)
        if close_client is not None:
            close_client()

    # -- names ---------------------------------------------------------------------------------

    @staticmethod
    def scope_name(persona: str, user_id: str) -> str:
        return f"{SCOPE_PREFIX}{digest(user_id)}_{digest(persona)}"

    @staticmethod
    def history_name(user_id: str) -> str:
        return f"{HISTORY_PREFIX}{digest(user_id)}"

    # -- handles -------------------------------------------------------------------------------

    def collection(self, name: str) -> SealedCollection:
        """The collection ``name``, made on first use."""
        with self._handles_lock:
            handle = self._handles.get(name)
        if handle is None:
            handle = SealedCollection(
                self.client.get_or_create_collection(
                    name, embedding_function=None, metadata=dict(COLLECTION_METADATA)
                )
            )
            with self._handles_lock:
                self._handles[name] = handle
        return handle

    def existing(self, name: str) -> SealedCollection | None:
        """The collection ``name`` if it exists; never creates it."""
        from chromadb.errors import NotFoundError

        try:
            collection = self.client.get_collection(name)
        except NotFoundError:
            return None
        return SealedCollection(collection)

    def keep_handle(self, name: str, collection: SealedCollection) -> None:
        """Keep ``collection`` as the handle of ``name`` unless one is kept already."""
        with self._handles_lock:
            self._handles.setdefault(name, collection)

    def scope(self, persona: str, user_id: str) -> SealedCollection:
        """The (persona, user) scope: turns, user facts, self-statements and pins."""
        return self.collection(self.scope_name(persona, user_id))

    def canon(self, persona: str) -> SealedCollection:
        return self.collection(f"{CANON_PREFIX}{digest(persona)}")

    def voice(self, persona: str) -> SealedCollection:
        return self.collection(f"{VOICE_PREFIX}{digest(persona)}")

    def history(self, user_id: str) -> SealedCollection:
        """The user's fact history, made on first use."""
        return self.collection(self.history_name(user_id))

    def user_collection_names(self, user_id: str) -> list[str]:
        """Names of the user's scopes (with every persona) and fact history that exist."""
        prefix = f"{SCOPE_PREFIX}{digest(user_id)}_"
        history = self.history_name(user_id)
        return [
            c.name
            for c in self.client.list_collections()
            if c.name.startswith(prefix) or c.name == history
        ]

    def drop(self, name: str) -> int:
        """Delete the collection ``name`` if it exists; returns the records it held."""
        from chromadb.errors import NotFoundError

        try:
            count = self.client.get_collection(name).count()
            self.client.delete_collection(name)
        except NotFoundError:
            count = 0
        with self._handles_lock:
            self._handles.pop(name, None)
        return count


def _settings(settings_class: Any) -> Any:
    return settings_class(anonymized_telemetry=False, allow_reset=False)
