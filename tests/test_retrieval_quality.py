"""Recall quality with the default embedding backend and the real bundled model: facts planted
among 100 turns of one scope are found again when asked in other words (the small case of
``bench/bench_retrieval.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from bench.retrieval_corpus import filler_turns, planted_facts
from bot.settings import MemorySettings
from memory import MemoryService, SentenceTransformerEmbedder

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.model

PERSONA, USER = "Juniper", "ann"
#: Slots whose questions share no key word with the fact, e.g. "Where does my sibling live
#: now?" for "My sister Maya moved to Lisbon last spring."
SLOTS = 6


async def test_default_backend_finds_planted_facts_asked_in_other_words(tmp_path: Path) -> None:
    backend = MemorySettings().embedding_backend
    embedder = SentenceTransformerEmbedder(
        backend=backend, onnx_cache_dir=tmp_path / "models", cache_size=0
    )
    assert embedder.backend == backend
    memory = MemoryService.open(path=tmp_path / "chroma", embedder=embedder, timeout_s=60)
    try:
        facts = planted_facts(0, SLOTS)
        filler = filler_turns(7, 100 - len(facts))
        for role in ("user", "assistant"):
            await memory.add_many(
                persona=PERSONA,
                user_id=USER,
                texts=[text for r, text in filler if r == role],
                source=role,
            )
        for number, fact in enumerate(facts):
            await memory.remember_turn(
                persona=PERSONA,
                user_id=USER,
                conversation_id="c",
                turn_id=str(number),
                role="user",
                text=fact.text,
                speaker="ann",
            )
        # Another user told the same persona the same kinds of things, with other values.
        for number, fact in enumerate(planted_facts(1, SLOTS)):
            await memory.remember_turn(
                persona=PERSONA,
                user_id="bob",
                conversation_id="d",
                turn_id=f"bob-{number}",
                role="user",
                text=fact.text,
                speaker="bob",
            )
        missed = []
        for number, fact in enumerate(facts):
            for question in fact.questions:
                hits = await memory.recall(
                    persona=PERSONA, user_id=USER, query_texts=[question], k=5
                )
                assert not [h for h in hits if h.id.startswith("turn:bob-")]
                assert not [h for h in hits if h.source.startswith("turn:bob-")]
                if not [h for h in hits if f"turn:{number}" in (h.id, h.source)]:
                    missed.append(question)
        assert missed == []
    finally:
        memory.close()
