"""Benchmark: does a persona find what the user told it? Recall@5 of planted facts by backend.

    .venv/bin/python bench/bench_retrieval.py [--quick] [--sizes 100 1000 5000]
        [--backends onnx-int8 onnx torch] [--models-dir DIR] [--show-misses]

For each size, one (persona, user) scope of Juniper's (a bundled card, canon synced as the engine
does) holds that many turns: filler from :mod:`bench.retrieval_corpus` (the user's messages and
the persona's replies, about the same people, places and topics) with 24 planted facts spread
among them, each told in its own words ("My sister Maya moved to Lisbon last spring."). Each
fact is then asked back twice in other words ("Where does my sibling live now?") with
``MemoryService.recall(query_texts=[question], k=5)``, as the engine's ``_recall`` asks with the
user's message alone. A question is answered when the planted turn, or a fact extracted from it,
is among the five memories recall returns (canon competes, as in a real prompt).

Planted turns go through ``remember_turn`` (the decision service's path: the turn and its
extracted facts, embedded together). Filler goes through ``add_many`` with the same kind and
role: none of it holds an extractable fact (checked), so the stored records are those
``remember_turn`` would write, but ``remember_turn`` persists the index on every turn and would
take tens of minutes for 5,000 memories three times over. Each backend gets its own store; every
recall is timed with the query embedded uncached (LRU off: a new message is never cached), the
backends taking turns query by query so load on the shared machine hits all alike. Latency adds
60 more user messages per size (not stored) to the questions.

Correctness checks (exit 1 when one fails): every planted turn and its extracted facts are in
``show_user`` of its scope with their text, each scope holds exactly the turns written to it,
and every recalled memory is one of the scope's own or the persona's canon. Other scopes hold
the same slots with other values (the other sizes' users, and Marlowe with the 1,000 scope's
user), so a memory leaking across scopes would be seen. Recency weights play no part: every
memory is written during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
# torch's OpenMP threads spin after each call (GNU OpenMP's default) and would take a core from
# the backend timed next; passive waiting keeps the backends apart (as bench/bench_memory.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from bench.common import percentile
from bench.retrieval_corpus import PlantedFact, filler_turns, planted_facts, user_messages
from bot.settings import MemorySettings
from memory import MemoryService, SentenceTransformerEmbedder
from memory import recall as scoring
from memory.embedding import Backend
from memory.facts import extract_facts
from personas.registry import PersonaRegistry

__all__ = ["main"]

PERSONA, OTHER_PERSONA = "Juniper", "Marlowe"
BACKENDS: tuple[Backend, ...] = ("onnx-int8", "onnx", "torch")
TOP_K = 5
#: The target: the default backend finds this share of planted facts in a scope of this size.
TARGET_RECALL, TARGET_SIZE = 0.9, 1000
#: int8 "loses meaningful recall" against float32 when it answers this share fewer questions.
MEANINGFUL_LOSS = 0.05
_LATENCY_MESSAGES, _QUICK_LATENCY_MESSAGES = 60, 20


@dataclass
class Scope:
    """One (persona, user) scope: what was written to it, and the questions to ask it."""

    persona: str
    user_id: str
    size: int
    planted: list[PlantedFact]
    planted_ids: dict[str, str] = field(default_factory=dict)  # turn id -> text
    fact_ids: dict[str, str] = field(default_factory=dict)  # fact id -> source turn id
    records: dict[str, str] = field(default_factory=dict)  # id -> text, from show_user


@dataclass
class Outcome:
    answered: int = 0
    asked: int = 0
    exact_answered: int = 0
    missed: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)


async def _fill_scope(memory: MemoryService, scope: Scope, seed: int, failures: list[str]) -> None:
    """Write ``scope.size`` turns: filler in runs through ``add_many``, planted facts spread
    among them through ``remember_turn``."""
    filler = filler_turns(seed, scope.size - len(scope.planted))
    for _, text in filler:
        if extract_facts(text):
            failures.append(f"filler holds a fact, add_many would differ: {text!r}")
    rng = random.Random(seed)
    positions = set(rng.sample(range(scope.size), len(scope.planted)))
    planted = iter(scope.planted)
    pending: list[tuple[str, str]] = []

    async def flush() -> None:
        for role in ("user", "assistant"):
            texts = [text for r, text in pending if r == role]
            if texts:
                await memory.add_many(
                    persona=scope.persona, user_id=scope.user_id, texts=texts, source=role
                )
        pending.clear()

    filler_iter = iter(filler)
    for index in range(scope.size):
        if index not in positions:
            pending.append(next(filler_iter))
            continue
        await flush()
        fact = next(planted)
        turn_id = f"{scope.user_id}-{scope.persona}-{index}"
        events = await memory.remember_turn(
            persona=scope.persona,
            user_id=scope.user_id,
            conversation_id=f"conversation-{scope.user_id}",
            turn_id=turn_id,
            role="user",
            text=fact.text,
            speaker="bench-user",
        )
        scope.planted_ids[f"turn:{turn_id}"] = fact.text
        for event in events:
            if event.event in ("ADD", "UPDATE"):
                scope.fact_ids[f"fact:user:{event.key}"] = f"turn:{turn_id}"
    await flush()


async def _check_stored(memory: MemoryService, scope: Scope, failures: list[str]) -> None:
    """Every planted turn and fact is in ``show_user`` with its text; the scope holds exactly
    the turns written to it."""
    records = await memory.show_user(user_id=scope.user_id, persona=scope.persona)
    scope.records = {r.id: r.text for r in records}
    where = f"{scope.persona}/{scope.user_id}"
    for turn_id, text in scope.planted_ids.items():
        if scope.records.get(turn_id) != text:
            failures.append(f"{where}: planted turn {turn_id} missing from show_user")
    for fact_id in scope.fact_ids:
        if fact_id not in scope.records:
            failures.append(f"{where}: extracted fact {fact_id} missing from show_user")
    turns = sum(1 for r in records if r.kind == "turn")
    if turns != scope.size:
        failures.append(f"{where}: show_user lists {turns} turns, {scope.size} were written")


async def _ask(
    memory: MemoryService, scope: Scope, question: str, canon: set[str], failures: list[str]
) -> tuple[list[str], list[str], float]:
    """The ids recall answers ``question`` with (a fact's as its source turn), their texts, and
    the time it took; a memory neither the scope's own nor canon is a failure."""
    started = time.perf_counter()
    hits = await memory.recall(
        persona=scope.persona,
        user_id=scope.user_id,
        query_texts=[question],
        k=TOP_K,
        token_budget=MemorySettings().recall_token_budget,
    )
    elapsed = time.perf_counter() - started
    found = []
    for hit in hits:
        if hit.kind == "canon":
            if hit.text not in canon:
                failures.append(f"recall in {scope.user_id} returned unknown canon {hit.text!r}")
            continue
        if scope.records.get(hit.id) != hit.text:
            failures.append(
                f"recall in {scope.persona}/{scope.user_id} returned another scope's memory: "
                f"{hit.id} {hit.text[:60]!r}"
            )
        found.append(scope.fact_ids.get(hit.id, hit.id))
    return found, [hit.text for hit in hits], elapsed


def _exact(
    memory: MemoryService, scope: Scope, question: str, stored: dict[str, object]
) -> list[str]:
    """What recall would return with exact nearest neighbours instead of Chroma's HNSW index:
    brute-force cosine over the scope's stored vectors, then recall's own scoring. Separates
    what the embedding loses from what approximate search loses."""
    vectors = stored["vectors"]
    assert isinstance(vectors, np.ndarray)
    query = memory._embed([question])  # the same single-text path as recall
    cosine = vectors @ query[0]
    top = np.argsort(-cosine)[: TOP_K * 3]
    result = {
        key: [[stored[key][i] for i in top]]  # type: ignore[index]
        for key in ("ids", "documents", "metadatas")
    }
    result["distances"] = [[1.0 - float(cosine[i]) for i in top]]
    result["embeddings"] = [[vectors[i] for i in top]]
    candidates = scoring.scope_candidates(result, time.time())
    candidates += scoring.canon_candidates(memory._personas.canon(scope.persona), query[0], TOP_K)
    hits = scoring.select(candidates, [question], TOP_K, MemorySettings().recall_token_budget)
    return [scope.fact_ids.get(hit.id, hit.id) for hit in hits if hit.kind != "canon"]


def _stored(memory: MemoryService, scope: Scope) -> dict[str, object]:
    """The scope's ids, documents, metadata and vectors, read once for :func:`_exact`."""
    got = memory._store.scope(scope.persona, scope.user_id).get(
        include=["documents", "metadatas", "embeddings"]
    )
    return {
        "ids": got["ids"],
        "documents": got["documents"],
        "metadatas": got["metadatas"],
        "vectors": np.asarray(got["embeddings"], dtype=np.float32),
    }


async def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    failures: list[str] = []
    registry = PersonaRegistry.load()
    personas = {name: registry.get(name) for name in (PERSONA, OTHER_PERSONA)}
    canon = {name: set(p.canon_as_self()) for name, p in personas.items()}
    sizes: list[int] = args.sizes
    decoy_user = f"bench-user-{TARGET_SIZE if TARGET_SIZE in sizes else sizes[0]}"
    print(
        f"{len(sizes)} scopes of {', '.join(f'{s:,}' for s in sizes)} turns ({PERSONA}), "
        f"{len(planted_facts(0))} planted facts x 2 questions each, top {TOP_K}; "
        f"decoy scope {OTHER_PERSONA}/{decoy_user}; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at start; models in {args.models_dir}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    services: dict[str, MemoryService] = {}
    scopes: dict[str, list[Scope]] = {}
    try:
        for backend in args.backends:
            load_started = time.perf_counter()
            embedder = SentenceTransformerEmbedder(
                backend=backend, onnx_cache_dir=args.models_dir, cache_size=0
            )
            if embedder.backend != backend:
                failures.append(f"{backend} could not be loaded (fell back to {embedder.backend})")
                continue
            load_s = time.perf_counter() - load_started
            # Bulk writes of thousands of texts take longer than the live default of 5 s.
            memory = MemoryService.open(path=workdir / backend, embedder=embedder, timeout_s=600)
            services[backend] = memory
            for name, persona in personas.items():
                voice = [
                    line for role, line in persona.example_dialogue("you") if role == "assistant"
                ]
                await memory.sync_persona(
                    name, canon_facts=persona.canon_as_self(), voice_examples=voice
                )
            built = [
                Scope(PERSONA, f"bench-user-{size}", size, planted_facts(index))
                for index, size in enumerate(sizes)
            ]
            decoy = Scope(OTHER_PERSONA, decoy_user, 200, planted_facts(len(sizes)))
            fill_started = time.perf_counter()
            for index, scope in enumerate([*built, decoy]):
                await _fill_scope(memory, scope, seed=1000 + index, failures=failures)
                await _check_stored(memory, scope, failures)
            scopes[backend] = built
            fill_s = time.perf_counter() - fill_started
            print(
                f"  {backend:<9} model ready in {load_s:5.1f} s; "
                f"{sum(sizes) + decoy.size:,} turns written in {fill_s:5.1f} s"
            )

        outcomes = {(b, s): Outcome() for b in services for s in sizes}
        latency_only = user_messages(random.Random(99), args.latency_messages)
        for position, size in enumerate(sizes):
            # One warm-up recall per store, then the backends take turns query by query.
            stored = {b: _stored(m, scopes[b][position]) for b, m in services.items()}
            for backend, memory in services.items():
                await _ask(memory, scopes[backend][position], "hello again", canon[PERSONA], [])
            questions = [
                (fact, question)
                for fact in scopes[next(iter(services))][position].planted
                for question in fact.questions
            ]
            for number, (fact, question) in enumerate(questions):
                for backend in _rotated(list(services), number):
                    scope = scopes[backend][position]
                    found, texts, elapsed = await _ask(
                        services[backend], scope, question, canon[PERSONA], failures
                    )
                    turn_id = next(i for i, t in scope.planted_ids.items() if t == fact.text)
                    outcome = outcomes[backend, size]
                    outcome.asked += 1
                    outcome.latencies_s.append(elapsed)
                    exact = _exact(services[backend], scope, question, stored[backend])
                    outcome.exact_answered += turn_id in exact
                    if turn_id in found:
                        outcome.answered += 1
                    else:
                        recalled = " | ".join(text[:50] for text in texts[:3])
                        outcome.missed.append(f"{fact.slot}: {question}  [got: {recalled}]")
            for number, message in enumerate(latency_only):
                for backend in _rotated(list(services), number):
                    _, _, elapsed = await _ask(
                        services[backend],
                        scopes[backend][position],
                        message,
                        canon[PERSONA],
                        failures,
                    )
                    outcomes[backend, size].latencies_s.append(elapsed)
    finally:
        for memory in services.values():
            memory.close()
        shutil.rmtree(workdir, ignore_errors=True)

    _report(outcomes if services else {}, list(services), sizes, args.show_misses)
    _verdicts(outcomes if services else {}, list(services), sizes)
    print(f"\nrun took {time.perf_counter() - started:.0f} s")
    if failures:
        print(f"\nCORRECTNESS FAILURES ({len(failures)}):")
        for failure in failures[:30]:
            print(f"  {failure}")
        return 1
    print("correctness: every planted memory stored and listed, every recall from its own scope")
    return 0


def _rotated(items: list[str], shift: int) -> list[str]:
    shift %= max(1, len(items))
    return items[shift:] + items[:shift]


def _report(
    outcomes: dict[tuple[str, int], Outcome], backends: list[str], sizes: list[int], misses: bool
) -> None:
    header = "".join(f"{b:>22}" for b in backends)
    print(f"\nrecall@{TOP_K} of planted facts (answered / asked):")
    print(f"{'turns':>8}{header}")
    for size in sizes:
        cells = ""
        for backend in backends:
            o = outcomes[backend, size]
            cells += f"{o.answered / o.asked:>14.3f} ({o.answered:>2}/{o.asked})"
        print(f"{size:>8,}{cells}")
    print(f"\nrecall@{TOP_K} with exact nearest neighbours (brute force, recall's own scoring):")
    print(f"{'turns':>8}{header}")
    for size in sizes:
        cells = ""
        for backend in backends:
            o = outcomes[backend, size]
            cells += f"{o.exact_answered / o.asked:>14.3f} ({o.exact_answered:>2}/{o.asked})"
        print(f"{size:>8,}{cells}")
    print("\nrecall latency, query embedded uncached, p50 / p99 ms (n per cell):")
    print(f"{'turns':>8}{header}")
    for size in sizes:
        cells = ""
        for backend in backends:
            ms = [s * 1000 for s in outcomes[backend, size].latencies_s]
            cells += f"{statistics.median(ms):>9.1f} / {percentile(ms, 99):5.1f} ({len(ms):>3})"
        print(f"{size:>8,}{cells}")
    if misses:
        for backend in backends:
            for size in sizes:
                missed = outcomes[backend, size].missed
                if missed:
                    print(f"\nmissed by {backend} at {size:,}:")
                    for line in missed:
                        print(f"    {line}")


def _verdicts(
    outcomes: dict[tuple[str, int], Outcome], backends: list[str], sizes: list[int]
) -> None:
    default = MemorySettings().embedding_backend
    size = TARGET_SIZE if TARGET_SIZE in sizes else max(sizes)
    if default in backends:
        o = outcomes[default, size]
        share = o.answered / o.asked
        verdict = "PASS" if share >= TARGET_RECALL else "MISS"
        print(
            f"\ntarget: default backend ({default}) recall@{TOP_K} >= {TARGET_RECALL:.2f} at "
            f"{size:,} turns: {share:.3f} {verdict}"
        )
    if "onnx-int8" in backends and "onnx" in backends:
        for label, answered in (
            ("through recall", lambda o: o.answered),
            ("exact search", lambda o: o.exact_answered),
        ):
            gaps = [
                (s, (answered(outcomes["onnx", s]) - answered(outcomes["onnx-int8", s])) / asked)
                for s in sizes
                for asked in [outcomes["onnx", s].asked]
            ]
            worst = max(gap for s, gap in gaps if s >= min(TARGET_SIZE, max(sizes)))
            print(
                f"int8 loss against float32 ({label}, onnx minus onnx-int8): "
                + ", ".join(f"{gap:+.3f} at {s:,}" for s, gap in gaps)
                + f"; meaningful (> {MEANINGFUL_LOSS:.2f} at {TARGET_SIZE:,}+): "
                + ("yes" if worst > MEANINGFUL_LOSS else "no")
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=cache_home / "greenroom",
        help="where the ONNX exports are made once and reused (default: the embedder's own)",
    )
    parser.add_argument("--latency-messages", type=int, default=None)
    parser.add_argument("--show-misses", action="store_true", help="list the questions missed")
    parser.add_argument(
        "--quick", action="store_true", help="sizes 100 and 1,000, 20 latency-only messages"
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes = [s for s in args.sizes if s <= TARGET_SIZE] or [100]
    if args.latency_messages is None:
        args.latency_messages = _QUICK_LATENCY_MESSAGES if args.quick else _LATENCY_MESSAGES
    if any(s < len(planted_facts(0)) for s in args.sizes):
        parser.error(f"every size must hold the {len(planted_facts(0))} planted facts")
    sys.exit(asyncio.run(_run(args)))


if __name__ == "__main__":
    main()
