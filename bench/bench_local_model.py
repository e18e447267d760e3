"""Benchmark the bundled local model: time to first token, tokens/s, and prompt-cache reuse.

Run: ``.venv/bin/python bench/bench_local_model.py [--reps 5] [--max-tokens 48]``

Each repetition starts a brand-new llama.cpp server (nothing cached) and plays four turns with a
persona-like system prompt of about 300 tokens:

- ``cold first``: conversation A's first turn; the whole prompt is processed.
- ``follow-up``: A's second turn (history extended); only the new tokens should be processed.
- ``new conv``: conversation B's first turn (another user, same persona, a nonce at the start of
  its first user message); the persona prefix should come from the prompt cache.
- ``new conv follow-up``: B's second turn.

It prints medians of llama.cpp's own timings (``prompt_n``, ``prompt_ms``,
``predicted_per_second``) and of the time to first token seen through the async stream, then
the ratio of follow-up to cold-first prompt processing. Target (issue 2): at most 0.5.

Correctness (exit 1): every turn streams a non-empty reply with llama.cpp's timings; a cold
first turn takes nothing from the cache (the server is new) and each follow-up does (its
conversation's prefix), else the ratio would not measure the prompt cache.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from bench.common import Verdicts
from bot.llm.local import (
    LlamaRuntime,
    LocalLlamaChatModel,
    RuntimeConfig,
    bundled_gguf_path,
)

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage

PERSONA = (
    "You are Marlowe, a private detective in Los Angeles in 1947. You rent a two-room office "
    "on the fourth floor of the Cahuenga Building, with a bottle of rye in the desk drawer and "
    "a chess problem on the blotter. You speak in short, dry sentences, with similes about rain, "
    "neon, cheap cigarettes and bad coffee. You are tired but honest; you cannot be bought, and "
    "you say so when someone tries. You distrust the rich, the police brass and anyone who "
    "smiles too much, but you are gentle with people who are scared or lost. You never say you "
    "are an AI or a language model, and you never step out of the story. When someone asks "
    "about your cases, you give one vivid detail and keep the rest close to your chest. When "
    "someone is rude, you answer with a quiet joke rather than anger. You remember what people "
    "told you earlier in the conversation and you bring it up when it matters. You do not give "
    "legal or medical advice; you tell people to see a professional, in your own words. Keep "
    "replies under four sentences unless the person asks for a story. The current case: a "
    "missing jazz pianist named Eddie Vail, last seen at the Blue Lantern club on Central "
    "Avenue, whose sister hired you with forty dollars in small bills and a photograph that "
    "smells of gardenias. You suspect the club's owner, a soft-spoken man called Lou Marino."
)
FIRST_QUESTION = "Hi. Are you the detective? I need some help."
FOLLOW_UP = "What can you tell me about the case you're working on right now?"
TURNS = ("cold first", "follow-up", "new conv", "new conv follow-up")
TARGET_RATIO = 0.5


@dataclass(frozen=True)
class Turn:
    """One turn's figures: llama.cpp's timings plus the time to first token we observed."""

    prompt_n: int
    cache_n: int
    prompt_ms: float
    predicted_n: int
    predicted_per_second: float
    ttft_s: float
    reply: str


async def play(model: LocalLlamaChatModel, messages: list[BaseMessage]) -> Turn:
    """Stream one reply and collect its figures."""
    started = time.perf_counter()
    ttft_s: float | None = None
    parts: list[str] = []
    timings: dict[str, Any] = {}
    async for chunk in model.astream(messages):
        if chunk.text and ttft_s is None:
            ttft_s = time.perf_counter() - started
        parts.append(chunk.text)
        timings = chunk.response_metadata.get("timings", timings)
    if not timings:
        raise RuntimeError("llama.cpp sent no timings")
    return Turn(
        prompt_n=timings["prompt_n"],
        cache_n=timings["cache_n"],
        prompt_ms=timings["prompt_ms"],
        predicted_n=timings["predicted_n"],
        predicted_per_second=timings["predicted_per_second"],
        ttft_s=ttft_s if ttft_s is not None else time.perf_counter() - started,
        reply="".join(parts),
    )


async def conversation(model: LocalLlamaChatModel, first_question: str) -> tuple[Turn, Turn]:
    """A first turn and its follow-up, with the history extended by the real reply."""
    messages: list[BaseMessage] = [SystemMessage(PERSONA), HumanMessage(first_question)]
    first = await play(model, messages)
    messages += [AIMessage(first.reply), HumanMessage(FOLLOW_UP)]
    return first, await play(model, messages)


async def repetition(config: RuntimeConfig, max_tokens: int) -> dict[str, Turn]:
    """Four turns on a brand-new server."""
    runtime = LlamaRuntime(config)
    model = LocalLlamaChatModel(
        gguf_path=config.gguf_path,
        context_tokens=config.context_tokens,
        threads=config.threads,
        max_tokens=max_tokens,
        temperature=0.0,
        runtime=runtime,
    )
    try:
        await asyncio.to_thread(runtime.server)  # load outside the timed turns
        nonce = uuid.uuid4().hex[:8]
        a_first, a_follow = await conversation(model, f"[{nonce}] {FIRST_QUESTION}")
        b_first, b_follow = await conversation(model, f"[{nonce}-b] {FIRST_QUESTION}")
    finally:
        runtime.close()
    return dict(zip(TURNS, (a_first, a_follow, b_first, b_follow), strict=True))


def _median(turns: list[Turn], attribute: str) -> float:
    return statistics.median(float(getattr(turn, attribute)) for turn in turns)


def check(index: int, result: dict[str, Turn], verdicts: Verdicts) -> None:
    """A repetition's correctness: replies, and the cache used where the ratio assumes it."""
    for name, turn in result.items():
        verdicts.check(bool(turn.reply.strip()), f"rep {index}, {name}: empty reply")
    cold = result["cold first"]
    verdicts.check(
        cold.cache_n == 0, f"rep {index}, cold first: {cold.cache_n} tokens from a new cache"
    )
    for name in ("follow-up", "new conv follow-up"):
        verdicts.check(
            result[name].cache_n > 0, f"rep {index}, {name}: nothing taken from the cache"
        )


def report(results: list[dict[str, Turn]]) -> float:
    """Print the medians table; return follow-up / cold-first prompt_ms."""
    header = (
        f"{'turn':<20}{'prompt_n':>9}{'cache_n':>9}{'prompt_ms':>11}"
        f"{'ttft_s':>9}{'gen_n':>7}{'gen tok/s':>11}"
    )
    print(header)
    print("-" * len(header))
    for name in TURNS:
        turns = [result[name] for result in results]
        print(
            f"{name:<20}{_median(turns, 'prompt_n'):>9.0f}{_median(turns, 'cache_n'):>9.0f}"
            f"{_median(turns, 'prompt_ms'):>11.1f}{_median(turns, 'ttft_s'):>9.3f}"
            f"{_median(turns, 'predicted_n'):>7.0f}"
            f"{_median(turns, 'predicted_per_second'):>11.1f}"
        )
    cold = _median([r["cold first"] for r in results], "prompt_ms")
    ratios = {name: _median([r[name] for r in results], "prompt_ms") / cold for name in TURNS[1:]}
    print()
    for name, ratio in ratios.items():
        print(f"prompt_ms ratio {name} / cold first: {ratio:.3f}")
    return ratios["follow-up"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions (fresh server each)")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per reply")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context-tokens", type=int, default=2048)
    args = parser.parse_args()
    if args.reps < 1 or args.max_tokens < 1:
        parser.error("--reps and --max-tokens must be at least 1")
    config = RuntimeConfig(bundled_gguf_path(), args.context_tokens, args.threads)
    print(
        f"{config.gguf_path.name}: {args.reps} reps, {args.threads} threads, "
        f"max_tokens {args.max_tokens}, temperature 0"
    )
    verdicts = Verdicts()
    results = []
    for index in range(args.reps):
        result = await repetition(config, args.max_tokens)
        cold, follow = result["cold first"], result["follow-up"]
        print(
            f"  rep {index + 1}: cold {cold.prompt_n} tok {cold.prompt_ms:.0f} ms, "
            f"follow-up {follow.prompt_n} tok {follow.prompt_ms:.0f} ms"
        )
        check(index + 1, result, verdicts)
        results.append(result)
    print()
    ratio = report(results)
    verdicts.target(
        "follow-up prompt processing / cold first (median prompt_ms)",
        f"{ratio:.3f}",
        f"<= {TARGET_RATIO}",
        ratio <= TARGET_RATIO,
    )
    verdicts.exit()


if __name__ == "__main__":
    asyncio.run(main())
