"""Helpers shared by the benchmark scripts: verdicts on targets and correctness checks,
percentiles, throwaway databases, copying a generated queue into PostgreSQL, and the environment
of a bot process on the loopback Discord server."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import asyncpg

from feedback.database import create_engine, migrate

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from tests.discord_server import DiscordTestServer

__all__ = [
    "POSTGRES_ADMIN_DSN",
    "Verdicts",
    "copy_to_postgres",
    "cpu_seconds",
    "loopback_bot_environment",
    "percentile",
    "scratch_database",
    "summary",
]

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


class Verdicts:
    """A benchmark's verdicts: each target beside its figure, and its correctness checks.

    A missed target prints MISS and leaves the exit code alone (timings depend on the machine);
    a failed check prints a FAIL line naming what failed and makes :meth:`exit` exit 1."""

    def __init__(self) -> None:
        self.checks = 0
        self.failures: list[str] = []

    def target(self, name: str, figure: str, target: str, met: bool) -> bool:
        """Print ``name: figure (target target): PASS|MISS``; return ``met``."""
        print(f"{name}: {figure} (target {target}): {'PASS' if met else 'MISS'}", flush=True)
        return met

    def check(self, ok: bool, failure: str) -> bool:
        """A correctness check; when not ``ok``, print ``FAIL failure`` and remember it."""
        self.checks += 1
        if not ok:
            self.failures.append(failure)
            print(f"FAIL {failure}", flush=True)
        return ok

    def exit(self) -> NoReturn:
        """Print the correctness verdict and exit: 1 when a check failed, else 0."""
        failed = len(self.failures)
        verdict = f"FAIL ({failed} of {self.checks} failed)" if failed else "PASS"
        print(f"correctness: {self.checks} checks: {verdict}", flush=True)
        sys.exit(1 if failed else 0)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary(values_s: Sequence[float]) -> str:
    """``p50 … ms, p99 … ms, mean … ms (n=…)`` for durations in seconds."""
    ms = [v * 1000 for v in values_s]
    return (
        f"p50 {statistics.median(ms):.2f} ms, p99 {percentile(ms, 99):.2f} ms, "
        f"mean {statistics.fmean(ms):.2f} ms (n={len(ms)})"
    )


@contextlib.asynccontextmanager
async def scratch_database(backend: str) -> AsyncIterator[str]:
    """A throwaway database URL: a temp SQLite file, or a new database on the local PostgreSQL."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite+aiosqlite:///{Path(folder) / 'bench.sqlite3'}"
        return
    name = f"greenroom_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield (
            POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            + f"/{name}"
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def loopback_bot_environment(
    server: DiscordTestServer, url: str, folder: Path, **settings: str
) -> dict[str, str]:
    """The environment of a ``greenroom run`` process under benchmark: this one's, without its
    ``GREENROOM_*`` variables, pointed at the loopback Discord ``server``, the database ``url``
    and the data ``folder``, with the instant fake model, no memory, no webhooks and no
    cooldown; ``settings`` add or override variables."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    environment.update(
        DISCORD_TOKEN=server.bot_token,
        GREENROOM_DISCORD__API_BASE=server.api_base,
        GREENROOM_DISCORD__COOLDOWN_MESSAGES="1000",
        GREENROOM_DISCORD__USE_WEBHOOKS="false",
        GREENROOM_MODEL__PROVIDER="fake",
        GREENROOM_MEMORY__ENABLED="false",
        GREENROOM_DATABASE_URL=url,
        GREENROOM_DATA_DIR=str(folder),
        **settings,
    )
    return environment


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used (Linux ``/proc``): a per-item cost that
    does not depend on what else the machine is doing (0 when it has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` of a process and of its live child processes (a server's helpers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return cpu_seconds(pid) + sum(tree_cpu_seconds(int(child)) for child in children)


#: Tables copied to PostgreSQL, in foreign-key order, with the columns the generator fills and
#: how to turn SQLite's values into PostgreSQL's (booleans are 0/1 in SQLite).
_COPIED_TABLES: list[tuple[str, tuple[str, ...], dict[str, type]]] = [
    ("conversations", ("id", "transport", "scope", "persona"), {}),
    ("user_privacy", ("user_id", "consent"), {"consent": bool}),
    (
        "prompt_snapshots",
        ("id", "messages", "persona", "persona_version", "memories", "model_name", "params"),
        {},
    ),
    (
        "messages",
        (
            "id",
            "conversation_id",
            "parent_id",
            "role",
            "origin",
            "author_id",
            "author_name",
            "content",
            "state",
            "prompt_snapshot_id",
            "flags",
            "decided_by",
        ),
        {},
    ),
    (
        "feedback_events",
        (
            "id",
            "kind",
            "actor_id",
            "conversation_id",
            "candidate_id",
            "result_id",
            "persona",
            "rating",
            "tags",
            "original_text",
            "new_text",
        ),
        {},
    ),
]


async def copy_to_postgres(source: Path, url: str) -> None:
    """Copy the generated SQLite queue into the migrated PostgreSQL database at ``url``."""
    engine = create_engine(url)
    await migrate(engine)
    await engine.dispose()
    target = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    db = sqlite3.connect(source)
    try:
        # Without foreign-key checks: the copy is whole and consistent.
        await target.execute("SET session_replication_role = replica")
        for table, columns, convert in _COPIED_TABLES:
            cursor = db.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY 1")
            indexes = [(columns.index(name), kind) for name, kind in convert.items()]
            while chunk := cursor.fetchmany(50_000):
                if indexes:
                    rows = [list(row) for row in chunk]
                    for row in rows:
                        for index, kind in indexes:
                            if row[index] is not None:
                                row[index] = kind(row[index])
                    chunk = rows
                await target.copy_records_to_table(table, records=chunk, columns=columns)
            if "id" in columns:
                await target.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT coalesce(max(id), 1) FROM {table}))"
                )
        await target.execute("SET session_replication_role = DEFAULT")
        await target.execute("ANALYZE")
    finally:
        db.close()
        await target.close()
