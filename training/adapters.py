"""A trained adapter folder: checking it, finding its base, loading both.

``greenroom train --out DIR`` writes the adapter (peft's ``adapter_config.json`` and
``adapter_model.safetensors``) and ``training_summary.json``, which names the base: its kind
(``bundled``, ``gguf``, ``folder``), its source and the folder it was loaded from. A rebuilt
GGUF base that was deleted is rebuilt again in the same place; the bundled GGUF is looked up
where it is installed now, so an adapter still works after the virtual environment moved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.base import BaseModel, load_base, rebuild_gguf
from training.trainer import SUMMARY_FILE

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["AdapterError", "adapter_base", "check_adapter", "load_with_adapter", "read_summary"]

#: peft's file naming the adapter's configuration.
ADAPTER_CONFIG = "adapter_config.json"


class AdapterError(Exception):
    """An adapter folder cannot be used; the message is one line naming the folder."""


def check_adapter(folder: Path) -> Path:
    """``folder`` if it holds a peft adapter; else raise :class:`AdapterError`."""
    if not folder.exists():
        raise AdapterError(
            f"{folder}: no such adapter folder (greenroom train --out {folder} writes one)"
        )
    if not (folder / ADAPTER_CONFIG).is_file():
        raise AdapterError(
            f"{folder}: not an adapter folder (no {ADAPTER_CONFIG}; "
            "greenroom train --out DIR writes one)"
        )
    return folder


def read_summary(folder: Path) -> dict[str, Any]:
    """The training summary beside an adapter, or ``{}`` when there is none."""
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def adapter_base(folder: Path, *, bundled: Path | None) -> BaseModel:
    """The base model ``folder``'s adapter was trained on (see the module docstring).

    ``bundled``: where the bundled GGUF is installed now (``None``: not installed).
    """
    check_adapter(folder)
    base = read_summary(folder).get("base")
    if not isinstance(base, dict):
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        named = Path(str(config.get("base_model_name_or_path") or ""))
        if (named / "config.json").is_file():
            return BaseModel("folder", named, named)
        raise AdapterError(
            f"{folder}: no {SUMMARY_FILE} and its base model {str(named) or '(unnamed)'} "
            "is not a model folder here"
        )
    kind, source, loaded_from = base.get("kind"), Path(base["source"]), Path(base["folder"])
    if (loaded_from / "config.json").is_file():
        return BaseModel(kind, source, loaded_from)
    if kind == "bundled" and bundled is not None:
        source = bundled
    if kind in ("bundled", "gguf") and source.is_file():
        return BaseModel(kind, source, rebuild_gguf(source, loaded_from.parent))
    raise AdapterError(f"{folder}: its base model {source} is not here any more")


def load_with_adapter(
    folder: Path, base: BaseModel
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base with the adapter on it (a peft model; ``disable_adapter()`` gives the base)."""
    from peft import PeftModel

    model, tokenizer = load_base(base.folder)
    try:
        with_adapter = PeftModel.from_pretrained(model, folder)
    except (ValueError, OSError, RuntimeError) as error:
        raise AdapterError(f"{folder}: the adapter does not fit {base.source} ({error})") from None
    with_adapter.eval()
    return with_adapter, tokenizer
