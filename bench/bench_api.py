"""Trainer API page latency through a real uvicorn: pages of 1,000 records on PostgreSQL.
Targets: p50 <= 150 ms, p99 <= 400 ms.

Seeds :mod:`bench.bench_export`'s queue of ``--events`` feedback events (consenting users;
approvals, rewrites, regenerations and ratings by several actors; prompt snapshots of a system
prompt and up to six history messages) into SQLite, copies it to a scratch PostgreSQL database
(``COPY``, then ``ANALYZE`` as autovacuum would), starts the API in a separate process as
``greenroom api`` runs it (uvicorn on loopback, on its event loop), and pages through
``/v1/corrections?limit=1000`` from the first page to the last, for each format, timing each
request until its body is received, and the server's CPU time per request (from ``/proc``:
steadier than wall time on a shared machine). The first 3 pages of each format are warm-up and
not timed.

Correctness (exit 1): the pages of a format hold every record a dry run counts, no page holds
more than its limit unless it is one turn's records, and the cursors only move forward.

    .venv/bin/python bench/bench_api.py [--events 200000] [--limit 1000] [--format all]
        [--backend postgresql|sqlite]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.bench_export import prepare_queue
from bench.common import copy_to_postgres, percentile, scratch_database, tree_cpu_seconds
from feedback.api.records import decode_cursor
from feedback.database import create_engine, session_factory
from feedback.exports import FORMATS, ExportFilter, dry_run_counts
from feedback.tokens import create_token

SECRET = b"bench-pseudonym-secret-0123456789"
TARGET_P50_MS = 150
TARGET_P99_MS = 400
_ROOT = Path(__file__).resolve().parent.parent

#: The API in its own process, as ``greenroom api`` runs it (its event loop, its collector).
_SERVE = """
import asyncio, sys
import uvicorn
from bot.cli_api import event_loop_factory
from bot.cli_common import quiet_collector
from feedback.api import create_app
from feedback.database import create_engine, session_factory

async def main(url, port, secret):
    engine = create_engine(url)
    app = create_app(session_factory(engine), pseudonym_secret=secret)
    quiet_collector()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    await uvicorn.Server(config).serve()

with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
    runner.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()))
"""


async def seed(url: str, events: int) -> tuple[str, dict[str, int]]:
    """The queue of ``events`` feedback events; a read token and the records per format."""
    if url.startswith("sqlite"):
        await prepare_queue(url, Path(url.split(":///", 1)[1]), events)
    else:  # generated into SQLite, then copied (as bench_export.py does)
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "queue.sqlite3"
            await prepare_queue(f"sqlite+aiosqlite:///{source}", source, events)
            await copy_to_postgres(source, url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    try:
        token = await create_token(sessions, "bench", "read")
        counts = await dry_run_counts(sessions, ExportFilter(), pseudonym_secret=SECRET)
    finally:
        await engine.dispose()
    return token, {fmt: sum(by_persona.values()) for fmt, by_persona in counts.items()}


def serve(url: str, port: int) -> subprocess.Popen[bytes]:
    """Start this checkout's API on ``port``."""
    return subprocess.Popen(
        [sys.executable, "-c", _SERVE, url, str(port), SECRET.decode()],
        cwd=_ROOT,
        env={**os.environ, "PYTHONPATH": str(_ROOT)},
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def measure(port: int, server_pid: int, token: str, fmt: str, limit: int) -> dict[str, object]:
    """Every page of ``fmt``, first to last: timings of all but the warm-up pages, the records
    seen, and what was wrong with the pages."""
    headers = {"Authorization": f"Bearer {token}"}
    durations: list[float] = []
    cpu: list[float] = []
    problems: list[str] = []
    records = 0
    last_key = -1
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
        for _ in range(600):
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        cursor: str | None = None
        number = 0
        while True:
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
            page = body["records"]
            records += len(page)
            if number >= 3:
                durations.append(elapsed)
                cpu.append(cpu_used)
            if body["next_cursor"] is not None:
                key = decode_cursor(body["next_cursor"], fmt)
                if page and key <= last_key:
                    problems.append(f"page {number}: cursor went back to {key}")
                last_key = key
            if len(page) > limit and body["has_more"] and number > 0:
                problems.append(f"page {number}: {len(page)} records, over the limit {limit}")
            number += 1
            if not body["has_more"]:
                break
            cursor = body["next_cursor"]
    return {"durations": durations, "cpu": cpu, "records": records, "problems": problems}


async def run(args: argparse.Namespace) -> int:
    """Seed one database, then page through each format on it; the exit code."""
    formats = FORMATS if args.format == "all" else tuple(args.format.split(","))
    failures: list[str] = []
    async with scratch_database(args.backend) as url:
        started = time.perf_counter()
        token, expected = await seed(url, args.events)
        print(
            f"{args.backend}: seeded {args.events:,} feedback events in "
            f"{time.perf_counter() - started:.1f} s; targets per page of {args.limit:,} "
            f"records: p50 <= {TARGET_P50_MS} ms, p99 <= {TARGET_P99_MS} ms",
            flush=True,
        )
        for fmt in formats:
            if expected[fmt] == 0:
                failures.append(f"{fmt}: the queue gives no records (a dry run counts none)")
                continue
            port = _free_port()
            server = serve(url, port)
            try:
                result = await asyncio.to_thread(measure, port, server.pid, token, fmt, args.limit)
            finally:
                server.terminate()
                server.wait()
            durations = [d * 1000 for d in result["durations"]]  # type: ignore[union-attr]
            cpu = [c * 1000 for c in result["cpu"]]  # type: ignore[union-attr]
            p50, p99 = statistics.median(durations), percentile(durations, 99)
            verdict = "PASS" if p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS else "MISS"
            print(
                f"{fmt:>10}: {len(durations)} pages, p50 {p50:.0f} ms (target {TARGET_P50_MS}), "
                f"p99 {p99:.0f} ms (target {TARGET_P99_MS}), server CPU p50 "
                f"{statistics.median(cpu):.0f} ms; {result['records']:,} records | {verdict}",
                flush=True,
            )
            failures += [f"{fmt} {problem}" for problem in result["problems"]]  # type: ignore[attr-defined]
            if result["records"] != expected[fmt]:
                failures.append(
                    f"{fmt}: pages held {result['records']:,} records, a dry run counts "
                    f"{expected[fmt]:,}"
                )
    for failure in failures:
        print(f"FAIL {failure}")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="feedback events")
    parser.add_argument("--limit", type=int, default=1000, help="records a page")
    parser.add_argument("--format", default="all", help="a format, a comma list, or all")
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()
    if args.format != "all":
        unknown = sorted(set(args.format.split(",")) - set(FORMATS))
        if unknown:
            parser.error(f"unknown format {', '.join(unknown)}: choose from {', '.join(FORMATS)}")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
