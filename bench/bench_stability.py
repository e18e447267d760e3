"""The stability harness on the bundled model: turns per second, and the prompt cache over a run.

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/bench_stability.py [--turns 32] [--every 4]
[--conversations 1] [--persona Marlowe] [--out DIR]``

One seeded run of ``greenroom eval stability`` (the harness's own functions): the bundled
SmolLM2 on a fresh llama.cpp server plays the persona and, on the same server, the simulated
user; real memory (MiniLM, torch) on a throwaway Chroma; the card's probes every ``--every``
turns. It prints:

- turns per second: conversation exchanges per wall second, everything included (the user's
  lines, the probes), and exchanges per second of persona turns alone;
- llama.cpp's prompt processing time of the persona's first request (cold: nothing cached)
  against the median of its follow-up turns. Target: the follow-ups at most half the first,
  which holds only if the prompt cache survives the user model's and the probes' requests on
  the same one-slot server;
- the probes' prompt time against the first, for comparison.

Exit code 1 when a correctness check fails: a persona turn or a probe that got the fallback
line or no answer, a probe stored in the conversation, or the JSON and plot not written.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import PrivateAttr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Verdicts
from bot.evaluation import StabilityConfig, run_stability, summarize, write_run
from bot.llm.local import LlamaRuntime, LocalLlamaChatModel, RuntimeConfig, bundled_gguf_path
from bot.settings import load_settings
from personas import PersonaRegistry
from personas.probes import card_probes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from langchain_core.outputs import ChatGenerationChunk

#: Follow-up persona turns' prompt time against the first request's, at most.
TARGET_RATIO = 0.5


class _Timed(LocalLlamaChatModel):
    """The bundled model, keeping llama.cpp's timings of each request with its last message."""

    _timings: list[tuple[str, dict[str, Any]]] = PrivateAttr(default_factory=list)

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        last = str(args[0][-1].content) if args and args[0] else ""
        async for chunk in super()._astream(*args, **kwargs):
            if timings := chunk.message.response_metadata.get("timings"):
                self._timings.append((last, timings))
            yield chunk


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=32)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--conversations", type=int, default=1)
    parser.add_argument("--persona", default="Marlowe")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=None, help="keep the report here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from memory import SentenceTransformerEmbedder

    verdicts = Verdicts()
    config = StabilityConfig(
        turns=args.turns, conversations=args.conversations, every=args.every, seed=0
    )
    persona = PersonaRegistry.load().get(args.persona)
    probes = card_probes(persona)
    runtime = LlamaRuntime(RuntimeConfig(bundled_gguf_path(), 2048, 2))
    model = _Timed(max_tokens=args.max_tokens, runtime=runtime)
    user_model = LocalLlamaChatModel(max_tokens=48, runtime=runtime)
    embedder = SentenceTransformerEmbedder(backend="torch")
    await asyncio.to_thread(runtime.server)  # loaded outside the timed run
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        out = args.out or folder / "report"
        try:
            result = await run_stability(
                load_settings(data_dir=folder / "data"),
                out / ".work" / "a",
                persona=persona.name,
                config=config,
                model=model,
                user_model=user_model,
                embedder=embedder,
                probes=probes,
            )
            summary = summarize(result)
            written = write_run(summary, out)
            with sqlite3.connect(out / ".work" / "a" / "greenroom.sqlite3") as db:
                user_turns = db.execute("SELECT count(*) FROM messages WHERE role = 'user'")
                stored = user_turns.fetchone()[0]
        finally:
            runtime.close()
        verdicts.check(all(p.is_file() for p in written), "the JSON and the plot were written")
    turns = [t for c in result.conversations for t in c.turns]
    asked = [p for c in result.conversations for p in c.probes]
    verdicts.check(
        not any(t.fallback for t in turns),
        f"{sum(t.fallback for t in turns)} persona turns got the fallback line",
    )
    verdicts.check(
        all(p.answer and not p.fallback for p in asked),
        f"{sum(1 for p in asked if not p.answer or p.fallback)} probes got no model answer",
    )
    verdicts.check(
        stored == len(turns),
        f"{stored} user turns stored for {len(turns)} exchanges: probes leaked into history",
    )

    asks = {probe.ask for probe in probes.probes}
    timings = model._timings
    first = float(timings[0][1]["prompt_ms"])
    first_n = int(timings[0][1]["prompt_n"])
    follow = [t for last, t in timings[1:] if last not in asks]
    probe_t = [t for last, t in timings[1:] if last in asks]
    follow_ms = statistics.median(float(t["prompt_ms"]) for t in follow)
    follow_n = statistics.median(int(t["prompt_n"]) for t in follow)
    reused = statistics.median(int(t.get("cache_n", 0)) for t in follow)
    probe_ms = statistics.median(float(t["prompt_ms"]) for t in probe_t) if probe_t else 0.0
    timing = summary["timing"]
    print(
        f"{persona.name}, {config.conversations} x {config.turns} turns, probes every "
        f"{config.every} ({timing['probes']} probes): {timing['seconds']:.0f} s; persona turns "
        f"{timing['persona_s']:.0f} s, user {timing['user_s']:.0f} s, probes "
        f"{timing['probe_s']:.0f} s"
    )
    print(
        f"turns per second, everything included: {timing['turns_per_s']:.3f}; persona turns "
        f"alone: {len(turns) / timing['persona_s']:.3f}"
    )
    print(
        f"prompt time: first request {first:.0f} ms ({first_n} tokens, cold), follow-up turns "
        f"median {follow_ms:.0f} ms ({follow_n:.0f} tokens processed, {reused:.0f} reused from "
        f"the cache), probes median {probe_ms:.0f} ms"
    )
    rates = summary["pass_rate"]
    print(
        "pass rate: "
        + ", ".join(f"{k} {v['rate']} of {v['asked']}" for k, v in rates.items() if v["asked"])
    )
    verdicts.target(
        "follow-up turn prompt time / first",
        f"{follow_ms / first:.3f}",
        f"<= {TARGET_RATIO}",
        follow_ms / first <= TARGET_RATIO,
    )
    verdicts.exit()


if __name__ == "__main__":
    asyncio.run(main())
