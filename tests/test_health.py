"""``/healthz`` in the running bot and ``greenroom status`` on the command line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest

from feedback.database import create_engine, migrate
from tests.bot_world import running_bot
from tests.discord_server.fixtures import discord_server
from tests.outage_services import PgCluster, free_port, pg_tools_missing
from tests.test_outages import get_json, say

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine

    from tests.discord_server.server import DiscordTestServer

__all__ = ["discord_server"]

GREENROOM = str(Path(sys.executable).with_name("greenroom"))


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'greenroom.sqlite3'}")
    await migrate(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


def _status(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``greenroom status`` in ``tmp_path`` with only the given ``GREENROOM_`` settings."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    environment.update(
        {
            "GREENROOM_MEMORY__ENABLED": "false",
            "GREENROOM_MODEL__PROVIDER": "fake",
            "HF_HUB_OFFLINE": "1",
            "COLUMNS": "200",
            **env,
        }
    )
    return subprocess.run(
        [GREENROOM, "status"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


async def test_healthz_reports_every_dependency(
    discord_server: DiscordTestServer, sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    port = free_port()
    async with running_bot(discord_server, sqlite_engine, tmp_path, health={"port": port}) as world:
        status, report = await get_json(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and report["status"] == "ok", report
        checks = report["checks"]
        assert checks["database"]["state"] == "ok"
        assert checks["memory"]["state"] == "off"
        assert checks["model"]["state"] == "unknown"  # nothing generated yet
        assert checks["discord"]["state"] == "ok" and checks["discord"]["guilds"] == 1
        dm = world.server.dm_channel_for(world.member)
        say(world, dm, "hello")
        await world.server.wait_for_messages(dm, 1)
        status, report = await get_json(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and report["checks"]["model"]["state"] == "ok"
        assert report["checks"]["model"]["provider"] == world.bot.engine.model._llm_type

        await world.bot.close()
        # The cog is unloaded with the bot: nothing listens any more.
        with pytest.raises(OSError):
            await get_json(f"http://127.0.0.1:{port}/healthz")


async def test_healthz_is_off_without_a_port(
    discord_server: DiscordTestServer, sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with running_bot(discord_server, sqlite_engine, tmp_path) as world:
        cog = world.bot.get_cog("Health")
        assert cog is not None and cog.port is None  # type: ignore[attr-defined]


async def test_status_is_healthy_with_a_running_bot(
    discord_server: DiscordTestServer, sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    port = free_port()
    async with running_bot(discord_server, sqlite_engine, tmp_path, health={"port": port}):
        result = await asyncio.to_thread(
            _status,
            tmp_path,
            GREENROOM_DATA_DIR=str(tmp_path),
            GREENROOM_HEALTH__PORT=str(port),
        )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "ok" in lines["database"] and "schema up to date" in lines["database"]
    assert "ok" in lines["chat model"] and "off" in lines["memory store"]
    assert "ok" in lines["bot"] and "ok" in lines["bot: discord"]


def test_status_says_degraded_when_the_database_is_unreachable(tmp_path: Path) -> None:
    closed = free_port()
    result = _status(
        tmp_path, GREENROOM_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:{closed}/x"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    [database] = [line for line in result.stdout.splitlines() if "│ database" in line]
    assert "degraded" in database
    not_running = [line for line in result.stdout.splitlines() if "│ bot" in line]
    assert not_running and "health.port is not set" in not_running[0]


class _KeylessModels(BaseHTTPRequestHandler):
    """A self-hosted OpenAI-compatible server that wants no key: ``GET /v1/models``."""

    seen_authorization: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        self.seen_authorization.append(self.headers.get("Authorization"))
        body = b'{"object": "list", "data": [{"id": "local-model", "object": "model"}]}'
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_status_calls_a_keyless_self_hosted_endpoint_healthy(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeylessModels)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = _status(
            tmp_path,
            GREENROOM_MODEL__PROVIDER="openai",
            GREENROOM_MODEL__NAME="local-model",
            GREENROOM_MODEL__BASE_URL=f"http://127.0.0.1:{server.server_port}/v1",
            OPENAI_API_KEY="",
        )
    finally:
        server.shutdown()
    [model] = [line for line in result.stdout.splitlines() if "│ chat model" in line]
    assert "ok" in model and "degraded" not in model, result.stdout
    assert _KeylessModels.seen_authorization == [None]


@pytest.mark.postgres
async def test_healthz_and_status_degrade_while_postgres_is_down(
    discord_server: DiscordTestServer, tmp_path: Path
) -> None:
    missing = pg_tools_missing()
    if missing:
        pytest.skip(f"cannot start a private PostgreSQL cluster: {missing}")
    port = free_port()
    with PgCluster.running_cluster() as cluster:
        engine = create_engine(cluster.url)
        await migrate(engine)
        try:
            async with running_bot(discord_server, engine, tmp_path, health={"port": port}):
                await asyncio.to_thread(cluster.stop, "fast")
                status, report = await get_json(f"http://127.0.0.1:{port}/healthz")
                assert status == 503 and report["status"] == "degraded"
                assert report["checks"]["database"]["state"] == "down"
                assert report["checks"]["database"]["last_error"]
                result = await asyncio.to_thread(
                    _status,
                    tmp_path,
                    GREENROOM_DATABASE_URL=cluster.url,
                    GREENROOM_HEALTH__PORT=str(port),
                )
                assert result.returncode == 1, result.stdout + result.stderr
                assert "bot: database" in result.stdout and "degraded" in result.stdout

                await asyncio.to_thread(cluster.start)
                status, report = await get_json(f"http://127.0.0.1:{port}/healthz")
                assert status == 200 and report["checks"]["database"]["state"] == "ok", report
        finally:
            await engine.dispose()
