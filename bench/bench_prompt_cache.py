"""Prompt-cache reuse over a long conversation whose recalled memories change every turn.

Run: ``.venv/bin/python bench/bench_prompt_cache.py [--turns 32] [--max-tokens 32]
[--layouts late,early]``

The real engine, the bundled local model (llama.cpp) and real vector memory play one scripted
conversation: each user message tells something new, so recall brings different memories every
turn, and a fact planted in the first turn is asked for in the last. Two layouts run one after
the other, each on a fresh model server: ``late`` (the default: each turn's lore and memories
one message from the end, ``chat.context_depth = 1``, kept in place in later prompts) and
``early`` (every context message placed before the whole history, as memories in the system
prompt used to be). For each it prints llama.cpp's prompt processing time and tokens of the
first turn and the median of the follow-ups, their ratio (target at most 0.2 for ``late``), the
mean follow-up (window restarts included), how many turns' prompts did not start with the whole
previous prompt (window restarts), and whether the last turn's prompt and reply carry the
planted fact.

Exit code 1 when a correctness check fails: the planted fact not in the last prompt's context
messages, or a turn that produced no reply.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import PrivateAttr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Verdicts, scratch_database
from bot.decisions import DecisionService
from bot.engine import ConversationEngine, EngineLimits, IncomingMessage, Reply
from bot.llm.local import LlamaRuntime, LocalLlamaChatModel, RuntimeConfig, bundled_gguf_path
from feedback.corrections import CorrectionStore
from feedback.database import create_engine, migrate, session_factory
from feedback.store import ConversationStore
from personas import PersonaRegistry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from langchain_core.outputs import ChatGenerationChunk

    from bot.decisions import ConversationRef, Delivery

#: Follow-up prompt processing against the first turn's, with the default layout.
TARGET_RATIO = 0.2
PLANTED = "My sister's name is Maya and she lives in Lisbon."
QUESTION = "Do you remember my sister's name?"
FACTS = (
    "My dog is called Biscuit and he is afraid of thunder.",
    "I work as a night nurse at the county hospital.",
    "My favourite food is my grandmother's lentil soup.",
    "I grew up in a small town called Harlow Creek.",
    "I have been learning the cello for two years.",
    "My best friend Theo moved to Denver last spring.",
    "I drive an old green Volvo that keeps breaking down.",
    "I am saving money for a trip to Japan in April.",
    "My neighbour plays the trumpet every Sunday morning.",
    "I broke my wrist skiing when I was twelve.",
    "My favourite book is The Long Goodbye.",
    "I keep three tomato plants on my balcony.",
    "My brother Sam is getting married in June.",
    "I am allergic to cats, which is a shame.",
    "I run five kilometres every morning before work.",
    "My mother teaches piano to the kids on our street.",
)


class _Timed(LocalLlamaChatModel):
    """The bundled model, keeping llama.cpp's timings of each reply."""

    _timings: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in super()._astream(*args, **kwargs):
            if timings := chunk.message.response_metadata.get("timings"):
                self._timings.append(timings)
            yield chunk


class _Silent:
    """A transport whose user receives at once."""

    async def deliver(self, delivery: Delivery) -> str | None:
        return None

    async def say(self, conversation: ConversationRef, persona: str, text: str) -> None:
        return None

    def waiting(self, conversation: ConversationRef) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


@dataclass
class Run:
    """One layout's figures."""

    layout: str
    prompt_ms: list[float]
    prompt_n: list[int]
    #: Each replied turn's prompt, as stored.
    prompts: list[list[dict[str, Any]]]
    last_reply: str
    replies: int

    @property
    def last_prompt(self) -> list[dict[str, Any]]:
        return self.prompts[-1] if self.prompts else []

    @property
    def restarts(self) -> int:
        """Turns whose prompt does not start with the whole previous prompt."""
        return sum(
            after[: len(before)] != before
            for before, after in zip(self.prompts, self.prompts[1:], strict=False)
        )


def _script(turns: int) -> list[str]:
    middle = [FACTS[i % len(FACTS)] for i in range(turns - 2)]
    return [PLANTED, *middle, QUESTION]


async def play(layout: str, turns: int, max_tokens: int, folder: Path) -> Run:
    """One conversation on a fresh model server and a fresh memory."""
    from memory import MemoryService, SentenceTransformerEmbedder

    config = RuntimeConfig(bundled_gguf_path(), 2048, 2)
    runtime = LlamaRuntime(config)
    model = _Timed(max_tokens=max_tokens, temperature=0.0, runtime=runtime)
    memory = MemoryService.open(
        path=folder / f"chroma-{layout}", embedder=SentenceTransformerEmbedder(backend="torch")
    )
    async with scratch_database("sqlite") as url:
        db = create_engine(url)
        await migrate(db)
        engine = ConversationEngine(
            personas=PersonaRegistry.load(),
            store=ConversationStore(session_factory(db)),
            model=model,
            memory=memory,
            limits=EngineLimits(
                max_new_tokens=max_tokens, context_depth=1 if layout == "late" else 1000
            ),
        )
        await engine.sync_personas()
        decisions = DecisionService(
            engine=engine, corrections=CorrectionStore(engine.store._sessions)
        )
        decisions.add_outlet("bench", _Silent())
        await asyncio.to_thread(runtime.server)  # load outside the timed turns
        replies, last, prompts = 0, None, []
        try:
            for text in _script(turns):
                reply = await engine.respond(
                    IncomingMessage(
                        transport="bench",
                        scope="bench:ann",
                        user_id="bench:ann",
                        user_name="Ann",
                        text=text,
                        persona="Marlowe",
                    )
                )
                if isinstance(reply, Reply) and not reply.fallback:
                    replies += 1
                    await decisions.present(reply, hold=False)
                    last = reply
                    node = await engine.store.get_node(reply.candidate_id)
                    snapshot = (
                        await engine.store.get_snapshot(node.prompt_snapshot_id)
                        if node and node.prompt_snapshot_id
                        else None
                    )
                    prompts.append(list(snapshot.messages) if snapshot else [])
        finally:
            await decisions.close()
            memory.close()
            runtime.close()
            await db.dispose()
    return Run(
        layout=layout,
        prompt_ms=[float(t["prompt_ms"]) for t in model._timings],
        prompt_n=[int(t["prompt_n"]) for t in model._timings],
        prompts=prompts,
        last_reply=last.text if last else "",
        replies=replies,
    )


def report(run: Run, turns: int, verdicts: Verdicts) -> None:
    """Print one layout's figures and check its correctness."""
    first, follow = run.prompt_ms[0], statistics.median(run.prompt_ms[1:])
    ratio = follow / first
    figure = (
        f"first {first:.1f} ms ({run.prompt_n[0]} tok), follow-ups median {follow:.1f} ms "
        f"({statistics.median(run.prompt_n[1:]):.0f} tok), ratio {ratio:.3f}"
    )
    if run.layout == "late":
        verdicts.target(
            "late follow-up/first prompt time", figure, f"<= {TARGET_RATIO}", ratio <= TARGET_RATIO
        )
    else:
        print(f"{run.layout} (for comparison): {figure}", flush=True)
    print(
        f"  follow-ups mean {statistics.fmean(run.prompt_ms[1:]):.1f} ms "
        f"({statistics.fmean(run.prompt_n[1:]):.0f} tok); prompts not starting with the "
        f"previous one: {run.restarts} of {len(run.prompts) - 1}",
        flush=True,
    )
    context = " ".join(
        str(m.get("content", "")) for m in run.last_prompt if m.get("name") == "context"
    )
    recalled = "Maya" in context
    print(
        f"  last turn: planted fact in the prompt's context messages: "
        f"{'yes' if recalled else 'NO'}; in the reply: "
        f"{'yes' if 'Maya' in run.last_reply else 'no'} ({run.last_reply[:80]!r})",
        flush=True,
    )
    verdicts.check(recalled, f"{run.layout}: the planted fact is not in the last prompt's memories")
    verdicts.check(
        run.replies == turns, f"{run.layout}: {turns - run.replies} turns got no model reply"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--layouts", default="late,early", help="comma-separated: late, early")
    args = parser.parse_args()
    if args.turns < 3:
        parser.error("--turns must be at least 3")
    layouts = [layout.strip() for layout in args.layouts.split(",") if layout.strip()]
    if not layouts or set(layouts) - {"late", "early"}:
        parser.error("--layouts takes late, early or both")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    verdicts = Verdicts()
    with tempfile.TemporaryDirectory() as folder:
        for layout in layouts:
            run = await play(layout, args.turns, args.max_tokens, Path(folder))
            report(run, args.turns, verdicts)
    verdicts.exit()


if __name__ == "__main__":
    asyncio.run(main())
