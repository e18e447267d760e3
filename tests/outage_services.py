"""Dependencies that a test (or a benchmark) owns and can stop: a PostgreSQL cluster, a Chroma
server and an OpenAI-compatible model endpoint.

Each one runs in this machine's loopback only, on a free port, with its files in a temporary
folder, and is stopped and removed by its context manager. Nothing here downloads anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

__all__ = [
    "ChromaServer",
    "FakeOpenAIEndpoint",
    "PgCluster",
    "free_port",
    "pg_tools_missing",
]

_log = logging.getLogger(__name__)

_PG_USER = "postgres"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (it may be taken before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(versions[-1]) if versions else None


def pg_tools_missing() -> str | None:
    """Why a private PostgreSQL cluster cannot be started here, or ``None`` when it can."""
    for tool in ("initdb", "pg_ctl"):
        if _pg_binary(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(_PG_USER)
        except KeyError:
            return "running as root and there is no postgres OS user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


class PgCluster:
    """A PostgreSQL cluster of a test's own: ``initdb`` in a temp folder, trust auth, listening
    on 127.0.0.1 at a free port. :meth:`stop` and :meth:`start` make outages.

    As root the server runs as the ``postgres`` OS user (PostgreSQL refuses to run as root).
    """

    def __init__(self, root: Path | None = None) -> None:
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="greenroom-pg-")) if root is None else root
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.running = False

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the ``greenroom`` database."""
        return f"postgresql+asyncpg://{_PG_USER}@127.0.0.1:{self.port}/greenroom"

    @property
    def dsn(self) -> str:
        """The asyncpg DSN of the ``greenroom`` database."""
        return f"postgresql://{_PG_USER}@127.0.0.1:{self.port}/greenroom"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", _PG_USER, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        """``initdb`` (trust auth) and create the ``greenroom`` database."""
        if os.geteuid() == 0:
            shutil.chown(self.root, user=_PG_USER)
            self.root.chmod(0o700)
        initdb = _pg_binary("initdb")
        assert initdb is not None
        self._run(
            initdb,
            "-D",
            str(self.data),
            "-U",
            _PG_USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        self.start()
        createdb = _pg_binary("createdb")
        if createdb is not None:
            self._run(
                createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", _PG_USER, "greenroom"
            )
        else:  # pragma: no cover - createdb ships with initdb
            asyncio.run(self._createdb())

    async def _createdb(self) -> None:
        import asyncpg

        connection = await asyncpg.connect(
            f"postgresql://{_PG_USER}@127.0.0.1:{self.port}/postgres"
        )
        try:
            await connection.execute("CREATE DATABASE greenroom")
        finally:
            await connection.close()

    def create_database(self, name: str) -> str:
        """Create database ``name`` (letters, digits, underscores); returns its SQLAlchemy URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"not a plain database name: {name!r}")
        createdb = _pg_binary("createdb")
        assert createdb is not None
        self._run(createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", _PG_USER, name)
        return f"postgresql+asyncpg://{_PG_USER}@127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        pg_ctl = _pg_binary("pg_ctl")
        assert pg_ctl is not None
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c full_page_writes=off -c max_connections=50"
        )
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        self.running = True

    def stop(self, mode: Literal["fast", "immediate", "smart"] = "fast") -> None:
        """Stop the server (``fast``: disconnect clients, then shut down)."""
        pg_ctl = _pg_binary("pg_ctl")
        assert pg_ctl is not None
        self._run(pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop", check=self.running)
        self.running = False

    def destroy(self) -> None:
        """Stop the server if it runs and remove its files."""
        if self.data.exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.stop("immediate")
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    @classmethod
    @contextlib.contextmanager
    def running_cluster(cls) -> Iterator[PgCluster]:
        """A fresh cluster for the ``with`` block, removed afterwards."""
        cluster = cls()
        try:
            cluster.init()
            yield cluster
        finally:
            cluster.destroy()


class ChromaServer:
    """``chroma run`` from the installed chromadb, on a free port with its data in ``path``.

    :meth:`kill` ends it abruptly (SIGKILL); :meth:`start` brings it back on the same port and
    data, as a restarted server would be.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.port = free_port()
        self.host = "127.0.0.1"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = path.parent / f"chroma-{self.port}.log"

    @staticmethod
    def command() -> list[str] | None:
        """How to start a Chroma server here, or ``None`` when chromadb has no server CLI."""
        beside = Path(sys.executable).with_name("chroma")
        if beside.exists():
            return [str(beside)]
        found = shutil.which("chroma")
        return [found] if found else None

    def start(self, *, timeout_s: float = 30.0) -> None:
        """Start the server and wait for its heartbeat."""
        command = self.command()
        if command is None:
            raise RuntimeError("the chroma command is not installed")
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", "CHROMA_TELEMETRY": "False"}
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    *command,
                    "run",
                    "--path",
                    str(self.path),
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"chroma exited with {self._process.returncode}: see {self._log}"
                )
            if self.alive():
                return
            time.sleep(0.1)
        raise RuntimeError(f"chroma did not answer within {timeout_s:g} s: see {self._log}")

    def alive(self) -> bool:
        """Whether the server answers its heartbeat now."""
        import urllib.request

        url = f"http://{self.host}:{self.port}/api/v2/heartbeat"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """End the server at once (SIGKILL to its process group) and wait for it."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        self._process = None

    @classmethod
    @contextlib.contextmanager
    def running_server(cls, path: Path) -> Iterator[ChromaServer]:
        """A started server for the ``with`` block, killed afterwards."""
        server = cls(path)
        try:
            server.start()
            yield server
        finally:
            server.kill()


@dataclass
class FakeOpenAIEndpoint:
    """An OpenAI-compatible ``/v1/chat/completions`` on loopback whose behaviour a test sets.

    ``mode``: ``ok`` streams ``reply`` (or echoes the last user line), ``error`` answers 500,
    ``hang`` never answers (until the mode changes or the server stops), ``down`` closes the
    listening socket (connection refused) until :meth:`set_mode` brings it back.
    """

    reply: str | None = None
    mode: Literal["ok", "error", "hang", "down"] = "ok"
    port: int = field(default_factory=free_port)
    calls: int = 0
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def base_url(self) -> str:
        """The ``base_url`` to give the OpenAI client."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        """Start serving on :attr:`port`."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def stop(self) -> None:
        """Stop serving (requests that hang are let go)."""
        self._changed.set()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._site = None

    async def set_mode(self, mode: Literal["ok", "error", "hang", "down"]) -> None:
        """Change the behaviour; ``down`` stops listening, any other mode listens again."""
        previous, self.mode = self.mode, mode
        self._changed.set()
        self._changed = asyncio.Event()
        if mode == "down" and previous != "down" and self._site is not None:
            await self._site.stop()
            self._site = None
        elif mode != "down" and self._site is None and self._runner is not None:
            await self._listen()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[FakeOpenAIEndpoint]:
        """Serve for the ``async with`` block."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        body = await request.json()
        if self.mode == "hang":
            changed = self._changed
            with contextlib.suppress(asyncio.CancelledError):
                await changed.wait()
            raise web.HTTPServiceUnavailable(text="hung request released")
        if self.mode in ("error", "down"):
            return web.json_response(
                {"error": {"message": "the model server failed", "type": "server_error"}},
                status=500,
            )
        last_user = next(
            (m["content"] for m in reversed(body.get("messages", [])) if m["role"] == "user"), ""
        )
        text = self.reply if self.reply is not None else f"Endpoint says: {last_user}"
        model = body.get("model", "fake")
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        def chunk(delta: dict[str, str], finish: str | None) -> bytes:
            payload = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(payload)}\n\n".encode()

        await response.write(chunk({"role": "assistant", "content": ""}, None))
        for index, word in enumerate(text.split(" ")):
            await response.write(chunk({"content": word if index == 0 else " " + word}, None))
        await response.write(chunk({}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
