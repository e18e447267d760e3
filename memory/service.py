"""The memory service: what a persona remembers about a user, recall, and consistency checks.

Storage layout (chosen by measurement, see ``bench/bench_memory.py``): one Chroma collection per
(persona, user) scope holding turns, facts and pins, one per persona for canon facts, one per
persona for its voice, and one per user for the fact history. A scope's recall is then an
unfiltered query on a small collection (about 1 ms) instead of a ``where`` filter on a shared
one (measured 20x slower), and one user's memories can never be returned in another user's
conversation because they live in a different collection. Collection names are hashes of the
user id and the persona name, so names carry no personal data and stay within Chroma's limits.

Scoping: user facts, self-statements, turns and pins are private to one (persona, user) pair;
nothing is shared across a user's personas (the safe default: a user may tell one persona what
they would not tell another). Canon and voice belong to the persona and are shared by all users.

Every blocking Chroma or embedding call runs on a small worker pool with a timeout, so a failing
or hung store raises :class:`MemoryStoreError` promptly instead of stalling the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import numpy as np

from .chroma_api import index_cache_limit
from .consistency import find_conflicts, voice_centroid
from .errors import MemoryInputError, MemoryStoreError
from .facts import extract_facts, split_sentences
from .sealing import SealedCollection

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from chromadb.api import ClientAPI

    from .embedding import Embedder

__all__ = [
    "MAX_MEMORY_CHARS",
    "ConsistencyFlag",
    "FactEvent",
    "MemoryHit",
    "MemoryKind",
    "MemoryRecord",
    "MemoryService",
    "format_memory_lines",
]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Longest text one memory holds. Longer turns are truncated; longer pins are refused.
MAX_MEMORY_CHARS = 1000
#: Two memories more similar than this (cosine) are near-duplicates.
DUPLICATE_COSINE = 0.95

MemoryKind = Literal["turn", "user_fact", "self_fact", "pin", "canon"]
FactEventKind = Literal["ADD", "UPDATE", "DELETE", "NOOP"]

_SCOPE_PREFIX = "gr_s_"
_HISTORY_PREFIX = "gr_h_"
_CANON_PREFIX = "gr_c_"
_VOICE_PREFIX = "gr_v_"
# Small collections sync their HNSW index to disk at once; otherwise Chroma keeps their records
# in its log and re-reads it (a full scan of an unindexed table) whenever it loads the index,
# which made a cold query 60+ ms on 100k memories in 3,000 collections.
_COLLECTION_METADATA = {"hnsw:space": "cosine", "hnsw:batch_size": 2, "hnsw:sync_threshold": 2}
_ADD_CHUNK = 5000
#: Scopes whose indexes an embedded store keeps loaded at most (see :mod:`memory.chroma_api`):
#: about 2.8 GB; Chroma's own default is the open-files limit / 5, often 204 or 4,000.
DEFAULT_INDEX_CACHE_SIZE = 1024
#: Scopes :meth:`MemoryService.preload` loads by default: well within Chroma's index cache.
_PRELOAD_LIMIT = 128
_TURN_HALF_LIFE_DAYS = 14.0
_LINE_CHARS = 240
_KIND_LABELS = {
    "user_fact": "user fact",
    "self_fact": "your fact",
    "pin": "pinned",
    "canon": "canon",
}


def _index_chroma_lookups(database: Path) -> None:
    """Index the two lookups by collection that Chroma 1.5 runs unindexed on the first touch of a
    collection in a process (a cold recall, or any add to a new scope).

    * ``embeddings_queue (topic, seq_id)``: Chroma keeps each collection's last log record (its
      vector included) and reads and purges that collection's records with ``WHERE topic = ?``.
      Unindexed, that scans the whole log: one row per collection, 5 MB with 3,000 scopes,
      measured 3 ms of every cold recall on 100,000 memories.
    * ``segments (collection)``: each collection has two segments, looked up with
      ``WHERE collection = ?``; unindexed, two full scans of the table (about 390 page reads
      with 3,000 scopes, seen with ``strace``). Indexed: 1 ms less per cold recall (6.0 against
      4.9 ms in Chroma alone) and 25% more adds per second into new scopes at 2,000 scopes.

    Chroma neither creates nor drops these indexes (``IF NOT EXISTS``); a Chroma server's
    database is out of reach, so :meth:`MemoryService.open` adds them for an embedded store.
    """
    import sqlite3

    with contextlib.closing(sqlite3.connect(database, timeout=30)) as connection:
        connection.execute(
            "CREATE INDEX IF NOT EXISTS greenroom_embeddings_queue_topic"
            " ON embeddings_queue (topic, seq_id)"
        )
        connection.execute(
            "CREATE INDEX IF NOT EXISTS greenroom_segments_collection ON segments (collection)"
        )
        connection.commit()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _now() -> float:
    return time.time()


def _as_datetime(timestamp: float) -> datetime:
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
    """One stored memory as :meth:`MemoryService.show_user` lists it."""

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


@dataclass(frozen=True)
class ConsistencyFlag:
    """A consistency signal on a candidate reply; ``evidence`` is JSON-serializable."""

    kind: Literal["contradiction", "drift"]
    score: float
    threshold: float
    over_threshold: bool
    evidence: dict[str, Any] = field(default_factory=dict)


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


class MemoryService:
    """Per-persona, per-user vector memory over Chroma. Build it with :meth:`open`.

    All public coroutines raise :class:`MemoryStoreError` if the store fails or takes longer
    than ``timeout_s``; inputs that cannot be stored raise :class:`MemoryInputError`.
    """

    def __init__(
        self,
        client: ClientAPI,
        *,
        embedder: Embedder,
        location: str,
        timeout_s: float = 5.0,
        contradiction_threshold: float = 0.6,
        similarity_gate: float = 0.6,
        drift_threshold: float = 0.8,
        workers: int = 2,
    ) -> None:
        self._client = client
        self._embedder = embedder
        self.location = location
        self.timeout_s = timeout_s
        self.contradiction_threshold = contradiction_threshold
        self.similarity_gate = similarity_gate
        self.drift_threshold = drift_threshold
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="memory")
        self._handles: dict[str, SealedCollection] = {}
        self._handles_lock = threading.Lock()
        self._persona_hash: dict[str, str] = {}
        self._canon_cache: dict[str, tuple[list[str], np.ndarray, list[str], list[float]]] = {}
        self._voice_cache: dict[str, tuple[np.ndarray | None, int]] = {}
        self._closed = False

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        *,
        path: Path | None = None,
        host: str | None = None,
        port: int = 8000,
        embedder: Embedder,
        index_cache_size: int = DEFAULT_INDEX_CACHE_SIZE,
        **options: Any,
    ) -> MemoryService:
        """Open the store: ``chromadb.PersistentClient(path)``, or ``HttpClient(host, port)``.

        An embedded store keeps about ``index_cache_size`` scopes' indexes loaded at most (see
        :mod:`memory.chroma_api`). A directory that cannot be created or read, a corrupted
        database, or an unreachable server raises :class:`MemoryStoreError` naming the path or
        address. ``options`` go to the constructor (``timeout_s``, thresholds).
        """
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        if host:
            location = f"chroma server {host}:{port}"
            try:
                client = chromadb.HttpClient(host=host, port=port, settings=settings)
                client.heartbeat()
            except Exception as error:
                raise MemoryStoreError(f"cannot reach the {location}: {error}") from None
            return cls(client, embedder=embedder, location=location, **options)
        if path is None:
            raise MemoryStoreError("memory store needs a path (PersistentClient) or a host")
        path = Path(path)
        location = f"memory store at {path}"
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".greenroom-write-probe"
            probe.write_bytes(b"")
            probe.unlink()
            with index_cache_limit(index_cache_size):
                client = chromadb.PersistentClient(path=str(path), settings=settings)
            client.list_collections(limit=1)
            _index_chroma_lookups(path / "chroma.sqlite3")
        except Exception as error:
            raise MemoryStoreError(f"cannot open the {location}: {error}") from None
        return cls(client, embedder=embedder, location=location, **options)

    def close(self) -> None:
        """Stop the worker pool and close the Chroma client; later calls raise
        :class:`MemoryStoreError`.

        Queued operations are cancelled; one still running gets up to ``timeout_s`` to finish,
        then the client is closed (``Client.close``, which stops an embedded store and leaves
        its files as a clean stop does: a copy of the store taken while its client was still
        open loaded each scope at twice the cost, cold recall p50 14.6 ms against 7.4 ms on
        100,000 memories, in a new process). If it is still running then, the client is left
        open, not closed under it, and that is logged.
        """
        if self._closed:
            return
        self._closed = True
        with self._handles_lock:
            self._handles.clear()
        stopping = threading.Thread(
            target=self._executor.shutdown,
            kwargs={"wait": True, "cancel_futures": True},
            name="memory-close",
            daemon=True,
        )
        stopping.start()
        stopping.join(self.timeout_s)
        if stopping.is_alive():
            _log.warning("closing the %s: an operation still runs; client left open", self.location)
            return
        close_client = getattr(self._client, "close", None)
        if close_client is not None:
            try:
                close_client()
            except Exception as error:  # closing must not fail a shutdown
                _log.warning("closing the %s failed: %s", self.location, error)

    async def ping(self) -> None:
        """One round trip to the store (the server's heartbeat, for a Chroma server); raises
        :class:`MemoryStoreError` when it fails or takes longer than ``timeout_s``."""
        await self._run("ping", self._client.heartbeat)

    # -- plumbing ------------------------------------------------------------------------------

    async def _run(self, operation: str, func: Callable[..., _T], *args: Any, **kw: Any) -> _T:
        if self._closed:
            raise MemoryStoreError(f"{operation}: the memory service is closed ({self.location})")
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, functools.partial(func, *args, **kw))
            return await asyncio.wait_for(future, timeout=self.timeout_s)
        except (MemoryInputError, MemoryStoreError):
            raise
        except TimeoutError:
            raise MemoryStoreError(
                f"{operation} took longer than {self.timeout_s:g} s ({self.location})"
            ) from None
        except RuntimeError as error:
            if "shutdown" in str(error):
                raise MemoryStoreError(
                    f"{operation}: the memory service is closed ({self.location})"
                ) from None
            raise MemoryStoreError(f"{operation} failed ({self.location}): {error}") from error
        except Exception as error:
            raise MemoryStoreError(f"{operation} failed ({self.location}): {error}") from error

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._embedder.embed(list(texts)), dtype=np.float32)

    def _collection(self, name: str) -> SealedCollection:
        """The collection ``name`` (made on first use), its writes sealed (see
        :mod:`memory.sealing`)."""
        with self._handles_lock:
            handle = self._handles.get(name)
        if handle is None:
            handle = SealedCollection(
                self._client.get_or_create_collection(
                    name, embedding_function=None, metadata=dict(_COLLECTION_METADATA)
                )
            )
            with self._handles_lock:
                self._handles[name] = handle
        return handle

    def _scope_name(self, persona: str, user_id: str) -> str:
        return f"{_SCOPE_PREFIX}{_digest(user_id)}_{_digest(persona)}"

    def _scope(self, persona: str, user_id: str) -> SealedCollection:
        return self._collection(self._scope_name(persona, user_id))

    def _user_collections(self, user_id: str) -> list[str]:
        prefix = f"{_SCOPE_PREFIX}{_digest(user_id)}_"
        history = f"{_HISTORY_PREFIX}{_digest(user_id)}"
        return [
            c.name
            for c in self._client.list_collections()
            if c.name.startswith(prefix) or c.name == history
        ]

    @staticmethod
    def _check_text(name: str, value: str) -> None:
        if not isinstance(value, str):
            raise MemoryInputError(f"{name} must be a string, got {type(value).__name__}")

    # -- start-up -------------------------------------------------------------------------------

    async def preload(
        self, scopes: Iterable[tuple[str, str]], *, limit: int = _PRELOAD_LIMIT
    ) -> int:
        """Load the indexes of these ``(persona, user_id)`` scopes so their first recall is warm.

        Chroma loads a collection's index on the first query of a process (measured 8 to 14 ms
        on 100,000 memories, against 3 ms warm). Pass the scopes of recently active
        conversations, most recent first, at start-up as a background task, or the scope of a
        user who is typing. At most ``limit`` scopes, each held in Chroma's index cache (about
        2.8 MB each, see ``index_cache_size`` of :meth:`open`), so a ``limit`` larger than that
        cache evicts the first ones again. One scope at a time, so live turns keep the other
        worker; scopes never written are skipped, not created. Returns how many were loaded; a
        store failure stops it and is logged.
        """
        loaded = 0
        for persona, user_id in list(dict.fromkeys(scopes))[: max(0, limit)]:
            try:
                loaded += await self._run("preload", self._preload_sync, persona, user_id)
            except MemoryStoreError as error:
                _log.warning("memory preload stopped after %d scopes: %s", loaded, error)
                break
        return loaded

    def _preload_sync(self, persona: str, user_id: str) -> bool:
        from chromadb.errors import NotFoundError

        name = self._scope_name(persona, user_id)
        try:
            collection = self._client.get_collection(name)
        except NotFoundError:
            return False
        with self._handles_lock:
            self._handles.setdefault(name, SealedCollection(collection))
        probe = np.full((1, self._dim()), self._dim() ** -0.5, dtype=np.float32)
        collection.query(query_embeddings=probe, n_results=1, include=[])
        self._canon(persona)
        return True

    # -- persona canon and voice ---------------------------------------------------------------

    async def sync_persona(
        self, persona: str, *, canon_facts: Sequence[str], voice_examples: Sequence[str]
    ) -> None:
        """Store the card's canon facts and example lines; unchanged input is skipped (hash)."""
        canon = [t.strip()[:MAX_MEMORY_CHARS] for t in canon_facts if t and t.strip()]
        voice = [t.strip()[:MAX_MEMORY_CHARS] for t in voice_examples if t and t.strip()]
        signature = _digest("\x1f".join(canon) + "\x1e" + "\x1f".join(voice))
        if self._persona_hash.get(persona) == signature:
            return
        await self._run("sync_persona", self._sync_persona_sync, persona, canon, voice)
        self._persona_hash[persona] = signature

    def _sync_persona_sync(self, persona: str, canon: list[str], voice: list[str]) -> None:
        for prefix, kind, texts in (
            (_CANON_PREFIX, "canon", canon),
            (_VOICE_PREFIX, "voice", voice),
        ):
            collection = self._collection(f"{prefix}{_digest(persona)}")
            wanted = {f"{kind}:{_digest(t)}": t for t in texts}
            existing = collection.get(where={"source": "card"}, include=[])["ids"]
            stale = [i for i in existing if i not in wanted]
            if stale:
                collection.delete(ids=stale)
            missing = [(i, t) for i, t in wanted.items() if i not in set(existing)]
            if missing:
                now = _now()
                collection.add(
                    ids=[i for i, _ in missing],
                    documents=[t for _, t in missing],
                    embeddings=self._embed([t for _, t in missing]),
                    metadatas=[
                        {"kind": kind, "source": "card", "persona": persona, "created_at": now}
                        for _ in missing
                    ],
                )
        self._canon_cache.pop(persona, None)
        self._voice_cache.pop(persona, None)

    async def add_approved_voice(self, *, persona: str, text: str) -> None:
        """Add a reply an actor approved to the persona's voice (drift centroid)."""
        self._check_text("text", text)
        text = text.strip()[:MAX_MEMORY_CHARS]
        if not text:
            raise MemoryInputError("an approved voice line cannot be empty")
        await self._run("add_approved_voice", self._add_voice_sync, persona, text)

    def _add_voice_sync(self, persona: str, text: str) -> None:
        collection = self._collection(f"{_VOICE_PREFIX}{_digest(persona)}")
        collection.upsert(
            ids=[f"voice:{_digest(text)}"],
            documents=[text],
            embeddings=self._embed([text]),
            metadatas=[
                {"kind": "voice", "source": "actor", "persona": persona, "created_at": _now()}
            ],
        )
        self._voice_cache.pop(persona, None)

    def _canon(self, persona: str) -> tuple[list[str], np.ndarray, list[str], list[float]]:
        """The persona's canon (texts, vectors, ids, times), cached until the next sync."""
        cached = self._canon_cache.get(persona)
        if cached is None:
            got = self._collection(f"{_CANON_PREFIX}{_digest(persona)}").get(
                include=["documents", "embeddings", "metadatas"]
            )
            vectors = np.asarray(got["embeddings"], dtype=np.float32).reshape(-1, self._dim())
            times = [float(m.get("created_at", 0.0)) for m in got["metadatas"] or []]
            cached = (list(got["documents"] or []), vectors, list(got["ids"]), times)
            self._canon_cache[persona] = cached
        return cached

    def _voice(self, persona: str) -> tuple[np.ndarray | None, int]:
        cached = self._voice_cache.get(persona)
        if cached is None:
            got = self._collection(f"{_VOICE_PREFIX}{_digest(persona)}").get(include=["embeddings"])
            vectors = np.asarray(got["embeddings"], dtype=np.float32).reshape(-1, self._dim())
            cached = (voice_centroid(vectors), len(vectors))
            self._voice_cache[persona] = cached
        return cached

    def _dim(self) -> int:
        return int(self._embedder.dim)

    # -- remembering ---------------------------------------------------------------------------

    async def remember_turn(
        self,
        *,
        persona: str,
        user_id: str,
        conversation_id: str,
        turn_id: str,
        role: Literal["user", "assistant"],
        text: str,
        speaker: str,
    ) -> list[FactEvent]:
        """Store one turn as sent (truncated to :data:`MAX_MEMORY_CHARS`) and the facts in it.

        Facts come from rules (:mod:`memory.facts`): the user's turns give user facts, the
        persona's turns give self-statements. Returns the fact events (``NOOP`` included).
        """
        if role not in ("user", "assistant"):
            raise MemoryInputError(f"role must be 'user' or 'assistant', got {role!r}")
        self._check_text("text", text)
        if not text.strip():
            return []
        return await self._run(
            "remember_turn",
            self._remember_turn_sync,
            persona,
            user_id,
            conversation_id,
            turn_id,
            role,
            text,
            speaker,
        )

    def _remember_turn_sync(
        self,
        persona: str,
        user_id: str,
        conversation_id: str,
        turn_id: str,
        role: str,
        text: str,
        speaker: str,
    ) -> list[FactEvent]:
        scope = self._scope(persona, user_id)
        stored = text.strip()[:MAX_MEMORY_CHARS]
        facts = extract_facts(text[: MAX_MEMORY_CHARS * 4])
        vectors = self._embed([stored, *[f.sentence for f in facts]])
        now = _now()
        scope.upsert(
            ids=[f"turn:{turn_id}"],
            documents=[stored],
            embeddings=vectors[:1],
            metadatas=[
                {
                    "kind": "turn",
                    "source": role,
                    "speaker": speaker[:100],
                    "turn_id": turn_id,
                    "conversation_id": conversation_id,
                    "persona": persona,
                    "user_id": user_id,
                    "created_at": now,
                }
            ],
        )
        subject: Literal["user", "persona"] = "user" if role == "user" else "persona"
        return self._apply_facts(
            scope, persona, user_id, subject, facts, vectors[1:], f"turn:{turn_id}", now
        )

    def _apply_facts(
        self,
        scope: SealedCollection,
        persona: str,
        user_id: str,
        subject: Literal["user", "persona"],
        facts: Sequence[Any],
        vectors: np.ndarray,
        source: str,
        now: float,
    ) -> list[FactEvent]:
        if not facts:
            return []
        kind = "user_fact" if subject == "user" else "self_fact"
        ids = [f"fact:{subject}:{f.attribute}" for f in facts]
        current = scope.get(ids=ids, include=["metadatas"])
        old_values = {
            i: str(m.get("value", ""))
            for i, m in zip(current["ids"], current["metadatas"] or [], strict=True)
        }
        events: list[FactEvent] = []
        upserts: list[tuple[str, Any, np.ndarray]] = []
        deletes: list[str] = []
        for fact_id, fact, vector in zip(ids, facts, vectors, strict=True):
            old = old_values.get(fact_id)
            if fact.value is None:
                event: FactEventKind = "DELETE" if old is not None else "NOOP"
                if old is not None:
                    deletes.append(fact_id)
            elif old is None:
                event = "ADD"
                upserts.append((fact_id, fact, vector))
            elif old.casefold() == fact.value.casefold():
                event = "NOOP"
            else:
                event = "UPDATE"
                upserts.append((fact_id, fact, vector))
            events.append(
                FactEvent(
                    event=event,
                    persona=persona,
                    user_id=user_id,
                    subject=subject,
                    key=fact.attribute,
                    old_value=old,
                    new_value=fact.value,
                    statement=fact.sentence[:MAX_MEMORY_CHARS],
                    source=source,
                    created_at=_as_datetime(now),
                )
            )
        if deletes:
            scope.delete(ids=deletes)
        if upserts:
            scope.upsert(
                ids=[i for i, _, _ in upserts],
                documents=[f.display() for _, f, _ in upserts],
                embeddings=np.stack([v for _, _, v in upserts]),
                metadatas=[
                    {
                        "kind": kind,
                        "source": source,
                        "key": f.attribute,
                        "value": f.value,
                        "statement": f.sentence[:MAX_MEMORY_CHARS],
                        "persona": persona,
                        "user_id": user_id,
                        "created_at": now,
                    }
                    for _, f, _ in upserts
                ],
            )
        self._write_history(user_id, [e for e in events if e.event != "NOOP"])
        return events

    def _write_history(self, user_id: str, events: Sequence[FactEvent]) -> None:
        if not events:
            return
        history = self._collection(f"{_HISTORY_PREFIX}{_digest(user_id)}")
        history.add(
            ids=[f"event:{uuid.uuid4().hex}" for _ in events],
            documents=[e.statement for e in events],
            # The history is read by metadata only; a constant 1-d vector keeps Chroma happy.
            embeddings=np.ones((len(events), 1), dtype=np.float32),
            metadatas=[
                {
                    "event": e.event,
                    "persona": e.persona,
                    "user_id": e.user_id,
                    "subject": e.subject,
                    "key": e.key,
                    "old_value": e.old_value if e.old_value is not None else "",
                    "new_value": e.new_value if e.new_value is not None else "",
                    "has_old": e.old_value is not None,
                    "has_new": e.new_value is not None,
                    "source": e.source,
                    "created_at": e.created_at.timestamp(),
                }
                for e in events
            ],
        )

    async def replace_turn(self, *, persona: str, user_id: str, turn_id: str, text: str) -> None:
        """Replace a stored turn's text (an actor's rewrite is what was finally sent).

        Self-statements and user facts taken from the original are withdrawn (``DELETE``) and
        those in the new text applied. An unknown ``turn_id`` raises :class:`MemoryInputError`.
        """
        self._check_text("text", text)
        if not text.strip():
            raise MemoryInputError("a replacement turn cannot be empty")
        await self._run("replace_turn", self._replace_turn_sync, persona, user_id, turn_id, text)

    def _replace_turn_sync(self, persona: str, user_id: str, turn_id: str, text: str) -> None:
        scope = self._scope(persona, user_id)
        turn_key = f"turn:{turn_id}"
        got = scope.get(ids=[turn_key], include=["metadatas"])
        if not got["ids"]:
            raise MemoryInputError(f"no remembered turn {turn_id!r} for this persona and user")
        metadata = dict(got["metadatas"][0])
        stored = text.strip()[:MAX_MEMORY_CHARS]
        facts = extract_facts(text[: MAX_MEMORY_CHARS * 4])
        vectors = self._embed([stored, *[f.sentence for f in facts]])
        now = _now()
        metadata["replaced_at"] = now
        scope.upsert(
            ids=[turn_key], documents=[stored], embeddings=vectors[:1], metadatas=[metadata]
        )
        subject: Literal["user", "persona"] = "user" if metadata["source"] == "user" else "persona"
        old_facts = scope.get(where={"source": turn_key}, include=["metadatas"])
        new_keys = {f.attribute for f in facts}
        withdrawn = [
            (i, m)
            for i, m in zip(old_facts["ids"], old_facts["metadatas"] or [], strict=True)
            if m["key"] not in new_keys
        ]
        if withdrawn:
            scope.delete(ids=[i for i, _ in withdrawn])
            self._write_history(
                user_id,
                [
                    FactEvent(
                        event="DELETE",
                        persona=persona,
                        user_id=user_id,
                        subject=subject,
                        key=str(m["key"]),
                        old_value=str(m["value"]),
                        new_value=None,
                        statement=stored,
                        source=f"{turn_key}:replaced",
                        created_at=_as_datetime(now),
                    )
                    for _, m in withdrawn
                ],
            )
        self._apply_facts(scope, persona, user_id, subject, facts, vectors[1:], turn_key, now)

    async def pin(
        self, *, persona: str, user_id: str, text: str, source: Literal["user", "actor"]
    ) -> MemoryHit:
        """Pin a memory (``/remember``, or an actor). At most :data:`MAX_MEMORY_CHARS` characters.

        Empty, too long, or a near-duplicate (cosine > 0.95) of a pin in this scope raises
        :class:`MemoryInputError`.
        """
        self._check_text("text", text)
        if source not in ("user", "actor"):
            raise MemoryInputError(f"pin source must be 'user' or 'actor', got {source!r}")
        text = text.strip()
        if not text:
            raise MemoryInputError("a pinned memory cannot be empty")
        if len(text) > MAX_MEMORY_CHARS:
            raise MemoryInputError(
                f"a pinned memory can be at most {MAX_MEMORY_CHARS} characters, got {len(text)}"
            )
        return await self._run("pin", self._pin_sync, persona, user_id, text, source)

    def _pin_sync(self, persona: str, user_id: str, text: str, source: str) -> MemoryHit:
        scope = self._scope(persona, user_id)
        vector = self._embed([text])
        pins = scope.get(where={"kind": "pin"}, include=["documents", "embeddings"])
        if pins["ids"]:
            existing = np.asarray(pins["embeddings"], dtype=np.float32)
            similarity = existing @ vector[0]
            best = int(np.argmax(similarity))
            documents = pins["documents"] or []
            if similarity[best] > DUPLICATE_COSINE or documents[best].casefold() == text.casefold():
                raise MemoryInputError(f"already pinned: {documents[best][:80]!r}")
        now = _now()
        pin_id = f"pin:{uuid.uuid4().hex}"
        scope.add(
            ids=[pin_id],
            documents=[text],
            embeddings=vector,
            metadatas=[
                {
                    "kind": "pin",
                    "source": source,
                    "persona": persona,
                    "user_id": user_id,
                    "created_at": now,
                }
            ],
        )
        return MemoryHit(pin_id, text, "pin", source, _as_datetime(now), 1.0)

    async def add_many(
        self,
        *,
        persona: str,
        user_id: str,
        texts: Sequence[str],
        kind: MemoryKind = "turn",
        source: str = "import",
        embeddings: np.ndarray | None = None,
        created_at: datetime | None = None,
    ) -> None:
        """Bulk-add memories to one scope (or canon), embedding in batches unless given.

        Texts are truncated to :data:`MAX_MEMORY_CHARS`; no fact extraction or duplicate checks.
        """
        if kind not in get_args(MemoryKind):
            raise MemoryInputError(f"unknown memory kind {kind!r}")
        if embeddings is not None and len(embeddings) != len(texts):
            raise MemoryInputError(f"got {len(embeddings)} embeddings for {len(texts)} texts")
        await self._run(
            "add_many",
            self._add_many_sync,
            persona,
            user_id,
            [t[:MAX_MEMORY_CHARS] for t in texts],
            kind,
            source,
            embeddings,
            (created_at or datetime.now(UTC)).timestamp(),
        )

    def _add_many_sync(
        self,
        persona: str,
        user_id: str,
        texts: list[str],
        kind: str,
        source: str,
        embeddings: np.ndarray | None,
        timestamp: float,
    ) -> None:
        if kind == "canon":
            collection = self._collection(f"{_CANON_PREFIX}{_digest(persona)}")
            self._canon_cache.pop(persona, None)
        else:
            collection = self._scope(persona, user_id)
        for start in range(0, len(texts), _ADD_CHUNK):
            chunk = texts[start : start + _ADD_CHUNK]
            vectors = (
                self._embed(chunk)
                if embeddings is None
                else np.asarray(embeddings[start : start + _ADD_CHUNK], dtype=np.float32)
            )
            collection.add(
                ids=[f"{kind}:{uuid.uuid4().hex}" for _ in chunk],
                documents=chunk,
                embeddings=vectors,
                metadatas=[
                    {
                        "kind": kind,
                        "source": source,
                        "persona": persona,
                        "user_id": user_id,
                        "created_at": timestamp,
                    }
                    for _ in chunk
                ],
            )

    # -- recall --------------------------------------------------------------------------------

    async def recall(
        self,
        *,
        persona: str,
        user_id: str,
        query_texts: Sequence[str],
        k: int = 6,
        token_budget: int = 200,
    ) -> list[MemoryHit]:
        """The memories most relevant to the recent messages, for the prompt's memory slot.

        The last three ``query_texts`` are embedded as one text; candidates from this scope and
        the persona's canon are scored by cosine times a recency weight for turns (half-life 14
        days, floor 0.8), near-duplicates (cosine > 0.95) and texts equal to a query text are
        dropped, and lines are kept while they fit ``token_budget`` (chars / 4).
        """
        texts = [t for t in query_texts if t and t.strip()]
        if k <= 0 or token_budget <= 0 or not texts:
            return []
        return await self._run(
            "recall", self._recall_sync, persona, user_id, texts[-3:], k, token_budget
        )

    def _recall_sync(
        self, persona: str, user_id: str, texts: list[str], k: int, token_budget: int
    ) -> list[MemoryHit]:
        query = self._embed(["\n".join(texts)[-MAX_MEMORY_CHARS * 2 :]])
        include = ["documents", "metadatas", "distances", "embeddings"]
        candidates: list[tuple[float, MemoryHit, np.ndarray]] = []
        now = _now()
        result = self._scope(persona, user_id).query(
            query_embeddings=query, n_results=k * 3, include=include
        )
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
            weight = 1.0
            if metadata["kind"] == "turn":
                age_days = max(0.0, now - created) / 86400.0
                weight = 0.8 + 0.2 * 0.5 ** (age_days / _TURN_HALF_LIFE_DAYS)
            hit = MemoryHit(
                id=memory_id,
                text=document or "",
                kind=metadata["kind"],
                source=str(metadata.get("source", "")),
                created_at=_as_datetime(created),
                score=similarity * weight,
            )
            candidates.append((hit.score, hit, np.asarray(vector, dtype=np.float32)))
        # Canon is small and cached in memory: exact cosine in numpy, no second store query.
        canon_texts, canon_vectors, canon_ids, canon_times = self._canon(persona)
        if canon_texts:
            similarity = canon_vectors @ query[0]
            for index in np.argsort(-similarity)[:k]:
                hit = MemoryHit(
                    id=canon_ids[index],
                    text=canon_texts[index],
                    kind="canon",
                    source="card",
                    created_at=_as_datetime(canon_times[index]),
                    score=float(similarity[index]),
                )
                candidates.append((hit.score, hit, canon_vectors[index]))
        candidates.sort(key=lambda c: c[0], reverse=True)
        in_prompt = {" ".join(t.split()).casefold() for t in texts}
        kept: list[MemoryHit] = []
        kept_vectors: list[np.ndarray] = []
        used = 0
        for _, hit, vector in candidates:
            if len(kept) >= k:
                break
            if " ".join(hit.text.split()).casefold() in in_prompt:
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

    # -- consistency ---------------------------------------------------------------------------

    async def check_reply(self, *, persona: str, user_id: str, reply: str) -> list[ConsistencyFlag]:
        """Consistency flags for a candidate reply (see :mod:`memory.consistency`).

        One ``contradiction`` flag per conflict found with canon or earlier self-statements in
        this scope (strongest first; none when the reply is consistent), then one ``drift``
        flag when the persona has voice examples.
        """
        self._check_text("reply", reply)
        if not reply.strip():
            return []
        return await self._run("check_reply", self._check_reply_sync, persona, user_id, reply)

    def _check_reply_sync(self, persona: str, user_id: str, reply: str) -> list[ConsistencyFlag]:
        canon_texts, canon_vectors, _, _ = self._canon(persona)
        own = self._scope(persona, user_id).get(
            where={"kind": "self_fact"}, include=["metadatas", "embeddings"]
        )
        facts = [(t, "canon", "card") for t in canon_texts]
        facts += [
            (str(m["statement"]), "self_fact", str(m["source"])) for m in own["metadatas"] or []
        ]
        fact_vectors = np.concatenate(
            [
                canon_vectors,
                np.asarray(own["embeddings"], dtype=np.float32).reshape(-1, self._dim()),
            ]
        )
        sentences = split_sentences(reply)[:20]
        vectors = self._embed([reply[: MAX_MEMORY_CHARS * 2], *sentences])
        conflicts = find_conflicts(
            reply, facts, fact_vectors, vectors[1:], gate=self.similarity_gate
        )
        flags = [
            ConsistencyFlag(
                kind="contradiction",
                score=round(c.score, 4),
                threshold=self.contradiction_threshold,
                over_threshold=c.score >= self.contradiction_threshold,
                evidence={
                    "rule": c.rule,
                    "fact": c.fact_text,
                    "fact_kind": c.fact_kind,
                    "fact_source": c.fact_source,
                    "reply_sentence": c.reply_sentence,
                    **c.detail,
                },
            )
            for c in conflicts
        ]
        centroid, examples = self._voice(persona)
        if centroid is not None:
            similarity = float(vectors[0] @ centroid)
            drift = 1.0 - similarity
            flags.append(
                ConsistencyFlag(
                    kind="drift",
                    score=round(drift, 4),
                    threshold=self.drift_threshold,
                    over_threshold=drift >= self.drift_threshold,
                    evidence={"similarity_to_voice": round(similarity, 4), "voice_lines": examples},
                )
            )
        return flags

    # -- inspection and erasure ----------------------------------------------------------------

    async def show_user(self, *, user_id: str, persona: str | None = None) -> list[MemoryRecord]:
        """Everything remembered about ``user_id`` (optionally with one persona), oldest first."""
        return await self._run("show_user", self._show_user_sync, user_id, persona)

    def _show_user_sync(self, user_id: str, persona: str | None) -> list[MemoryRecord]:
        if persona is not None:
            names = [self._scope_name(persona, user_id)]
        else:
            names = [n for n in self._user_collections(user_id) if n.startswith(_SCOPE_PREFIX)]
        records: list[MemoryRecord] = []
        for name in names:
            got = self._collection(name).get(include=["documents", "metadatas"])
            for memory_id, document, metadata in zip(
                got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True
            ):
                records.append(
                    MemoryRecord(
                        id=memory_id,
                        persona=str(metadata.get("persona", "")),
                        user_id=str(metadata.get("user_id", user_id)),
                        kind=metadata["kind"],
                        text=document or "",
                        source=str(metadata.get("source", "")),
                        created_at=_as_datetime(float(metadata.get("created_at", 0.0))),
                    )
                )
        records.sort(key=lambda r: r.created_at)
        return records

    async def fact_history(self, *, user_id: str, persona: str | None = None) -> list[FactEvent]:
        """Every ADD/UPDATE/DELETE of a fact in ``user_id``'s conversations, oldest first."""
        return await self._run("fact_history", self._fact_history_sync, user_id, persona)

    def _fact_history_sync(self, user_id: str, persona: str | None) -> list[FactEvent]:
        from chromadb.errors import NotFoundError

        try:
            history = self._client.get_collection(f"{_HISTORY_PREFIX}{_digest(user_id)}")
        except NotFoundError:
            return []
        where = {"persona": persona} if persona is not None else None
        got = history.get(where=where, include=["documents", "metadatas"])
        events = [
            FactEvent(
                event=m["event"],
                persona=str(m["persona"]),
                user_id=str(m["user_id"]),
                subject=m["subject"],
                key=str(m["key"]),
                old_value=str(m["old_value"]) if m["has_old"] else None,
                new_value=str(m["new_value"]) if m["has_new"] else None,
                statement=document or "",
                source=str(m["source"]),
                created_at=_as_datetime(float(m["created_at"])),
            )
            for document, m in zip(got["documents"] or [], got["metadatas"] or [], strict=True)
        ]
        events.sort(key=lambda e: e.created_at)
        return events

    async def delete_data_for_user(self, *, requester: str, user_id: str) -> int:
        """Erase everything ``user_id`` is remembered by, across personas; returns items removed.

        Turns, facts, pins and the fact history go (their collections are dropped), and cached
        query vectors are forgotten. ``requester`` ("user", "owner", "actor", ...) is logged.
        """
        removed = await self._run("delete_data_for_user", self._delete_user_sync, user_id)
        _log.info(
            "erased %d memories of user %s (requested by %s)", removed, _digest(user_id), requester
        )
        return removed

    async def forget_persona_user(self, *, persona: str, user_id: str) -> int:
        """Erase what one persona remembers of ``user_id`` (turns, facts, pins, their history);
        the user's memories with other personas stay. Returns items removed."""
        removed = await self._run("forget_persona_user", self._forget_scope_sync, persona, user_id)
        _log.info("erased %d memories of user %s with %s", removed, _digest(user_id), persona)
        return removed

    def _forget_scope_sync(self, persona: str, user_id: str) -> int:
        from chromadb.errors import NotFoundError

        removed = 0
        name = self._scope_name(persona, user_id)
        try:
            removed += self._client.get_collection(name).count()
            self._client.delete_collection(name)
        except NotFoundError:
            pass
        with self._handles_lock:
            self._handles.pop(name, None)
        try:
            history = SealedCollection(
                self._client.get_collection(f"{_HISTORY_PREFIX}{_digest(user_id)}")
            )
        except NotFoundError:
            return removed
        ids = history.get(where={"persona": persona}, include=[])["ids"]
        if ids:
            history.delete(ids=ids)
        clear_cache = getattr(self._embedder, "clear_cache", None)
        if callable(clear_cache):
            clear_cache()
        return removed + len(ids)

    def _delete_user_sync(self, user_id: str) -> int:
        removed = 0
        for name in self._user_collections(user_id):
            removed += self._collection(name).count()
            with self._handles_lock:
                self._handles.pop(name, None)
            self._client.delete_collection(name)
        clear_cache = getattr(self._embedder, "clear_cache", None)
        if callable(clear_cache):
            clear_cache()
        return removed
