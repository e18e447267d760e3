"""The API behind a real uvicorn on a loopback port, the page splitting rule, and the CLI."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn
import uvloop

from bot.cli_api import event_loop_factory
from feedback.api import create_app, records
from feedback.api.records import decode_cursor, page
from feedback.database import session_factory
from feedback.tokens import create_token

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine

GREENROOM = str(Path(sys.executable).with_name("greenroom"))


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])
async def test_real_server_round_trip(db_engine: AsyncEngine) -> None:
    sessions = session_factory(db_engine)
    token = await create_token(sessions, "live", "lease")
    app = create_app(sessions, pseudonym_secret=b"0123456789abcdef0123")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        for _ in range(500):  # up to 5 s for the server to start
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            headers = {"Authorization": f"Bearer {token}"}
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            assert (await client.get("/v1/stats", headers=headers)).json()["total"] == 0
            lease = await client.post("/v1/leases", json={"job": "live"}, headers=headers)
            assert lease.json()["lease_id"] is None
            refused = await client.get("/v1/stats")
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "unauthorized"
    finally:
        server.should_exit = True
        await serving
        listener.close()


async def test_pages_never_split_a_user_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [1, 1, 2, 3, 3, 3, 4]

    async def fake_batches(*_args: Any, after_id: int | None, **_kwargs: Any) -> AsyncIterator[Any]:
        turns: dict[int, list[Any]] = {}
        for n, key in enumerate(keys):
            turns.setdefault(key, []).append({"n": n})
        ahead = [(key, turn) for key, turn in turns.items() if after_id is None or key > after_id]
        for start in range(0, len(ahead), 2):  # two turns a batch
            yield ahead[start : start + 2]

    monkeypatch.setattr(records, "iter_turn_record_batches", fake_batches)

    async def next_page(after: int | None, limit: int) -> tuple[list[int], int | None, bool]:
        sessions: Any = None
        flt: Any = None
        result = await page(
            sessions,
            "trl-dpo",
            flt,
            pseudonym_secret=b"x",
            after=after,
            limit=limit,
        )
        last = None if result.next_cursor is None else decode_cursor(result.next_cursor, "trl-dpo")
        return [r["n"] for r in result.records], last, result.has_more

    assert await next_page(None, 2) == ([0, 1], 1, True)
    assert await next_page(1, 2) == ([2], 2, True)  # turn 3 would overflow: it waits
    assert await next_page(2, 2) == ([3, 4, 5], 3, True)  # one turn larger than the limit
    assert await next_page(3, 2) == ([6], 4, False)
    assert await next_page(4, 2) == ([], 4, False)  # polling at the end echoes the cursor
    assert await next_page(None, 100) == ([0, 1, 2, 3, 4, 5, 6], 4, False)


def _environment(**env: str) -> dict[str, str]:
    """This process's environment without its ``GREENROOM_*`` variables, plus ``env``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    return {**environment, **env}


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GREENROOM, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=_environment(**env),
        timeout=120,
        check=False,
    )


def test_tokens_cli(tmp_path: Path) -> None:
    created = _cli(["tokens", "create", "--name", "ci", "--scope", "lease"], tmp_path)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().startswith("grt_")
    assert "cannot be shown again" in created.stderr
    duplicate = _cli(["tokens", "create", "--name", "ci"], tmp_path)
    assert duplicate.returncode == 2
    assert "already exists" in duplicate.stderr
    assert len(duplicate.stderr.strip().splitlines()) == 1
    bad_scope = _cli(["tokens", "create", "--name", "x", "--scope", "root"], tmp_path)
    assert bad_scope.returncode == 2
    assert "unknown scope 'root'" in bad_scope.stderr
    assert _cli(["tokens", "revoke", "--name", "ci"], tmp_path).returncode == 0
    unknown = _cli(["tokens", "revoke", "--name", "ghost"], tmp_path)
    assert (unknown.returncode, "no token named 'ghost'" in unknown.stderr) == (2, True)
    listed = _cli(["tokens", "list"], tmp_path)
    assert "ci" in listed.stdout
    assert created.stdout.strip() not in listed.stdout


def test_greenroom_api_serves_on_uvloop(tmp_path: Path) -> None:
    assert event_loop_factory() is uvloop.new_event_loop
    env = {
        "GREENROOM_CONFIG": str(tmp_path / "absent.toml"),
        "GREENROOM_DATA_DIR": str(tmp_path / "data"),
        "GREENROOM_PRIVACY__PSEUDONYM_SECRET": "cli-secret-of-16-chars",
    }
    created = _cli(["tokens", "create", "--name", "trainer"], tmp_path, **env)
    assert created.returncode == 0, created.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [GREENROOM, "api", "--port", str(port)],
        cwd=tmp_path,
        env=_environment(**env),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
            for _ in range(600):  # up to 60 s for the process to start
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None, server.communicate()[1]
                time.sleep(0.1)
            page = client.get("/v1/corrections", params={"format": "trl-sft", "limit": 10})
            assert page.status_code == 200, page.text
            assert page.json()["records"] == []
            assert client.get("/v1/stats").json()["total"] == 0
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
    assert "(event loop: uvloop)" in errors
