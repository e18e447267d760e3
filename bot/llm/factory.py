"""Building the configured chat model, and one generation with a deadline.

:func:`generate` is the only way the engine should call a model: it streams, enforces the
timeout, and turns every failure into a :class:`GenerationError` whose ``reason`` picks the
in-persona fallback.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import GenerationError, ModelUnavailableError
from .fake import FakeChatModel
from .local import LocalLlamaChatModel

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import BaseMessage

    from bot.settings import ModelSettings

__all__ = [
    "GenerationResult",
    "adapter_gguf",
    "build_chat_model",
    "describe_model",
    "generate",
]

_log = logging.getLogger(__name__)

#: Parameters worth storing next to a reply, under the names stored.
_PARAM_ALIASES: dict[str, tuple[str, ...]] = {
    "temperature": ("temperature",),
    "top_p": ("top_p",),
    "repeat_penalty": ("repeat_penalty",),
    "max_tokens": ("max_tokens", "max_completion_tokens"),
    "context_tokens": ("context_tokens",),
    "seed": ("seed",),
}


@dataclass(frozen=True)
class GenerationResult:
    """One finished reply, with what is needed to store and judge it."""

    text: str
    model_name: str
    #: Sampling parameters (``temperature``, ``top_p``, ``max_tokens``, ...), JSON-safe.
    params: dict[str, Any] = field(default_factory=dict)
    #: Tokens in the prompt, as the model counted them; ``None`` when it does not say.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: Of ``prompt_tokens``, how many came from the prompt cache (local model, some servers).
    cached_prompt_tokens: int | None = None
    #: ``stop`` (natural end or stop string), ``length`` (hit ``max_tokens``), or ``None``.
    finish_reason: str | None = None
    #: Seconds from the call to the first non-empty chunk.
    ttft_s: float | None = None
    elapsed_s: float = 0.0


def build_chat_model(settings: ModelSettings) -> BaseChatModel:
    """The chat model the settings name.

    Raises :class:`ModelUnavailableError` when it cannot be built: the local GGUF file is
    missing, an adapter cannot be served, or the API key's environment variable is unset.
    A local adapter's merged GGUF is written on first use (see :func:`adapter_gguf`).
    """
    if settings.provider == "local":
        if settings.adapter_path is not None:
            settings = settings.model_copy(
                update={"gguf_path": adapter_gguf(settings.adapter_path), "adapter_path": None}
            )
        return LocalLlamaChatModel.from_settings(settings)
    if settings.provider == "fake":
        return FakeChatModel(
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
        )
    if settings.provider == "openai":
        return _build_openai(settings)
    raise ValueError(f"unknown model provider {settings.provider!r}; use local, openai or fake")


def adapter_gguf(adapter: Path) -> Path:
    """The GGUF file of a trained LoRA adapter merged into its base (written once into the
    adapter folder: loading the base and converting take tens of seconds on a CPU; see
    :mod:`training.serving`). Raises :class:`ModelUnavailableError` with the one-line reason
    it cannot be served."""
    from training.adapters import AdapterError  # imported here: torch is slow to import
    from training.base import BaseModelError
    from training.serving import merged_gguf

    from .local import bundled_gguf_path

    try:
        bundled: Path | None = bundled_gguf_path()
    except ModelUnavailableError:
        bundled = None
    try:
        return merged_gguf(adapter, bundled=bundled)
    except (AdapterError, BaseModelError) as error:
        raise ModelUnavailableError(str(error)) from None


#: Sent as the key to a self-hosted endpoint when none is set (vLLM's documented placeholder).
NO_KEY = "EMPTY"


def _build_openai(settings: ModelSettings) -> BaseChatModel:
    from langchain_openai import ChatOpenAI  # imported here: slow, and only openai users need it
    from pydantic import SecretStr

    api_key = os.environ.get(settings.api_key_env, "").strip()
    if not api_key and settings.base_url is None:
        raise ModelUnavailableError(
            f"the openai model provider needs an API key in the environment variable "
            f"{settings.api_key_env} (named by model.api_key_env), and it is not set; "
            "a self-hosted endpoint (model.base_url) needs none"
        )
    return ChatOpenAI(
        model=settings.name,
        base_url=settings.base_url,
        # The OpenAI client insists on a key; keyless servers (vLLM, llama.cpp, Ollama) ignore it.
        api_key=SecretStr(api_key or NO_KEY),
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_completion_tokens=settings.max_tokens,
        timeout=settings.timeout_s,
        max_retries=1,
        stream_usage=True,
    )


def describe_model(model: BaseChatModel) -> tuple[str, dict[str, Any]]:
    """The model's name and its sampling parameters, JSON-safe, for storing with a reply."""
    identifying = dict(model._identifying_params)
    name = identifying.get("model_name") or identifying.get("model") or model._llm_type
    params: dict[str, Any] = {"provider": model._llm_type}
    for stored, aliases in _PARAM_ALIASES.items():
        for alias in aliases:
            value = identifying.get(alias)
            if value is not None and isinstance(value, (str, int, float, bool)):
                params[stored] = value
                break
    base_url = getattr(model, "openai_api_base", None)
    if base_url:
        params["base_url"] = str(base_url)
    return str(name), params


async def generate(
    model: BaseChatModel,
    messages: list[BaseMessage],
    *,
    timeout_s: float,
    stop: list[str] | None = None,
    on_token: Callable[[str], Awaitable[None]] | None = None,
) -> GenerationResult:
    """Stream one reply from ``model`` within ``timeout_s`` seconds.

    ``on_token`` is awaited with each non-empty chunk's text, inside the deadline: keep it quick
    (buffer, and edit a message at most once a second). An exception it raises propagates
    unchanged. Everything else that goes wrong raises :class:`GenerationError`: ``timeout``,
    ``failed`` (the model's exception chained), ``empty`` (only whitespace came back), or
    ``unavailable`` (passed through from the model).
    """
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")
    if not messages:
        raise ValueError("generate needs at least one message")
    name, params = describe_model(model)
    started = time.perf_counter()
    ttft_s: float | None = None
    parts: list[str] = []
    usage: dict[str, Any] = {}
    finish_reason: str | None = None

    async def consume() -> None:
        nonlocal ttft_s, finish_reason
        stream = model.astream(messages, stop=stop)
        try:
            while True:
                try:
                    chunk = await anext(stream)
                except StopAsyncIteration:
                    return
                except (GenerationError, asyncio.CancelledError):
                    raise
                except Exception as error:
                    raise GenerationError(
                        f"model {name} failed: {type(error).__name__}: {error}"
                    ) from error
                text = chunk.text
                metadata = chunk.response_metadata or {}
                finish_reason = metadata.get("finish_reason") or finish_reason
                if chunk.usage_metadata:
                    usage.update(chunk.usage_metadata)
                if not text:
                    continue
                if ttft_s is None:
                    ttft_s = time.perf_counter() - started
                parts.append(text)
                if on_token is not None:
                    await on_token(text)
        finally:
            await stream.aclose()

    try:
        async with asyncio.timeout(timeout_s):
            await consume()
    except TimeoutError as error:
        raise GenerationError(
            f"model {name} gave no complete reply within {timeout_s:g} s", reason="timeout"
        ) from error
    elapsed_s = time.perf_counter() - started
    text = "".join(parts)
    if not text.strip():
        raise GenerationError(f"model {name} returned an empty reply", reason="empty")
    details = usage.get("input_token_details") or {}
    return GenerationResult(
        text=text,
        model_name=name,
        params=params,
        prompt_tokens=usage.get("input_tokens"),
        completion_tokens=usage.get("output_tokens"),
        cached_prompt_tokens=details.get("cache_read"),
        finish_reason=finish_reason,
        ttft_s=ttft_s,
        elapsed_s=elapsed_s,
    )
