"""Benchmark: Greenroom's memory against the usual langchain-chroma recipe, side by side.

    .venv/bin/python bench/bench_memory.py [--n 100000] [--users 1000] [--personas 3] [--quick]

Synthetic memories are spread over users x personas scopes. All memory vectors are computed
once with the real bundled MiniLM in batches (reported as embedding throughput) and then added
to both stores (reported as store throughput, and combined). Each timed recall embeds its query
with the real model, uncached (the LRU is off), on both sides:

* ours: ``MemoryService.recall`` (one small collection per (persona, user) scope, plus canon);
* usual: langchain-chroma ``Chroma`` + langchain-huggingface ``HuggingFaceEmbeddings`` on one
  shared collection, ``similarity_search(k=5, filter={"$and": [user, persona]})``.

Queries alternate between the two so that load on the shared machine hits both alike; figures
are medians (p50) and p99. recall@5 compares each store's raw top-5 for the scope against exact
brute-force cosine in numpy over the same scope's vectors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from memory import MemoryService, SentenceTransformerEmbedder, bundled_model_path

__all__ = ["main"]

_NAMES = ("Maya", "Tom", "Lena", "Ravi", "Sofia", "Omar", "Ines", "Jonas", "Aiko", "Pablo")
_PLACES = ("Lisbon", "Oslo", "Porto", "Berlin", "Lagos", "Kyoto", "Lima", "Austin", "Cork")
_THINGS = ("bicycle", "guitar", "garden", "novel", "recipe", "puppy", "kayak", "telescope")
_THINGS += ("sourdough", "chess", "podcast", "marathon", "violin", "pottery", "camera")
_TEMPLATES = (
    "My {rel} {name} moved to {place} last {when}.",
    "I spent {num} hours fixing my {thing} on {day}.",
    "We talked about {name}'s trip to {place} and the {thing}.",
    "I'm learning to play the {thing} with {name} every {day}.",
    "Yesterday it rained in {place}, so I stayed in with my {thing}.",
    "{name} gave me a {thing} for my birthday, I turned {num}.",
    "I want to visit {place} in {when} to see {name}.",
    "My favourite {thing} shop in {place} closed after {num} years.",
    "I argued with {name} about the {thing} again on {day}.",
    "Work was stressful; {name} says I should try {thing} on {day}s.",
)
_QUERIES = (
    "Where did my {rel} move to?",
    "What did I say about the {thing}?",
    "Tell me again about {name} and {place}.",
    "How many hours did I spend on my {thing}?",
    "Who gave me something for my birthday?",
)
_FILL = {
    "rel": ["sister", "brother", "cousin", "friend", "aunt", "neighbour"],
    "when": ["spring", "summer", "autumn", "winter", "year", "month"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
}


def _sentence(rng: random.Random, templates: tuple[str, ...]) -> str:
    return rng.choice(templates).format(
        name=rng.choice(_NAMES),
        place=rng.choice(_PLACES),
        thing=rng.choice(_THINGS),
        num=rng.randint(2, 90),
        **{key: rng.choice(values) for key, values in _FILL.items()},
    )


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


def _report(label: str, p50: float, p99: float) -> None:
    print(f"  {label:<45} p50 {p50:6.2f} ms, p99 {p99:6.2f} ms")


def _recall_at(found: list[int], exact: list[int]) -> float:
    return len(set(found) & set(exact)) / max(1, len(exact))


async def _run(args: argparse.Namespace) -> None:
    from langchain_chroma import Chroma
    from langchain_huggingface import HuggingFaceEmbeddings

    rng = random.Random(7)
    scopes = [
        (f"persona{p}", f"discord:{u:06d}") for u in range(args.users) for p in range(args.personas)
    ]
    texts = [_sentence(rng, _TEMPLATES) for _ in range(args.n)]
    owner = [i % len(scopes) for i in range(args.n)]
    texts = [f"{t} (#{i})" for i, t in enumerate(texts)]  # no exact duplicates
    print(
        f"{args.n} memories, {args.users} users x {args.personas} personas "
        f"= {len(scopes)} scopes (~{args.n / len(scopes):.0f} each)"
    )

    embedder = SentenceTransformerEmbedder(
        backend=args.backend, cache_size=0, batch_size=64, threads=args.threads
    )
    print(f"embedding backend: {embedder.backend}")
    bulk = SentenceTransformerEmbedder(backend=args.backend, cache_size=0, batch_size=64, threads=2)
    started = time.perf_counter()
    vectors = bulk.embed(texts)
    embed_s = time.perf_counter() - started
    del bulk
    print(f"embed (real model, batches of 64, 2 threads): {args.n / embed_s:,.0f} memories/s")

    workdir = Path(args.dir or tempfile.mkdtemp(prefix="bench-memory-"))
    ours = MemoryService.open(path=workdir / "ours", embedder=embedder, timeout_s=600)
    by_scope: dict[int, list[int]] = {}
    for index, scope in enumerate(owner):
        by_scope.setdefault(scope, []).append(index)
    started = time.perf_counter()
    for scope, indices in by_scope.items():
        persona, user = scopes[scope]
        await ours.add_many(
            persona=persona,
            user_id=user,
            texts=[texts[i] for i in indices],
            embeddings=vectors[indices],
        )
    ours_add_s = time.perf_counter() - started
    print(
        f"ours  add (store only): {args.n / ours_add_s:,.0f} memories/s; "
        f"with embedding: {args.n / (embed_s + ours_add_s):,.0f} memories/s"
    )

    lc_embeddings = HuggingFaceEmbeddings(
        model_name=str(bundled_model_path()),
        model_kwargs={"device": "cpu"},
        encode_kwargs={"normalize_embeddings": True},
    )
    usual = Chroma(
        collection_name="memories",
        embedding_function=lc_embeddings,
        persist_directory=str(workdir / "usual"),
        collection_metadata={"hnsw:space": "cosine"},
    )
    started = time.perf_counter()
    for start in range(0, args.n, 5000):
        chunk = range(start, min(args.n, start + 5000))
        usual._collection.add(
            ids=[str(i) for i in chunk],
            documents=[texts[i] for i in chunk],
            embeddings=vectors[start : start + len(chunk)],
            metadatas=[
                {"persona": scopes[owner[i]][0], "user": scopes[owner[i]][1]} for i in chunk
            ],
        )
    usual_add_s = time.perf_counter() - started
    print(f"usual add (store only, one shared collection): {args.n / usual_add_s:,.0f} memories/s")

    queries = [(rng.randrange(len(scopes)), _sentence(rng, _QUERIES)) for _ in range(args.queries)]
    for scope, query in queries[:5]:  # warm up both code paths
        persona, user = scopes[scope]
        await ours.recall(persona=persona, user_id=user, query_texts=[query], k=5)
        usual.similarity_search(query, k=5, filter={"$and": [{"user": user}, {"persona": persona}]})

    ours_s: list[float] = []
    usual_s: list[float] = []
    embed_only_s: list[float] = []
    ours_raw_s: list[float] = []
    recall_ours: list[float] = []
    recall_usual: list[float] = []
    for n, (scope, query) in enumerate(queries):
        persona, user = scopes[scope]
        where = {"$and": [{"user": user}, {"persona": persona}]}
        order = (0, 1) if n % 2 else (1, 0)
        for side in order:
            started = time.perf_counter()
            if side == 0:
                await ours.recall(
                    persona=persona, user_id=user, query_texts=[query], k=5, token_budget=10_000
                )
                ours_s.append(time.perf_counter() - started)
            else:
                usual.similarity_search(query, k=5, filter=where)
                usual_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        query_vector = embedder.embed([query])
        embed_only_s.append(time.perf_counter() - started)
        # recall@5 of the raw vector search against exact cosine over the same scope.
        indices = by_scope[scope]
        exact = [indices[i] for i in np.argsort(-(vectors[indices] @ query_vector[0]))[:5]]
        scope_collection = ours._scope(persona, user)
        started = time.perf_counter()
        got = scope_collection.query(
            query_embeddings=query_vector, n_results=5, include=["documents"]
        )
        ours_raw_s.append(time.perf_counter() - started)
        found = [int(d.rsplit("#", 1)[1].rstrip(")")) for d in got["documents"][0]]
        recall_ours.append(_recall_at(found, exact))
        got = usual._collection.query(
            query_embeddings=query_vector, n_results=5, where=where, include=[]
        )
        recall_usual.append(_recall_at([int(i) for i in got["ids"][0]], exact))

    ours_p50, ours_p99 = _percentiles(ours_s)
    usual_p50, usual_p99 = _percentiles(usual_s)
    embed_p50, embed_p99 = _percentiles(embed_only_s)
    raw_p50, raw_p99 = _percentiles(ours_raw_s)
    print(f"\n{args.queries} recalls, query embedded uncached with the real model:")
    _report(f"query embedding alone ({embedder.backend})", embed_p50, embed_p99)
    _report("ours  raw scope query (no embedding)", raw_p50, raw_p99)
    _report("ours  recall (embed + scope + canon + rank)", ours_p50, ours_p99)
    _report("usual similarity_search + filter", usual_p50, usual_p99)
    print(f"  ratio usual/ours: p50 {usual_p50 / ours_p50:.1f}x, p99 {usual_p99 / ours_p99:.1f}x")
    print(
        f"  recall@5 vs exact cosine: ours {statistics.mean(recall_ours):.3f}, "
        f"usual {statistics.mean(recall_usual):.3f}"
    )
    print(f"  (data in {workdir})")
    ours.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="memories in all")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--personas", type=int, default=3)
    parser.add_argument("--queries", type=int, default=300, help="timed recalls per side")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--threads", type=int, default=1, help="embedding threads")
    parser.add_argument("--dir", help="working directory (default: a new temporary one)")
    parser.add_argument("--quick", action="store_true", help="3,000 memories, 30 users, 60 queries")
    args = parser.parse_args()
    if args.quick:
        args.n, args.users, args.queries = 3000, 30, 60
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
