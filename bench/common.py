"""Helpers shared by the benchmark scripts: percentiles, throwaway databases, and the
environment of a bot process on the loopback Discord server."""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from tests.discord_server import DiscordTestServer

__all__ = [
    "POSTGRES_ADMIN_DSN",
    "cpu_seconds",
    "loopback_bot_environment",
    "percentile",
    "scratch_database",
    "summary",
]

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


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
