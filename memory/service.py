"""The memory service the engine uses: what a persona remembers about a user, recall, and
consistency checks, over the layers below it.

Layers: :mod:`memory.chroma_store` (collections and Chroma workarounds), :mod:`memory.recall`
(scoring), :mod:`memory.facts` and :mod:`memory.fact_updates` (facts and their history),
:mod:`memory.persona_store` (canon and voice), :mod:`memory.consistency` (contradiction and
drift). This module validates input, writes turns and pins, and runs every blocking call on a
small worker pool with a timeout, so a failing or hung store raises :class:`MemoryStoreError`
promptly instead of stalling the event loop.

Scoping: user facts, self-statements, turns and pins are private to one (persona, user) pair;
nothing is shared across a user's personas (a user may tell one persona what they would not tell
another). Canon and voice belong to the persona and are shared by all users.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import numpy as np

from . import recall as scoring
from .chroma_store import DEFAULT_INDEX_CACHE_SIZE, SCOPE_PREFIX, ChromaStore, digest
from .consistency import (
    ConsistencyFlag,
    contradiction_flags,
    drift_flag,
    find_conflicts,
    find_user_conflicts,
)
from .errors import MemoryInputError, MemoryStoreError
from .fact_updates import apply_facts, read_history, withdraw_facts
from .facts import extract_facts, split_sentences
from .persona_store import PersonaStore
from .recall import DUPLICATE_COSINE, format_memory_lines
from .records import (
    MAX_MEMORY_CHARS,
    FactEvent,
    MemoryHit,
    MemoryKind,
    MemoryRecord,
    as_datetime,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Sequence

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

_ADD_CHUNK = 5000
#: Scopes :meth:`MemoryService.preload` loads by default: well within Chroma's index cache.
_PRELOAD_LIMIT = 128


def _now() -> float:
    return time.time()


class MemoryService:
    """Per-persona, per-user vector memory over Chroma. Build it with :meth:`open`.

    All public coroutines raise :class:`MemoryStoreError` if the store fails or takes longer
    than ``timeout_s``; inputs that cannot be stored raise :class:`MemoryInputError`.
    """

    def __init__(
        self,
        store: ChromaStore,
        *,
        embedder: Embedder,
        location: str,
        timeout_s: float = 5.0,
        contradiction_threshold: float = 0.6,
        similarity_gate: float = 0.6,
        drift_threshold: float = 0.8,
        workers: int = 2,
    ) -> None:
        self._store = store
        self._embedder = embedder
        self.location = location
        self.timeout_s = timeout_s
        self.contradiction_threshold = contradiction_threshold
        self.similarity_gate = similarity_gate
        self.drift_threshold = drift_threshold
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="memory")
        self._personas = PersonaStore(store, self._embed, self._dim())
        self._persona_hash: dict[str, str] = {}
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
        :func:`memory.chroma_store.index_cache_limit`). A directory that cannot be created or
        read, a corrupted database, or an unreachable server raises :class:`MemoryStoreError`
        naming the path or address. ``options`` go to the constructor (``timeout_s``,
        thresholds).
        """
        if host:
            location = f"chroma server {host}:{port}"
            try:
                store = ChromaStore.open_server(host, port)
            except Exception as error:
                raise MemoryStoreError(f"cannot reach the {location}: {error}") from None
            return cls(store, embedder=embedder, location=location, **options)
        if path is None:
            raise MemoryStoreError("memory store needs a path (PersistentClient) or a host")
        path = Path(path)
        location = f"memory store at {path}"
        try:
            store = ChromaStore.open_embedded(path, index_cache_size=index_cache_size)
        except Exception as error:
            raise MemoryStoreError(f"cannot open the {location}: {error}") from None
        return cls(store, embedder=embedder, location=location, **options)

    def close(self) -> None:
        """Stop the worker pool and close the Chroma client; later calls raise
        :class:`MemoryStoreError`.

        Queued operations are cancelled; one still running gets up to ``timeout_s`` to finish,
        then the client is closed (a clean stop, see :meth:`ChromaStore.close`). If it is still
        running then, the client is left open, not closed under it, and that is logged.
        """
        if self._closed:
            return
        self._closed = True
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
        try:
            self._store.close()
        except Exception as error:  # closing must not fail a shutdown
            _log.warning("closing the %s failed: %s", self.location, error)

    async def ping(self) -> None:
        """One round trip to the store (the server's heartbeat, for a Chroma server); raises
        :class:`MemoryStoreError` when it fails or takes longer than ``timeout_s``."""
        await self._run("ping", self._store.heartbeat)

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

    def _dim(self) -> int:
        return int(self._embedder.dim)

    def _clear_embedding_cache(self) -> None:
        clear_cache = getattr(self._embedder, "clear_cache", None)
        if callable(clear_cache):
            clear_cache()

    @staticmethod
    def _check_text(name: str, value: str) -> None:
        if not isinstance(value, str):
            raise MemoryInputError(f"{name} must be a string, got {type(value).__name__}")

    # -- start-up -------------------------------------------------------------------------------

    async def preload(
        self, scopes: Iterable[tuple[str, str]], *, limit: int = _PRELOAD_LIMIT
    ) -> int:
        """Load the indexes of these ``(persona, user_id)`` scopes so their first recall is warm.

        Chroma loads a collection's index on its first query in a process, which costs several
        times a warm query. Pass the scopes of recently active conversations, most recent first,
        at start-up as a background task, or the scope of a user who is typing. At most
        ``limit`` scopes, each held in Chroma's index cache (see ``index_cache_size`` of
        :meth:`open`), so a ``limit`` larger than that cache evicts the first ones again. One
        scope at a time, so live turns keep the other worker; scopes never written are skipped,
        not created. Returns how many were loaded; a store failure stops it and is logged.
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
        name = self._store.scope_name(persona, user_id)
        collection = self._store.existing(name)
        if collection is None:
            return False
        self._store.keep_handle(name, collection)
        probe = np.full((1, self._dim()), self._dim() ** -0.5, dtype=np.float32)
        collection.query(query_embeddings=probe, n_results=1, include=[])
        self._personas.canon(persona)
        return True

    # -- persona canon and voice ---------------------------------------------------------------

    async def sync_persona(
        self, persona: str, *, canon_facts: Sequence[str], voice_examples: Sequence[str]
    ) -> None:
        """Store the card's canon facts and example lines; unchanged input is skipped (hash)."""
        canon = [t.strip()[:MAX_MEMORY_CHARS] for t in canon_facts if t and t.strip()]
        voice = [t.strip()[:MAX_MEMORY_CHARS] for t in voice_examples if t and t.strip()]
        signature = digest("\x1f".join(canon) + "\x1e" + "\x1f".join(voice))
        if self._persona_hash.get(persona) == signature:
            return
        await self._run("sync_persona", self._personas.sync, persona, canon, voice)
        self._persona_hash[persona] = signature

    async def add_approved_voice(self, *, persona: str, text: str) -> None:
        """Add a reply an actor approved to the persona's voice (drift centroid)."""
        self._check_text("text", text)
        text = text.strip()[:MAX_MEMORY_CHARS]
        if not text:
            raise MemoryInputError("an approved voice line cannot be empty")
        await self._run("add_approved_voice", self._personas.add_voice, persona, text)

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
        scope = self._store.scope(persona, user_id)
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
        return apply_facts(
            self._store,
            scope,
            persona,
            user_id,
            subject,
            facts,
            vectors[1:],
            f"turn:{turn_id}",
            now,
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
        scope = self._store.scope(persona, user_id)
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
        withdraw_facts(
            self._store,
            scope,
            persona,
            user_id,
            subject,
            turn_key,
            {f.attribute for f in facts},
            stored,
            now,
        )
        apply_facts(
            self._store, scope, persona, user_id, subject, facts, vectors[1:], turn_key, now
        )

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
        scope = self._store.scope(persona, user_id)
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
        return MemoryHit(pin_id, text, "pin", source, as_datetime(now), 1.0)

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
            collection = self._store.canon(persona)
            self._personas.forget_canon(persona)
        else:
            collection = self._store.scope(persona, user_id)
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
        shown_turns: Collection[str] = (),
    ) -> list[MemoryHit]:
        """The memories most relevant to the recent messages, for the prompt's memory slot.

        The last three ``query_texts`` are embedded as one text; candidates from this scope are
        scored and kept as :mod:`memory.recall` says (recency weight for turns, near-duplicates
        and texts equal to a query text dropped, ``token_budget``). Turns in ``shown_turns``
        (their ``turn_id``s: the prompt's history shows them) are not candidates, so a fact
        drawn from one is kept rather than dropped as its near-duplicate. Canon is not
        recalled: the card's system prompt carries all of it.
        """
        texts = [t for t in query_texts if t and t.strip()]
        if k <= 0 or token_budget <= 0 or not texts:
            return []
        shown = frozenset(f"turn:{turn_id}" for turn_id in shown_turns)
        return await self._run(
            "recall", self._recall_sync, persona, user_id, texts[-3:], k, token_budget, shown
        )

    def _recall_sync(
        self,
        persona: str,
        user_id: str,
        texts: list[str],
        k: int,
        token_budget: int,
        shown: frozenset[str],
    ) -> list[MemoryHit]:
        query = self._embed(["\n".join(texts)[-MAX_MEMORY_CHARS * 2 :]])
        result = self._store.scope(persona, user_id).query(
            query_embeddings=query,
            n_results=k * 3 + len(shown),
            include=["documents", "metadatas", "distances", "embeddings"],
        )
        candidates = [
            candidate
            for candidate in scoring.scope_candidates(result, _now())
            if candidate[1].id not in shown
        ]
        return scoring.select(candidates, texts, k, token_budget)

    # -- consistency ---------------------------------------------------------------------------

    async def check_reply(self, *, persona: str, user_id: str, reply: str) -> list[ConsistencyFlag]:
        """Consistency flags for a candidate reply (see :mod:`memory.consistency`).

        One ``contradiction`` flag per conflict found with canon, earlier self-statements or
        the user's facts in this scope (strongest first; none when the reply is consistent),
        then one ``drift`` flag when the persona has voice examples.
        """
        self._check_text("reply", reply)
        if not reply.strip():
            return []
        return await self._run("check_reply", self._check_reply_sync, persona, user_id, reply)

    def _check_reply_sync(self, persona: str, user_id: str, reply: str) -> list[ConsistencyFlag]:
        canon_texts, canon_vectors, _, _ = self._personas.canon(persona)
        scope = self._store.scope(persona, user_id)
        own = scope.get(where={"kind": "self_fact"}, include=["metadatas", "embeddings"])
        told = scope.get(where={"kind": "user_fact"}, include=["metadatas"])
        user_facts = [
            (str(m["key"]), str(m["value"]), str(m["statement"])) for m in told["metadatas"] or []
        ]
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
        ) + find_user_conflicts(reply, user_facts)
        conflicts.sort(key=lambda conflict: conflict.score, reverse=True)
        flags = contradiction_flags(conflicts, self.contradiction_threshold)
        centroid, examples = self._personas.voice(persona)
        if centroid is not None:
            flags.append(drift_flag(vectors[0], centroid, examples, self.drift_threshold))
        return flags

    # -- inspection and erasure ----------------------------------------------------------------

    async def show_user(self, *, user_id: str, persona: str | None = None) -> list[MemoryRecord]:
        """Everything remembered about ``user_id`` (optionally with one persona), oldest first."""
        return await self._run("show_user", self._show_user_sync, user_id, persona)

    def _show_user_sync(self, user_id: str, persona: str | None) -> list[MemoryRecord]:
        if persona is not None:
            names = [self._store.scope_name(persona, user_id)]
        else:
            names = [
                n for n in self._store.user_collection_names(user_id) if n.startswith(SCOPE_PREFIX)
            ]
        records: list[MemoryRecord] = []
        for name in names:
            got = self._store.collection(name).get(include=["documents", "metadatas"])
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
                        created_at=as_datetime(float(metadata.get("created_at", 0.0))),
                    )
                )
        records.sort(key=lambda r: r.created_at)
        return records

    async def fact_history(self, *, user_id: str, persona: str | None = None) -> list[FactEvent]:
        """Every ADD/UPDATE/DELETE of a fact in ``user_id``'s conversations, oldest first."""
        return await self._run("fact_history", read_history, self._store, user_id, persona)

    async def delete_data_for_user(self, *, requester: str, user_id: str) -> int:
        """Erase everything ``user_id`` is remembered by, across personas; returns items removed.

        Turns, facts, pins and the fact history go (their collections are dropped), and cached
        query vectors are forgotten. ``requester`` ("user", "owner", "actor", ...) is logged.
        """
        removed = await self._run("delete_data_for_user", self._delete_user_sync, user_id)
        _log.info(
            "erased %d memories of user %s (requested by %s)", removed, digest(user_id), requester
        )
        return removed

    async def forget_persona_user(self, *, persona: str, user_id: str) -> int:
        """Erase what one persona remembers of ``user_id`` (turns, facts, pins, their history);
        the user's memories with other personas stay. Returns items removed."""
        removed = await self._run("forget_persona_user", self._forget_scope_sync, persona, user_id)
        _log.info("erased %d memories of user %s with %s", removed, digest(user_id), persona)
        return removed

    def _forget_scope_sync(self, persona: str, user_id: str) -> int:
        removed = self._store.drop(self._store.scope_name(persona, user_id))
        history = self._store.existing(self._store.history_name(user_id))
        if history is None:
            return removed
        ids = history.get(where={"persona": persona}, include=[])["ids"]
        if ids:
            history.delete(ids=ids)
        self._clear_embedding_cache()
        return removed + len(ids)

    def _delete_user_sync(self, user_id: str) -> int:
        removed = 0
        for name in self._store.user_collection_names(user_id):
            removed += self._store.drop(name)
        self._clear_embedding_cache()
        return removed
