"""The model factory and ``generate``: providers, streaming, timeouts, failures, empty replies.

The OpenAI provider talks to a small OpenAI-compatible stub on 127.0.0.1 started by the test;
nothing leaves loopback. No test here runs the real local model (see test_llm_local.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from bot.llm import (
    FakeChatModel,
    GenerationError,
    GenerationResult,
    LocalLlamaChatModel,
    ModelUnavailableError,
    build_chat_model,
    describe_model,
    generate,
)
from bot.llm.factory import NO_KEY
from bot.settings import ModelSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

KEY_ENV = "GREENROOM_TEST_LLM_KEY"
STUB_WORDS = ("Hello", " from", " the", " stub")


@dataclass
class StubServer:
    """An OpenAI-compatible chat endpoint that records what it was sent."""

    base_url: str = ""
    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)


STUB_KEY = web.AppKey("stub", StubServer)


def _completion(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1,
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(STUB_WORDS)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
    }


def _chunk(body: dict[str, Any], delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": body["model"],
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    stub = request.app[STUB_KEY]
    body = await request.json()
    stub.requests.append((request.path, dict(request.headers), body))
    if body["model"] == "refuse-me":
        return web.json_response(
            {"error": {"message": "no such model", "type": "invalid_request_error"}}, status=400
        )
    if not body.get("stream"):
        return web.json_response(_completion(body))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    events = [_chunk(body, {"role": "assistant", "content": ""}, None)]
    events += [_chunk(body, {"content": word}, None) for word in STUB_WORDS]
    events.append(_chunk(body, {}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
        events.append({**_chunk(body, {}, None), "choices": [], "usage": usage})
    for event in events:
        await response.write(f"data: {json.dumps(event)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@pytest.fixture
async def stub() -> AsyncIterator[StubServer]:
    server = StubServer()
    app = web.Application()
    app[STUB_KEY] = server
    app.router.add_post("/v1/chat/completions", _chat_completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def opened() -> AsyncIterator[list[BaseChatModel]]:
    """OpenAI models a test built; their HTTP clients are closed after it."""
    models: list[BaseChatModel] = []
    yield models
    for model in models:
        await model.root_async_client.close()  # type: ignore[attr-defined]


def _openai_settings(stub: StubServer, name: str = "stub-model") -> ModelSettings:
    return ModelSettings(
        provider="openai",
        name=name,
        base_url=stub.base_url,
        api_key_env=KEY_ENV,
        max_tokens=32,
        temperature=0.3,
        top_p=0.8,
        timeout_s=5,
    )


# -- openai ---------------------------------------------------------------------------------


async def test_openai_streams_from_base_url_with_key_from_env(
    stub: StubServer, monkeypatch: pytest.MonkeyPatch, opened: list[BaseChatModel]
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-123")
    model = build_chat_model(_openai_settings(stub))
    opened.append(model)
    tokens: list[str] = []

    async def on_token(text: str) -> None:
        tokens.append(text)

    result = await generate(model, [HumanMessage("hi")], timeout_s=5, on_token=on_token)

    assert result.text == "Hello from the stub"
    assert tokens == list(STUB_WORDS)
    assert (result.prompt_tokens, result.completion_tokens) == (7, 4)
    assert result.finish_reason == "stop"
    assert result.model_name == "stub-model"
    assert result.params["temperature"] == 0.3
    assert result.params["top_p"] == 0.8
    assert result.params["max_tokens"] == 32
    assert result.params["base_url"] == stub.base_url
    path, headers, body = stub.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test-123"
    assert body["stream"] is True
    assert body["model"] == "stub-model"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert (body["temperature"], body["top_p"], body["max_completion_tokens"]) == (0.3, 0.8, 32)


async def test_openai_without_streaming(
    stub: StubServer, monkeypatch: pytest.MonkeyPatch, opened: list[BaseChatModel]
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-456")
    model = build_chat_model(_openai_settings(stub))
    opened.append(model)

    reply = await model.ainvoke([SystemMessage("be brief"), HumanMessage("hi")])

    assert reply.content == "Hello from the stub"
    _, headers, body = stub.requests[0]
    assert headers["Authorization"] == "Bearer sk-test-456"
    assert not body.get("stream")
    assert body["messages"][0] == {"role": "system", "content": "be brief"}


async def test_openai_error_becomes_failed_with_cause(
    stub: StubServer, monkeypatch: pytest.MonkeyPatch, opened: list[BaseChatModel]
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    model = build_chat_model(_openai_settings(stub, name="refuse-me"))
    opened.append(model)

    with pytest.raises(GenerationError) as caught:
        await generate(model, [HumanMessage("hi")], timeout_s=5)

    assert caught.value.reason == "failed"
    assert caught.value.__cause__ is not None
    assert "no such model" in str(caught.value)


async def test_a_self_hosted_endpoint_needs_no_key(
    stub: StubServer, monkeypatch: pytest.MonkeyPatch, opened: list[BaseChatModel]
) -> None:
    """vLLM, llama.cpp's server and Ollama run keyless: a base_url without a key works."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    model = build_chat_model(_openai_settings(stub))
    opened.append(model)

    result = await generate(model, [HumanMessage("hi")], timeout_s=5)

    assert result.text == "Hello from the stub"
    assert stub.requests[0][1]["Authorization"] == f"Bearer {NO_KEY}"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_openai_without_key_says_which_variable(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    settings = ModelSettings(provider="openai", api_key_env=KEY_ENV)

    with pytest.raises(ModelUnavailableError, match=KEY_ENV) as caught:
        build_chat_model(settings)

    assert caught.value.reason == "unavailable"


# -- local and fake providers ---------------------------------------------------------------


def test_local_provider_builds_without_loading() -> None:
    settings = ModelSettings(
        provider="local", max_tokens=48, temperature=0.2, top_p=0.7, context_tokens=1024
    )

    model = build_chat_model(settings)

    assert isinstance(model, LocalLlamaChatModel)
    name, params = describe_model(model)
    assert name == "SmolLM2-135M-Instruct.Q4_1"
    assert params["max_tokens"] == 48
    assert params["temperature"] == 0.2
    assert params["top_p"] == 0.7
    assert params["context_tokens"] == 1024


async def test_fake_provider_echoes_and_streams_words() -> None:
    model = build_chat_model(ModelSettings(provider="fake"))
    tokens: list[str] = []

    async def on_token(text: str) -> None:
        tokens.append(text)

    result = await generate(model, [HumanMessage("nice hat")], timeout_s=1, on_token=on_token)

    assert isinstance(model, FakeChatModel)
    assert result.text == "You said: nice hat"
    assert tokens == ["You", " said:", " nice", " hat"]
    assert result.model_name == "fake"
    assert result.ttft_s is not None
    assert result.elapsed_s >= result.ttft_s


def test_fake_cycles_replies_and_honors_stop_and_max_tokens() -> None:
    model = FakeChatModel(replies=["one. two", "three four five"])

    first = model.invoke([HumanMessage("a")], stop=["."])
    second = model.invoke([HumanMessage("b")], max_tokens=2)
    third = model.invoke([HumanMessage("c")])

    assert (first.content, second.content, third.content) == ("one", "three four", "one. two")


# -- generate: limits and failures ----------------------------------------------------------


class _BrokenModel(BaseChatModel):
    """Fails after ``good_chunks`` chunks with ``error``."""

    error: Exception
    good_chunks: int = 0

    @property
    def _llm_type(self) -> str:
        return "broken"

    def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
        raise self.error

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        for _ in range(self.good_chunks):
            yield ChatGenerationChunk(message=AIMessageChunk(content="partial "))
        raise self.error


async def test_timeout_raises_timeout_reason() -> None:
    model = FakeChatModel(replies=["slow words here"], chunk_delay_s=0.5)
    received: list[str] = []

    async def on_token(text: str) -> None:
        received.append(text)

    with pytest.raises(GenerationError) as caught:
        await generate(model, [HumanMessage("hi")], timeout_s=0.05, on_token=on_token)

    assert caught.value.reason == "timeout"
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert received == []


@pytest.mark.parametrize("good_chunks", [0, 2])
async def test_model_exception_becomes_failed_with_cause(good_chunks: int) -> None:
    model = _BrokenModel(error=RuntimeError("boom"), good_chunks=good_chunks)

    with pytest.raises(GenerationError) as caught:
        await generate(model, [HumanMessage("hi")], timeout_s=1)

    assert caught.value.reason == "failed"
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert "boom" in str(caught.value)


async def test_generation_errors_pass_through_unchanged() -> None:
    original = ModelUnavailableError("install the model")
    model = _BrokenModel(error=original)

    with pytest.raises(ModelUnavailableError) as caught:
        await generate(model, [HumanMessage("hi")], timeout_s=1)

    assert caught.value is original
    assert caught.value.reason == "unavailable"


@pytest.mark.parametrize("reply", ["", "   ", " \n\t "])
async def test_blank_reply_raises_empty(reply: str) -> None:
    model = FakeChatModel(replies=[reply])

    with pytest.raises(GenerationError) as caught:
        await generate(model, [HumanMessage("hi")], timeout_s=1)

    assert caught.value.reason == "empty"


async def test_on_token_errors_propagate_unwrapped() -> None:
    async def on_token(text: str) -> None:
        raise LookupError("the message was deleted")

    with pytest.raises(LookupError, match="deleted"):
        await generate(FakeChatModel(), [HumanMessage("hi")], timeout_s=1, on_token=on_token)


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, float("nan"), float("inf")])
async def test_bad_timeout_is_refused(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        await generate(FakeChatModel(), [HumanMessage("hi")], timeout_s=timeout_s)


async def test_no_messages_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one message"):
        await generate(FakeChatModel(), [], timeout_s=1)


async def test_result_is_frozen() -> None:
    result = await generate(FakeChatModel(), [HumanMessage("hi")], timeout_s=1)

    assert isinstance(result, GenerationResult)
    with pytest.raises(AttributeError):
        result.text = "changed"  # type: ignore[misc]


def test_generation_error_rejects_unknown_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        GenerationError("x", reason="bored")  # type: ignore[arg-type]
