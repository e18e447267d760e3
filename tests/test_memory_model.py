"""memory/ with the real bundled all-MiniLM-L6-v2 (slow: loads the model once per module)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from memory import MemoryService, SentenceTransformerEmbedder, format_memory_lines

pytestmark = pytest.mark.model

PERSONA = "Marlowe"
CANON = ["I grew up in Lisbon.", "I am 34.", "I have a sister."]
VOICE = [
    "Ahoy, friend! The lamp is lit and the kettle's on.",
    "The sea's been restless tonight, much like you, I reckon.",
    "Come sit by the window; the gulls are telling tall tales again.",
    "Aye, the old lighthouse has seen worse storms than this one.",
]


@pytest.fixture(scope="module")
def embedder() -> Iterator[SentenceTransformerEmbedder]:
    yield SentenceTransformerEmbedder(threads=1)


@pytest.fixture
async def service(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> AsyncIterator[MemoryService]:
    memory = MemoryService.open(path=tmp_path / "chroma", embedder=embedder)
    await memory.sync_persona(PERSONA, canon_facts=CANON, voice_examples=VOICE)
    yield memory
    memory.close()


def test_vectors_are_normalized(embedder: SentenceTransformerEmbedder) -> None:
    vectors = embedder.embed(["hello there", "a lighthouse keeper"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(embedder.embed(["hello there"])[0], vectors[0])  # cached path agrees


async def test_semantic_recall(service: MemoryService) -> None:
    filler = ["I had toast for breakfast.", "Work was boring today.", "It rained all day."]
    await service.remember_turn(
        persona=PERSONA,
        user_id="u",
        conversation_id="c",
        turn_id="0",
        role="user",
        text="My sister's name is Maya.",
        speaker="alice",
    )
    for i, text in enumerate(filler * 4, start=1):
        await service.remember_turn(
            persona=PERSONA,
            user_id="u",
            conversation_id="c",
            turn_id=str(i),
            role="user",
            text=f"{text} ({i})",
            speaker="alice",
        )
    hits = await service.recall(
        persona=PERSONA,
        user_id="u",
        query_texts=["Do you remember what my sibling is called?"],
        k=3,
    )
    assert any("Maya" in line for line in format_memory_lines(hits))


async def test_contradiction_real_model(service: MemoryService) -> None:
    flags = await service.check_reply(
        persona=PERSONA, user_id="u", reply="I grew up in Oslo, among the fjords."
    )
    contradictions = [f for f in flags if f.kind == "contradiction" and f.over_threshold]
    assert contradictions and contradictions[0].evidence["fact"] == "I grew up in Lisbon."
    flags = await service.check_reply(
        persona=PERSONA, user_id="u", reply="Lisbon was a fine place to grow up; I miss it."
    )
    assert not [f for f in flags if f.kind == "contradiction" and f.over_threshold]


async def test_drift_higher_off_voice(service: MemoryService) -> None:
    in_voice = "Aye, the storm's passing; sit by the lamp and tell me your tale, friend."
    off_voice = "As an AI language model, I can provide a summary of quarterly revenue metrics."

    async def drift(reply: str) -> float:
        flags = await service.check_reply(persona=PERSONA, user_id="u", reply=reply)
        (flag,) = [f for f in flags if f.kind == "drift"]
        return flag.score

    assert await drift(off_voice) > await drift(in_voice)
    before = await drift("Good morning! Lovely weather for sailing.")
    await service.add_approved_voice(
        persona=PERSONA, text="Good morning! Lovely weather for sailing."
    )
    assert await drift("Good morning! Lovely weather for sailing.") < before


@pytest.fixture(scope="module")
def int8_embedder(tmp_path_factory: pytest.TempPathFactory) -> SentenceTransformerEmbedder:
    folder = tmp_path_factory.mktemp("models")
    embedder = SentenceTransformerEmbedder(backend="onnx-int8", onnx_cache_dir=folder)
    assert embedder.backend == "onnx-int8" and embedder.onnx_file is not None
    assert embedder.onnx_file.parent == folder
    assert embedder.onnx_file.name.endswith("-fused-int8.onnx")  # never an unfused cache file
    return embedder


def test_int8_graph_is_fused_then_quantized(int8_embedder: SentenceTransformerEmbedder) -> None:
    import onnx

    assert int8_embedder.onnx_file is not None
    graph = onnx.load(str(int8_embedder.onnx_file)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QAttention", "EmbedLayerNormalization", "SkipLayerNormalization"} <= ops
    assert "MatMul" not in ops  # every projection is int8
    assert not list(int8_embedder.onnx_file.parent.glob("*.part"))  # no leftovers


def test_int8_agrees_with_float(
    embedder: SentenceTransformerEmbedder, int8_embedder: SentenceTransformerEmbedder
) -> None:
    texts = [*CANON, *VOICE, "My sister's name is Maya.", "Where did my sister move to?"]
    quantized = int8_embedder.embed(texts)
    assert quantized.shape == (len(texts), 384) and quantized.dtype == np.float32
    assert np.allclose(np.linalg.norm(quantized, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(quantized * embedder.embed(texts), axis=1))) >= 0.98
    # Calls of up to 64 texts fill the cache: a text seen in a batch comes back unchanged.
    assert np.array_equal(int8_embedder.embed([texts[3]])[0], quantized[3])
    int8_embedder.clear_cache()  # alone, unpadded: padding in a batch must not change a vector
    alone = np.concatenate([int8_embedder.embed([text]) for text in texts])
    assert float(np.min(np.sum(alone * quantized, axis=1))) >= 0.98


async def test_semantic_recall_int8(
    tmp_path: Path, int8_embedder: SentenceTransformerEmbedder
) -> None:
    memory = MemoryService.open(path=tmp_path / "chroma", embedder=int8_embedder)
    try:
        texts = ["My sister's name is Maya.", "I had toast for breakfast.", "It rained all day."]
        texts += ["Work was boring today.", "I watched a film about trains.", "The bus was late."]
        await memory.add_many(persona=PERSONA, user_id="u", texts=texts)
        hits = await memory.recall(
            persona=PERSONA, user_id="u", query_texts=["What is my sibling called?"], k=1
        )
        assert hits and "Maya" in hits[0].text
    finally:
        memory.close()


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="backend"):
        SentenceTransformerEmbedder(backend="tensorflow")  # type: ignore[arg-type]
