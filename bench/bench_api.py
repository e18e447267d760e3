"""Trainer API page latency: 10,000-record pages through a real uvicorn. Target: p99 < 200 ms.

Seeds :mod:`bench.bench_export`'s queue of ``--events`` feedback events (consenting users;
approvals, rewrites, regenerations and ratings by several actors; prompt snapshots of a system
prompt and up to six history messages), which gives records of every format, runs ``ANALYZE``
on PostgreSQL (as autovacuum would on a live database; without statistics the planner joins
the fresh tables badly), starts ``greenroom``'s API in a separate process (uvicorn on
loopback), and pages through ``/v1/corrections`` with ``limit=10000``, timing each request
until its body is received, and the server's CPU time per request (all threads of its process
and of its page helper process, from ``/proc``: steadier than wall time on a shared machine,
and it leaves out the database server). ``--format all`` measures each format in turn on the
one seeded database; the first 3 pages of each run are warm-up and not counted. Paging wraps
round at the end: the preference formats give about 80,000 records from the default 400,000
events, so their runs include a short last page.

``--data uniform`` seeds the queue of sessions before this one instead: ``--turns`` turns of
one approved reply each (a rating on every other one), five-message prompts, no text to
redact. It gives SFT, KTO and oasst records only, and an SFT page there takes about half the
time of a mixed one; use it to compare with figures taken before.

    .venv/bin/python bench/bench_api.py [--events 400000] [--pages 50] [--format trl-sft|all]
        [--backend postgresql|sqlite] [--runs N] [--compare DIR] [--data mixed|uniform]
        [--turns 60000]

Each run serves this checkout three ways, side by side: ``built`` builds every record and keeps
none, ``first`` starts with no kept record (they are deleted first) and keeps what its pages
build, ``kept`` serves what ``first`` kept (see :mod:`feedback.exports.cache`; on PostgreSQL
after ``ANALYZE turn_records``, as autovacuum would do soon after ``first`` filled it);
``--passes`` picks some of them. The ``ahead`` pass serves what the records builder kept (see
:mod:`feedback.exports.ahead`; it builds the format's records of every turn first, timed, and
again in each run when ``first`` deleted them), as pages are served once the builder of
``greenroom api`` kept up with the changes.

``--compare DIR`` serves the same database from another checkout too (``git worktree add DIR
REV``), alternating the two run by run (``--runs`` each), so a change is measured side by side
on a machine whose speed drifts; the report gives each side's runs and their medians. With the
``ahead`` pass, the other checkout also builds ahead with its own code and serves those records
(``DIR ahead``), before this one builds again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from sqlalchemy import insert
from sqlalchemy import text as sql

from bench.bench_export import prepare_queue
from bench.common import (
    analyze_kept_records,
    copy_to_postgres,
    forget_kept_records,
    percentile,
    scratch_database,
    summary,
    tree_cpu_seconds,
)
from feedback.database import create_engine, migrate, session_factory
from feedback.exports import FORMATS
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
    """The uniform queue: ``turns`` approved turns in bulk; returns a read token."""
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


async def seed_mixed(url: str, events: int) -> str:
    """:mod:`bench.bench_export`'s queue of ``events`` feedback events; returns a read token."""
    if url.startswith("sqlite"):
        await prepare_queue(url, Path(url.split(":///", 1)[1]), events)
    else:  # generated into SQLite, then copied (as bench_export.py does)
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "queue.sqlite3"
            await prepare_queue(f"sqlite+aiosqlite:///{source}", source, events)
            await copy_to_postgres(source, url)
    engine = create_engine(url)
    token = await create_token(session_factory(engine), "bench", "read")
    await engine.dispose()
    return token


#: The API in its own process, as ``greenroom api`` runs it (on the event loop it picks), from
#: the checkout on ``sys.path``.
_SERVE = """
import asyncio, sys
import uvicorn
from feedback.api import create_app
from feedback.database import create_engine, session_factory

async def main(url, port, secret, keep):
    engine = create_engine(url)
    options = {} if keep == "default" else {"keep_records": keep == "keep"}
    app = create_app(session_factory(engine), pseudonym_secret=secret, **options)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    await uvicorn.Server(config).serve()

try:  # the loop greenroom api serves on
    from bot.cli_api import event_loop_factory
except ImportError:  # a checkout from before uvloop: asyncio's loop
    event_loop_factory = lambda: None
with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
    runner.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4]))
"""
#: Builds one format ahead with the code of the checkout on ``sys.path``, and says how fast.
_BUILD_AHEAD = """
import asyncio, sys
from bench.common import build_everything_ahead

fmt = sys.argv[2]
_queued, stats, elapsed = asyncio.run(
    build_everything_ahead(sys.argv[1], (fmt,), sys.argv[3].encode())
)
print(
    f"{fmt}: built ahead {stats.records:,} records of {stats.turns:,} turns in "
    f"{elapsed:.1f} s ({stats.turns / elapsed:,.0f} turns/s)",
    flush=True,
)
"""
_ROOT = Path(__file__).resolve().parent.parent


def serve(root: Path, url: str, port: int, keep: str = "default") -> subprocess.Popen[bytes]:
    """Start the API of the checkout at ``root`` on ``port`` (``keep``: ``keep``, ``build``
    or, for a checkout from before kept records, ``default``)."""
    return subprocess.Popen(
        [sys.executable, "-c", _SERVE, url, str(port), SECRET.decode(), keep],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Run:
    """One run's timings: wall time and server CPU per request (seconds), page sizes."""

    durations: list[float]
    cpu: list[float]
    sizes: list[int]
    counts: list[int]


def measure(port: int, server_pid: int, token: str, fmt: str, pages: int, limit: int) -> Run:
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
            cpu_before = tree_cpu_seconds(server_pid)
            started = time.perf_counter()
            response = client.get("/v1/corrections", params=params)
            elapsed = time.perf_counter() - started
            cpu_used = tree_cpu_seconds(server_pid) - cpu_before
            response.raise_for_status()
            body = response.json()
            cursor = body["next_cursor"] if body["has_more"] else None
            if n >= 3:  # warm-up pages are not counted
                durations.append(elapsed)
                cpu.append(cpu_used)
                sizes.append(len(response.content))
                counts.append(len(body["records"]))
    return Run(durations, cpu, sizes, counts)


async def run(args: argparse.Namespace) -> None:
    """Seed one database, then measure each format on it."""
    formats = FORMATS if args.format == "all" else tuple(args.format.split(","))
    async with scratch_database(args.backend) as url:
        started = time.perf_counter()
        if args.data == "mixed":
            token = await seed_mixed(url, args.events)
            seeded = f"{args.events:,} feedback events (mixed)"
        else:
            token = await seed(url, args.turns, conversations=200)
            seeded = f"{args.turns:,} turns"
        print(f"{args.backend}: seeded {seeded} in {time.perf_counter() - started:.1f} s")
        compare = None if args.compare is None else args.compare.resolve()
        for fmt in formats:
            await measure_format(url, token, fmt, args, compare)


async def measure_format(
    url: str, token: str, fmt: str, args: argparse.Namespace, compare: Path | None
) -> None:
    """``args.runs`` runs of each side on format ``fmt``, alternating, and their report."""
    pages, limit, runs = args.pages, args.limit, args.runs
    sides: dict[str, tuple[Path, str]] = {}
    passes = args.passes.split(",")
    if compare is not None:
        if set(passes) - {"ahead"}:
            sides[str(compare)] = (compare, "default")
        if "ahead" in passes:
            sides[f"{compare} ahead"] = (compare, "keep")
    for name in passes:
        sides[name] = (_ROOT, "build" if name == "built" else "keep")
    results: dict[str, list[Run]] = {side: [] for side in sides}
    for number in range(runs):
        for side, (root, keep) in sides.items():
            if side == "first":
                await forget_kept_records(url)
            ahead = side == "ahead" or side.endswith(" ahead")
            if ahead and (number == 0 or "first" in sides or compare is not None):
                # Each checkout builds with its own code (the build keys differ).
                await asyncio.to_thread(build_ahead, root, url, fmt)
            if side == "kept" or ahead:
                await analyze_kept_records(url)
            port = _free_port()
            server = serve(root, url, port, keep)
            try:
                result = await asyncio.to_thread(
                    measure, port, server.pid, token, fmt, pages, limit
                )
            finally:
                server.terminate()
                server.wait()
            results[side].append(result)
            print(
                f"{fmt} run {number + 1} {side}: {summary(result.durations)}; "
                f"server CPU {summary(result.cpu)}",
                flush=True,
            )
    first = next(iter(results.values()))[0]
    print(
        f"{fmt}: {min(first.counts):,} to {max(first.counts):,} records a page, "
        f"{sum(first.sizes) / len(first.sizes) / 1e6:.1f} MB a page"
    )
    for side, side_runs in results.items():
        p50 = [statistics.median(r.durations) * 1000 for r in side_runs]
        p99 = [percentile([d * 1000 for d in r.durations], 99) for r in side_runs]
        cpu = [statistics.median(r.cpu) * 1000 for r in side_runs]
        print(
            f"{side}: GET /v1/corrections limit={limit}, median of {len(side_runs)} runs: "
            f"p50 {statistics.median(p50):.1f} ms, p99 {statistics.median(p99):.1f} ms "
            f"(per run {', '.join(f'{v:.0f}' for v in p99)}), "
            f"server CPU p50 {statistics.median(cpu):.0f} ms (10 ms ticks)"
        )


def build_ahead(root: Path, url: str, fmt: str) -> None:
    """Delete every kept record and build ``fmt``'s records of every turn ahead with the code of
    the checkout at ``root``, timed."""
    subprocess.run(
        [sys.executable, "-c", _BUILD_AHEAD, url, fmt, SECRET.decode()],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--limit", type=int, default=10_000)
    parser.add_argument("--format", default="trl-sft", help="a format, a comma list, or all")
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--runs", type=int, default=1, help="runs of each side")
    parser.add_argument(
        "--compare", type=Path, help="another checkout to serve too, alternating run by run"
    )
    parser.add_argument(
        "--data", choices=("mixed", "uniform"), default="mixed", help="the queue seeded"
    )
    parser.add_argument("--events", type=int, default=400_000, help="with --data mixed")
    parser.add_argument("--turns", type=int, default=60_000, help="with --data uniform")
    parser.add_argument(
        "--passes", default="built,first,kept", help="of this checkout, in this order"
    )
    args = parser.parse_args()
    unknown = sorted(set(args.passes.split(",")) - {"built", "first", "kept", "ahead"})
    if unknown:
        parser.error(f"unknown pass {', '.join(unknown)}: choose from built, first, kept, ahead")
    if args.format != "all":
        unknown = sorted(set(args.format.split(",")) - set(FORMATS))
        if unknown:
            parser.error(f"unknown format {', '.join(unknown)}: choose from {', '.join(FORMATS)}")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
