"""Export throughput and peak memory over a large correction queue (SQLite and PostgreSQL).

Builds a queue of N feedback events with bulk inserts (DM conversations with consent; per user
turn: approve 35%, rewrite 20%, regenerate then approve 10%, ratings by 1-3 actors 35%; prompt
snapshots of a ~250-character system prompt plus up to 6 history messages) into a SQLite file,
and for ``--backend postgresql`` copies it into a scratch database on the local server
(``COPY``, then ``ANALYZE`` as autovacuum would). Then runs each export format in a fresh
subprocess and reports, per format: output records/s, queue events/s (the N events divided by
the export's time), the CPU seconds of the process and of the export's helper process (all
threads; steadier than wall time on a shared machine), and the peak RSS of each (``VmHWM``;
``ru_maxrss`` of the helper, 0 when the export ran without one).

Each format runs three passes, side by side: ``built`` builds every record and keeps none (the
path of a filtered export, and of every export before records were kept), ``first`` starts
with no kept record (they are deleted first), builds them all and keeps them, and ``kept`` serves
the kept ones (see :mod:`feedback.exports.cache`). On PostgreSQL the ``kept`` pass starts with
``ANALYZE turn_records``, as autovacuum would within a minute of ``first`` filling it: without
statistics the planner reads each kept body with a bitmap scan, and the pass took 2-7x longer.
``same`` says whether the pass's file is byte for byte the ``built`` one; ``kept MB`` is the
size of the kept records of the format.

With ``--ahead`` the formats' records are then built ahead, as ``greenroom api``'s builder does
as turns change (:mod:`feedback.exports.ahead`): all kept rows are deleted, every turn is queued
and one process builds every kind of the formats from one read of each turn (its line reports
the turns, the records of all kinds, time, CPU and RSS). Each format then runs an ``ahead``
pass: the export a trainer runs after the builder kept up, served from the builder's rows.
Targets: >= 50,000 records/s, peak RSS < 300 MB, flat from 100k to 1M events.

    .venv/bin/python bench/bench_export.py [--sizes 100000,1000000] [--formats all]
        [--backend sqlite|postgresql] [--keep DIR] [--passes built,first,kept] [--ahead]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    analyze_kept_records,
    build_everything_ahead,
    copy_to_postgres,
    forget_kept_records,
    scratch_database,
)
from feedback.database import create_engine, migrate
from feedback.exports import FORMATS, ExportFilter, export_to_file
from feedback.exports.tree import DEFAULT_BATCH_SIZE

_SYSTEM = (
    "You are Marlowe, a weary private detective in a rain-soaked city. Speak in short, dry "
    "sentences. Never break character, never mention being an AI. Keep replies under three "
    "sentences unless asked for a story. The user's name is {user}."
)
_LINES = [
    "Where were you last night?",
    "The rain never stops in this town.",
    "Mail me at someone{n}@example.com if you find anything.",
    "I paid 40 dollars for that hat in 1998.",
    "Call me on 555-123-{n:04d} after nine.",
    "Nobody walks into my office by accident.",
    "Tell me about the case, <@{n}>.",
    "She had the kind of smile that costs money.",
]
_USERS = 2000
_ACTORS = 12
_HISTORY = 6


def _generate(path: Path, events_wanted: int, seed: int = 1) -> dict[str, int]:
    """Fill the migrated SQLite file at ``path`` with about ``events_wanted`` events."""
    rnd = random.Random(seed)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.executemany(
        "INSERT INTO conversations (id, transport, scope, persona) VALUES (?, 'discord', ?, ?)",
        [(u + 1, f"dm:{u}", "Marlowe" if u % 3 else "Vesper") for u in range(_USERS)],
    )
    db.executemany(
        "INSERT INTO user_privacy (user_id, consent) VALUES (?, 1)",
        [(f"discord:{u}",) for u in range(_USERS)],
    )
    history: list[list[tuple[str, str]]] = [[] for _ in range(_USERS)]
    last_sent: list[int | None] = [None] * _USERS
    node_id = snapshot_id = event_id = 0
    messages: list[tuple] = []
    snapshots: list[tuple] = []
    events: list[tuple] = []
    counts = {"turns": 0, "events": 0, "messages": 0, "snapshots": 0}

    def flush() -> None:
        db.executemany(
            "INSERT INTO prompt_snapshots (id, messages, persona, persona_version, memories, "
            "model_name, params) VALUES (?, ?, ?, 'v1', '[]', 'fake', '{}')",
            snapshots,
        )
        db.executemany(
            "INSERT INTO messages (id, conversation_id, parent_id, role, origin, author_id, "
            "author_name, content, state, prompt_snapshot_id, flags, decided_by) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '[]', ?)",
            messages,
        )
        db.executemany(
            "INSERT INTO feedback_events (id, kind, actor_id, conversation_id, candidate_id, "
            "result_id, persona, rating, tags, original_text, new_text) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            events,
        )
        counts["messages"] += len(messages)
        counts["snapshots"] += len(snapshots)
        messages.clear()
        snapshots.clear()
        events.clear()

    def snapshot(user: int, persona: str) -> int:
        nonlocal snapshot_id
        snapshot_id += 1
        prompt = [{"role": "system", "content": _SYSTEM.format(user=f"user{user}")}]
        prompt += [{"role": role, "content": text} for role, text in history[user][-_HISTORY:]]
        snapshots.append((snapshot_id, json.dumps(prompt), persona))
        return snapshot_id

    while counts["events"] < events_wanted:
        user = rnd.randrange(_USERS)
        conversation = user + 1
        persona = "Marlowe" if user % 3 else "Vesper"
        text = rnd.choice(_LINES).format(n=rnd.randrange(10000))
        node_id += 1
        turn = node_id
        messages.append(
            (
                turn,
                conversation,
                last_sent[user],
                "user",
                "user",
                f"discord:{user}",
                f"user{user}",
                text,
                "answered",
                None,
                None,
            )
        )
        history[user].append(("user", text))
        snap = snapshot(user, persona)
        node_id += 1
        candidate = node_id
        reply = rnd.choice(_LINES).format(n=rnd.randrange(10000))
        action = rnd.random()
        actor = f"discord:9{rnd.randrange(_ACTORS):03d}"

        def event(
            kind: str,
            target: int,
            result: int | None = None,
            rating: int | None = None,
            tags: str = "[]",
            who: str = actor,
            conversation: int = conversation,
            persona: str = persona,
        ) -> None:
            nonlocal event_id
            event_id += 1
            events.append(
                (
                    event_id,
                    kind,
                    who,
                    conversation,
                    target,
                    result,
                    persona,
                    rating,
                    tags,
                    None,
                    None,
                )
            )

        def reply_row(
            node: int,
            origin: str,
            author: str,
            text: str,
            state: str,
            prompt: int,
            decided: str | None,
            conversation: int = conversation,
            turn: int = turn,
            persona: str = persona,
        ) -> None:
            row = (node, conversation, turn, "assistant", origin, author, persona, text, state)
            messages.append((*row, prompt, decided))

        sent = candidate
        if action < 0.35:
            reply_row(candidate, "model", f"persona:{persona}", reply, "sent", snap, actor)
            event("approve", candidate)
        elif action < 0.55:
            node_id += 1
            sent = node_id
            reply_row(candidate, "model", f"persona:{persona}", reply, "rejected", snap, actor)
            reply_row(sent, "rewrite", actor, reply + " Kid.", "sent", snap, actor)
            event("rewrite", candidate, sent)
        elif action < 0.65:
            node_id += 1
            sent = node_id
            fresh = snapshot(user, persona)
            reply_row(candidate, "model", f"persona:{persona}", reply, "rejected", snap, actor)
            reply_row(sent, "model", f"persona:{persona}", "Another take.", "sent", fresh, actor)
            event("regenerate", candidate, sent)
            event("approve", sent)
        else:
            reply_row(candidate, "model", f"persona:{persona}", reply, "sent", snap, None)
            for rater in rnd.sample(range(_ACTORS), rnd.randint(1, 3)):
                tags = json.dumps(
                    rnd.sample(["in-character", "funny", "too-long"], rnd.randint(0, 1))
                )
                event(
                    "rate",
                    candidate,
                    rating=rnd.randint(1, 5),
                    tags=tags,
                    who=f"discord:9{rater:03d}",
                )
        history[user].append(("assistant", reply))
        del history[user][:-_HISTORY]
        last_sent[user] = sent
        counts["turns"] += 1
        counts["events"] = event_id
        if len(messages) >= 50_000:
            flush()
    flush()
    db.commit()
    db.close()
    return counts


async def prepare_queue(url: str, path: Path, events: int) -> dict[str, int]:
    """Migrate the SQLite database at ``url`` (the file ``path``) and fill it with the queue."""
    engine = create_engine(url)
    await migrate(engine)
    await engine.dispose()
    return _generate(path, events)


def _peak_rss_mb(usage: resource.struct_rusage) -> float:
    """This process's peak RSS: ``VmHWM`` on Linux (reset by ``exec``, unlike ``ru_maxrss``,
    which keeps the parent's size from before the fork), else ``ru_maxrss``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return usage.ru_maxrss / 1024


#: The passes of each format (see the module docstring).
PASSES = ("built", "first", "kept")


async def _child(url: str, fmt: str, out: Path, mode: str) -> dict[str, Any]:
    from sqlalchemy import func, select

    from feedback.database import session_factory
    from feedback.exports.cache import cache_key
    from feedback.models import TurnRecords

    if mode == "first":
        await forget_kept_records(url)
    if mode in ("kept", "ahead"):
        await analyze_kept_records(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    turns = 0

    def progress(count: int) -> None:
        nonlocal turns
        turns += count

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    counts = await export_to_file(
        sessions,
        fmt,
        ExportFilter(),
        out,
        split=None,
        seed=0,
        pseudonym_secret=b"bench",
        progress=progress,
        batch_size=DEFAULT_BATCH_SIZE,
        keep_records=mode != "built",
    )
    elapsed = time.perf_counter() - started
    key = cache_key(fmt, ExportFilter(), b"bench")
    assert key is not None
    async with sessions() as session:
        kept_bytes = await session.scalar(
            select(func.coalesce(func.sum(func.length(TurnRecords.body)), 0)).where(
                TurnRecords.kind == key.kind
            )
        )
    await engine.dispose()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    helper = resource.getrusage(resource.RUSAGE_CHILDREN)
    records = sum(counts.values())
    return {
        "records": records,
        "turns": turns,
        "seconds": elapsed,
        "records_per_s": records / elapsed,
        "turns_per_s": turns / elapsed,
        "cpu_s": usage.ru_utime
        + usage.ru_stime
        - before.ru_utime
        - before.ru_stime
        + helper.ru_utime
        + helper.ru_stime,
        "peak_rss_mb": _peak_rss_mb(usage),
        # The export's helper process (a large export runs one), 0 when there was none.
        "helper_rss_mb": helper.ru_maxrss / 1024,
        "kept_mb": kept_bytes / 1e6,
    }


async def _build_ahead(url: str, formats: tuple[str, ...]) -> dict[str, Any]:
    """Delete every kept row, queue every turn, and build ``formats`` ahead in this process."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    queued, stats, elapsed = await build_everything_ahead(url, formats, b"bench")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "queued": queued,
        "turns": stats.turns,
        "rows": stats.rows,
        "records": stats.records,
        "seconds": elapsed,
        "cpu_s": usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime,
        "peak_rss_mb": _peak_rss_mb(usage),
    }


def _run_builder(backend: str, size: int, url: str, formats: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, __file__, "--build", url, ",".join(formats)],
        check=True,
        capture_output=True,
        text=True,
    )
    r = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"# {backend} {size} built ahead: {r['turns']:,} turns ({r['queued']:,} queued), "
        f"{r['rows']:,} rows, {r['records']:,} records of {len(formats)} formats in "
        f"{r['seconds']:.1f} s ({r['turns'] / r['seconds']:,.0f} turns/s, "
        f"{r['records'] / r['seconds']:,.0f} records/s; CPU {r['cpu_s']:.1f} s, "
        f"RSS {r['peak_rss_mb']:.0f} MB)",
        flush=True,
    )


def _run_child(url: str, fmt: str, out: Path, mode: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", url, fmt, str(out), mode],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _run_passes(
    backend: str,
    size: int,
    url: str,
    formats: tuple[str, ...],
    folder: Path,
    *,
    keep: bool,
    ahead: bool,
    passes: tuple[str, ...] = PASSES,
) -> None:
    """The passes of each format, then with ``ahead`` the builder and each format's
    ``ahead`` pass (see the module docstring), one line each."""
    built: dict[str, str] = {}

    def run(fmt: str, mode: str) -> None:
        out = folder / f"{fmt}-{size}-{backend}.jsonl"
        result = _run_child(url, fmt, out, mode)
        built.setdefault(fmt, result["sha256"])
        _report(backend, size, fmt, mode, result, same=result["sha256"] == built[fmt])
        if not keep:
            with contextlib.suppress(FileNotFoundError):
                out.unlink()

    for fmt in formats:
        for mode in passes:
            run(fmt, mode)
    if ahead:
        _run_builder(backend, size, url, formats)
        for fmt in formats:
            run(fmt, "ahead")


def _report(backend: str, size: int, fmt: str, mode: str, r: dict[str, Any], same: bool) -> None:
    print(
        f"{backend:>10} {size:>9} {fmt:>10} {mode:>5} {r['turns']:>8.0f} {r['records']:>8.0f} "
        f"{r['seconds']:>6.1f} {r['cpu_s']:>6.1f} {r['records_per_s']:>10,.0f} "
        f"{size / r['seconds']:>9,.0f} {r['records'] / r['cpu_s']:>10,.0f} "
        f"{r['peak_rss_mb']:>7.0f} {r['helper_rss_mb']:>7.0f} {r['bytes'] / 1e6:>8.1f} "
        f"{r['kept_mb']:>7.1f} {'yes' if same else 'NO':>4}",
        flush=True,
    )


async def _postgres_runs(
    source: Path,
    size: int,
    formats: tuple[str, ...],
    folder: Path,
    *,
    keep: bool,
    ahead: bool,
    passes: tuple[str, ...],
) -> None:
    async with scratch_database("postgresql") as url:
        started = time.perf_counter()
        await copy_to_postgres(source, url)
        print(f"# copied to PostgreSQL in {time.perf_counter() - started:.0f} s", flush=True)
        await asyncio.to_thread(
            _run_passes,
            "postgresql",
            size,
            url,
            formats,
            folder,
            keep=keep,
            ahead=ahead,
            passes=passes,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="event counts, comma-separated")
    parser.add_argument("--formats", default="all", help="formats, comma-separated, or all")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="sqlite")
    parser.add_argument("--keep", type=Path, help="keep the databases and files in this folder")
    parser.add_argument("--passes", default=",".join(PASSES), help="of built,first,kept")
    parser.add_argument(
        "--ahead", action="store_true", help="then build ahead and run each format's ahead pass"
    )
    parser.add_argument(
        "--child", nargs=4, metavar=("URL", "FORMAT", "OUT", "PASS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--build", nargs=2, metavar=("URL", "FORMATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        url, names = args.build
        print(json.dumps(asyncio.run(_build_ahead(url, tuple(names.split(","))))))
        return
    if args.child:
        url, fmt, out, mode = args.child
        figures = asyncio.run(_child(url, fmt, Path(out), mode))
        data = Path(out).read_bytes()
        figures["bytes"] = len(data)
        figures["sha256"] = hashlib.sha256(data).hexdigest()
        print(json.dumps(figures))
        return
    formats = FORMATS if args.formats == "all" else tuple(args.formats.split(","))
    passes = tuple(name for name in args.passes.split(",") if name)
    if not set(passes) <= set(PASSES):
        parser.error(f"--passes: of {','.join(PASSES)}")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="greenroom-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    print(
        f"{'backend':>10} {'events':>9} {'format':>10} {'pass':>5} {'turns':>8} {'records':>8} "
        f"{'s':>6} {'CPU s':>6} {'records/s':>10} {'events/s':>9} {'rec/CPU-s':>10} "
        f"{'RSS MB':>7} {'help MB':>7} {'file MB':>8} {'kept MB':>7} {'same':>4}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        path = folder / f"bench-{size}.sqlite3"
        url = f"sqlite+aiosqlite:///{path}"
        if not path.exists():
            started = time.perf_counter()
            counts = asyncio.run(prepare_queue(url, path, size))
            print(
                f"# generated {counts} in {time.perf_counter() - started:.0f} s "
                f"({path.stat().st_size / 1e6:.0f} MB)",
                flush=True,
            )
        keep = bool(args.keep)
        if "sqlite" in backends:
            _run_passes(
                "sqlite", size, url, formats, folder, keep=keep, ahead=args.ahead, passes=passes
            )
        if "postgresql" in backends:
            asyncio.run(
                _postgres_runs(
                    path, size, formats, folder, keep=keep, ahead=args.ahead, passes=passes
                )
            )


if __name__ == "__main__":
    main()
