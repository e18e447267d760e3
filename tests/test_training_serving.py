"""Serving a trained adapter: merged into its base, converted to GGUF, run by llama.cpp.

On the tiny model of ``train_world`` (SmolLM2's tokenizer, random weights), trained with a high
learning rate so that the merge visibly moves the weights. The real SmolLM2 end to end (train,
eval preferences, chat --model-adapter) is in ``test_training_model.py``.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

import numpy as np
import pytest

from bot.llm import LocalLlamaChatModel, ModelUnavailableError, build_chat_model
from bot.settings import ConfigError, ModelSettings, load_settings
from tests.train_world import export_scenario_once, tiny_model_folder
from training.base import BaseModel
from training.serving import merged_gguf, plain_gguf
from training.trainer import TrainOptions, train

if TYPE_CHECKING:
    from pathlib import Path

#: A tensor llama.cpp's converter writes as it is (q and k are permuted for rotary embeddings).
_TENSOR = ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[BaseModel, Path]:
    """A tiny model and a DPO adapter trained on it (shared: tests only read them)."""
    root = tmp_path_factory.mktemp("serving")
    (dpo,) = export_scenario_once(root, "trl-dpo")
    folder = tiny_model_folder(root / "tiny")
    base = BaseModel("folder", folder, folder)
    out = root / "adapter"
    train(base, dpo, out, TrainOptions(method="dpo", epochs=4, learning_rate=5e-2))
    return base, out


def _gguf_tensor(path: Path, name: str) -> np.ndarray:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)
    (tensor,) = [t for t in reader.tensors if t.name == name]
    return dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed(tensor.shape)))


def _hf_tensor(folder: Path, name: str) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(folder / "model.safetensors")[name]


def test_merged_gguf_carries_the_adapters_weights(
    adapter: tuple[BaseModel, Path], tmp_path: Path
) -> None:
    from training.adapters import load_with_adapter

    base, out = adapter
    path = merged_gguf(out, bundled=None)
    assert path.parent == out and path.is_file()
    model, _ = load_with_adapter(out, base)
    merged = model.merge_and_unload().state_dict()[_TENSOR[1]].numpy()
    original = _hf_tensor(base.folder, _TENSOR[1])
    served = _gguf_tensor(path, _TENSOR[0])
    step = np.abs(merged).max() / 127  # q8_0: 8 bits a weight, one scale per 32
    assert np.abs(served - merged).max() <= step
    assert np.abs(merged - original).max() > 4 * step  # the adapter moved this layer
    # written once: a second call reuses the file
    written = path.stat().st_mtime_ns
    assert merged_gguf(out, bundled=None) == path and path.stat().st_mtime_ns == written
    # the base converted the same way is the like-for-like baseline
    baseline = plain_gguf(base, tmp_path / "base.gguf")
    assert np.abs(_gguf_tensor(baseline, _TENSOR[0]) - original).max() <= step


def test_the_local_provider_serves_an_adapter(adapter: tuple[BaseModel, Path]) -> None:
    _, out = adapter
    model = build_chat_model(
        ModelSettings(adapter_path=out, max_tokens=4, temperature=0.0, context_tokens=256)
    )
    assert isinstance(model, LocalLlamaChatModel)
    assert model.gguf_path == out / "merged-q8_0.gguf"
    reply = model.invoke("Hello", max_tokens=4)
    usage = reply.usage_metadata
    assert usage is not None and usage["input_tokens"] > 0 and usage["output_tokens"] >= 1


def test_adapter_settings_and_missing_adapters_are_one_line_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREENROOM_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("GREENROOM_MODEL__ADAPTER_PATH", str(tmp_path))
    monkeypatch.setenv("GREENROOM_MODEL__PROVIDER", "openai")
    with pytest.raises(ConfigError, match=r"model\.adapter_path\) needs model\.provider = local"):
        load_settings()
    monkeypatch.setenv("GREENROOM_MODEL__PROVIDER", "local")
    monkeypatch.setenv("GREENROOM_MODEL__GGUF_PATH", str(tmp_path / "x.gguf"))
    with pytest.raises(ConfigError, match=r"adapter_path or model\.gguf_path, not both"):
        load_settings()
    with pytest.raises(ModelUnavailableError) as caught:
        build_chat_model(ModelSettings(adapter_path=tmp_path / "gone"))
    assert str(caught.value) == (
        f"{tmp_path / 'gone'}: no such adapter folder "
        f"(greenroom train --out {tmp_path / 'gone'} writes one)"
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match="not an adapter folder"):
        build_chat_model(ModelSettings(adapter_path=tmp_path / "empty"))


def test_an_adapter_whose_base_is_gone_says_so(
    adapter: tuple[BaseModel, Path], tmp_path: Path
) -> None:
    _, trained = adapter
    out = tmp_path / "moved"
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns("merged-*"))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["base"]["kind"] == "folder"
    gone = str(tmp_path / "gone")
    summary["base"] = {"kind": "folder", "source": gone, "folder": gone}
    (out / "training_summary.json").write_text(json.dumps(summary))
    with pytest.raises(ModelUnavailableError, match=r"its base model .*gone is not here any more"):
        build_chat_model(ModelSettings(adapter_path=out))
