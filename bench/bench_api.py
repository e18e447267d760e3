"""Trainer API page latency: 10,000-record pages through a real uvicorn. Target: p99 < 200 ms.

Seeds ``--turns`` reviewed user turns (consenting users, prompt snapshots of five messages, an
approval on each reply and a rating on every other one), runs ``ANALYZE`` on PostgreSQL (as
autovacuum would on a live database; without statistics the planner joins the fresh tables
badly), starts ``greenroom``'s API in a separate process (uvicorn on loopback), and pages
through ``/v1/corrections`` with ``limit=10000`` (wrapping round at the end), timing each
request until its body is received, and the server process's CPU time per request (all its
threads, from ``/proc``: steadier than wall time on a shared machine, and it leaves out the
database server). The default 60,000 turns make every page a full one; the first 3 pages are
warm-up and not counted.

    .venv/bin/python bench/bench_api.py [--turns 60000] [--pages 50] [--format trl-sft]
        [--backend postgresql|sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from sqlalchemy import insert
from sqlalchemy import text as sql

from bench.common import cpu_seconds, scratch_database, summary
from feedback.database import create_engine, migrate, session_factory
from feedback.models import (
    Conversation,
    FeedbackEvent,
    MessageNode,
    PromptSnapshot,
    UserPrivacy,
)
from feedback.tokens import create_token

SECRET = b"bench-pseudonym-secret-0123456789"
_CHUNK = 2000


async def seed(url: str, turns: int, conversations: int) -> str:
    """Reviewed turns in bulk; returns a read token."""
    engine = create_engine(url)
    await migrate(engine)
    sessions = session_factory(engine)
    rows: dict[type, list[dict[str, object]]] = {
        Conversation: [
            {"id": c + 1, "transport": "discord", "scope": f"dm:bench:{c}", "persona": "Marlowe"}
            for c in range(conversations)
        ],
        UserPrivacy: [{"user_id": f"bench:{c}", "consent": True} for c in range(conversations)],
        PromptSnapshot: [],
        MessageNode: [],
        FeedbackEvent: [],
    }
    for i in range(turns):
        c = i % conversations
        text = f"Turn {i}: have you seen the man in the grey coat near pier {i % 40}?"
        rows[PromptSnapshot].append(
            {
                "id": i + 1,
                "messages": [
                    {"role": "system", "content": "You are Marlowe, a tired private eye."},
                    {"role": "user", "content": "Evening. Got a minute?"},
                    {"role": "assistant", "content": "Minutes are all I've got, friend."},
                    {"role": "user", "content": "Someone's been following me."},
                    {"role": "user", "content": text},
                ],
                "persona": "Marlowe",
                "persona_version": "v1",
                "memories": [],
                "model_name": "bench",
                "params": {},
            }
        )
        rows[MessageNode] += [
            {
                "id": 2 * i + 1,
                "conversation_id": c + 1,
                "role": "user",
                "origin": "user",
                "author_id": f"bench:{c}",
                "author_name": f"user{c}",
                "content": text,
                "state": "answered",
                "flags": [],
            },
            {
                "id": 2 * i + 2,
                "conversation_id": c + 1,
                "parent_id": 2 * i + 1,
                "role": "assistant",
                "origin": "model",
                "author_id": "Marlowe",
                "author_name": "Marlowe",
                "content": f"Grey coats are cheap, pal. Pier {i % 40} isn't. Tell me more.",
                "state": "sent",
                "prompt_snapshot_id": i + 1,
                "decided_by": "bench:actor",
                "flags": [],
            },
        ]
        event = {
            "conversation_id": c + 1,
            "candidate_id": 2 * i + 2,
            "persona": "Marlowe",
            "persona_version": "v1",
            "prompt_snapshot_id": i + 1,
            "actor_id": "bench:actor",
        }
        rows[FeedbackEvent].append({**event, "kind": "approve", "tags": []})
        if i % 2:
            rows[FeedbackEvent].append({**event, "kind": "rate", "rating": 5, "tags": ["funny"]})
    async with sessions() as session:
        for model, values in rows.items():
            for start in range(0, len(values), _CHUNK):
                await session.execute(insert(model), values[start : start + _CHUNK])
        await session.commit()
    if engine.dialect.name == "postgresql":
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(sql("ANALYZE"))
    token = await create_token(sessions, "bench", "read")
    await engine.dispose()
    return token


def serve(url: str, port: int) -> None:
    """The API in its own process, as `greenroom api` runs it."""
    import uvicorn

    from feedback.api import create_app

    async def main() -> None:
        engine = create_engine(url)
        app = create_app(session_factory(engine), pseudonym_secret=SECRET)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        await uvicorn.Server(config).serve()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def measure(port: int, server_pid: int, token: str, fmt: str, pages: int, limit: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
        for _ in range(200):
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        cursor: str | None = None
        durations: list[float] = []
        cpu: list[float] = []
        sizes: list[int] = []
        counts: list[int] = []
        for n in range(pages + 3):
            params: dict[str, str | int] = {"format": fmt, "limit": limit}
            if cursor:
                params["cursor"] = cursor
            cpu_before = cpu_seconds(server_pid)
            started = time.perf_counter()
            response = client.get("/v1/corrections", params=params)
            elapsed = time.perf_counter() - started
            cpu_used = cpu_seconds(server_pid) - cpu_before
            response.raise_for_status()
            body = response.json()
            cursor = body["next_cursor"] if body["has_more"] else None
            if n >= 3:  # warm-up pages are not counted
                durations.append(elapsed)
                cpu.append(cpu_used)
                sizes.append(len(response.content))
                counts.append(len(body["records"]))
    print(
        f"{fmt}: {min(counts):,} to {max(counts):,} records a page, "
        f"{sum(sizes) / len(sizes) / 1e6:.1f} MB a page"
    )
    print(f"GET /v1/corrections limit={limit}: {summary(durations)}")
    print(f"server CPU a request (10 ms ticks): {summary(cpu)}")


async def run(backend: str, turns: int, pages: int, fmt: str, limit: int) -> None:
    async with scratch_database(backend) as url:
        started = time.perf_counter()
        token = await seed(url, turns, conversations=200)
        print(f"{backend}: seeded {turns:,} turns in {time.perf_counter() - started:.1f} s")
        port = _free_port()
        server = multiprocessing.get_context("spawn").Process(target=serve, args=(url, port))
        server.start()
        try:
            assert server.pid is not None
            await asyncio.to_thread(measure, port, server.pid, token, fmt, pages, limit)
        finally:
            server.terminate()
            server.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=60_000)
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--limit", type=int, default=10_000)
    parser.add_argument("--format", default="trl-sft")
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()
    asyncio.run(run(args.backend, args.turns, args.pages, args.format, args.limit))


if __name__ == "__main__":
    main()
