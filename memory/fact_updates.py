"""Kept facts and their history: what a newly extracted fact does to the facts a scope holds
(``ADD``, ``UPDATE``, ``DELETE`` or ``NOOP``, mem0-style), and the per-user log of those changes.

A scope keeps one record per (subject, key), id ``fact:<subject>:<key>``, so a newer fact with
the same key supersedes the older one. The history is read by metadata only (``fact_history``,
erasure), never by similarity, hence its constant one-dimensional vectors. Blocking calls on
:mod:`memory.chroma_store` collections; extraction itself is :mod:`memory.facts`.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .records import MAX_MEMORY_CHARS, FactEvent, FactEventKind, as_datetime

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .chroma_store import ChromaStore, SealedCollection
    from .facts import ExtractedFact

__all__ = ["apply_facts", "read_history", "withdraw_facts", "write_history"]

Subject = Literal["user", "persona"]


def apply_facts(
    store: ChromaStore,
    scope: SealedCollection,
    persona: str,
    user_id: str,
    subject: Subject,
    facts: Sequence[ExtractedFact],
    vectors: np.ndarray,
    source: str,
    now: float,
) -> list[FactEvent]:
    """Apply ``facts`` (with the embeddings of their sentences) to ``scope`` and log the changes.

    Returns one event per fact, ``NOOP`` included (same value, case aside; or deleting a fact
    that is not kept); only the others reach the history.
    """
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
                created_at=as_datetime(now),
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
    write_history(store, user_id, [e for e in events if e.event != "NOOP"])
    return events


def withdraw_facts(
    store: ChromaStore,
    scope: SealedCollection,
    persona: str,
    user_id: str,
    subject: Subject,
    turn_key: str,
    keep_keys: set[str],
    statement: str,
    now: float,
) -> None:
    """Delete the facts taken from the turn ``turn_key`` whose key is not in ``keep_keys`` (the
    turn was rewritten), logging a ``DELETE`` sourced ``<turn_key>:replaced`` for each."""
    old_facts = scope.get(where={"source": turn_key}, include=["metadatas"])
    withdrawn = [
        (i, m)
        for i, m in zip(old_facts["ids"], old_facts["metadatas"] or [], strict=True)
        if m["key"] not in keep_keys
    ]
    if not withdrawn:
        return
    scope.delete(ids=[i for i, _ in withdrawn])
    write_history(
        store,
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
                statement=statement,
                source=f"{turn_key}:replaced",
                created_at=as_datetime(now),
            )
            for _, m in withdrawn
        ],
    )


def write_history(store: ChromaStore, user_id: str, events: Sequence[FactEvent]) -> None:
    """Append ``events`` to the user's fact history (made on first use)."""
    if not events:
        return
    store.history(user_id).add(
        ids=[f"event:{uuid.uuid4().hex}" for _ in events],
        documents=[e.statement for e in events],
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


def read_history(store: ChromaStore, user_id: str, persona: str | None) -> list[FactEvent]:
    """The user's fact events (with one persona, or all), oldest first; never creates the log."""
    history = store.existing(store.history_name(user_id))
    if history is None:
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
            created_at=as_datetime(float(m["created_at"])),
        )
        for document, m in zip(got["documents"] or [], got["metadatas"] or [], strict=True)
    ]
    events.sort(key=lambda e: e.created_at)
    return events
