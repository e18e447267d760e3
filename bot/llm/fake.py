"""An instant stand-in chat model for tests, benchmarks and ``model.provider = "fake"``."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import Field, PrivateAttr

if TYPE_CHECKING:
    from langchain_core.callbacks import (
        AsyncCallbackManagerForLLMRun,
        CallbackManagerForLLMRun,
    )

__all__ = ["FakeChatModel"]


class FakeChatModel(BaseChatModel):
    """Replies with canned lines in turn, or echoes the last user message when there are none.

    Streams word by word, waiting ``chunk_delay_s`` before each word (0: instant). Honors
    ``stop`` (the reply is cut before the first stop string) and ``max_tokens`` (counted in
    words). Token counts are words, so they are only a rough stand-in.
    """

    #: Lines to answer with, in turn; empty: echo ``You said: <last user message>``.
    replies: list[str] = Field(default_factory=list)
    chunk_delay_s: float = Field(default=0.0, ge=0.0)
    max_tokens: int = Field(default=160, ge=1)
    temperature: float = 0.0
    top_p: float = 1.0

    _turn: Iterator[int] = PrivateAttr(default_factory=itertools.count)

    @property
    def model_name(self) -> str:
        return "fake"

    @property
    def _llm_type(self) -> str:
        return "greenroom-fake"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }

    def _reply(self, messages: list[BaseMessage], stop: list[str] | None, max_tokens: int) -> str:
        if self.replies:
            text = self.replies[next(self._turn) % len(self.replies)]
        else:
            last = next((m.text for m in reversed(messages) if m.type == "human"), "")
            text = f"You said: {last}"
        for marker in stop or ():
            if marker and marker in text:
                text = text[: text.index(marker)]
        return " ".join(text.split(" ")[:max_tokens])

    def _chunks(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> list[ChatGenerationChunk]:
        text = self._reply(messages, stop, int(kwargs.get("max_tokens", self.max_tokens)))
        words = text.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)] if text else []
        chunks = [ChatGenerationChunk(message=AIMessageChunk(content=p)) for p in pieces]
        prompt_words = sum(len(m.text.split()) for m in messages)
        usage = UsageMetadata(
            input_tokens=prompt_words,
            output_tokens=len(pieces),
            total_tokens=prompt_words + len(pieces),
        )
        final = AIMessageChunk(
            content="",
            usage_metadata=usage,
            response_metadata={"finish_reason": "stop", "model_name": self.model_name},
        )
        chunks.append(ChatGenerationChunk(message=final))
        return chunks

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, stop, kwargs):
            if self.chunk_delay_s and chunk.text:
                time.sleep(self.chunk_delay_s)
            if run_manager is not None and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, stop, kwargs):
            if self.chunk_delay_s and chunk.text:
                await asyncio.sleep(self.chunk_delay_s)
            if run_manager is not None and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

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
