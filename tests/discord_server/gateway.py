"""The websocket gateway of the fake Discord server (API v10, JSON encoding).

Speaks what discord.py 2.7 expects: HELLO, IDENTIFY then READY and one GUILD_CREATE per
guild, heartbeats, RESUME with replay of missed events by sequence number, INVALID_SESSION,
RECONNECT, and GUILD_MEMBERS_CHUNK for member requests. Transport compression follows the
`compress` query parameter exactly like Discord: `zstd-stream` is one zstd stream per
connection flushed after every message (the client keeps one decompressor for the whole
connection); `zlib-stream` is one zlib stream flushed with Z_SYNC_FLUSH so every message
ends in `00 00 ff ff`. Without `compress` frames are plain text.

Limits: one shard only (a `shard` in IDENTIFY is echoed back, never enforced); ETF
encoding is refused; presences are recorded but never broadcast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import zstandard
from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = (
    "Gateway",
    "GatewayConnection",
    "GatewayFrame",
    "GatewaySession",
    "HeartbeatRequest",
    "Opcode",
)

_log = logging.getLogger(__name__)


class Opcode:
    """Gateway opcodes (Discord API v10)."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class GatewayWorld(Protocol):
    """What the gateway needs from the server that owns it."""

    bot_token: str

    def ready_payload(
        self, session_id: str, resume_url: str, shard: list[int] | None
    ) -> dict[str, Any]: ...

    def guild_create_payloads(self) -> list[dict[str, Any]]: ...

    def member_chunk_payloads(self, request: dict[str, Any]) -> list[dict[str, Any]]: ...

    def notify_waiters(self) -> None: ...


@dataclass(frozen=True)
class GatewayFrame:
    """One gateway payload the server received or sent, with when it happened."""

    direction: str  # "received" or "sent"
    op: int
    data: Any
    event: str | None
    sequence: int | None
    session_id: str | None
    connection_id: int
    received_ns: int = field(default_factory=time.perf_counter_ns)


@dataclass(frozen=True)
class HeartbeatRequest:
    """Heartbeats asked of live sessions: frames from index `mark` on hold the answers, and
    `sequences` the last dispatch sequence sent to each connection (by connection id)."""

    mark: int
    sequences: dict[int, int]


class _Encoder:
    """Turns a JSON text into the bytes (or text) one websocket message carries."""

    def __init__(self, compress: str | None) -> None:
        self.compress = compress
        self._zstd: Any = None
        self._zlib: Any = None
        if compress == "zstd-stream":
            self._zstd = zstandard.ZstdCompressor().compressobj()
        elif compress == "zlib-stream":
            self._zlib = zlib.compressobj()
        elif compress is not None:
            raise ValueError(
                f"unsupported gateway compression {compress!r}: use zstd-stream or zlib-stream"
            )

    def encode(self, text: str) -> bytes | str:
        raw = text.encode()
        if self._zstd is not None:
            return self._zstd.compress(raw) + self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        if self._zlib is not None:
            return self._zlib.compress(raw) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
        return text


class GatewayConnection:
    """One websocket. Frames go out in order through a queue and a single writer task."""

    def __init__(
        self,
        connection_id: int,
        ws: web.WebSocketResponse,
        request: web.Request,
        encoder: _Encoder,
    ) -> None:
        self.id = connection_id
        self.ws = ws
        self.request = request
        self.encoder = encoder
        self.path = request.path
        self.session: GatewaySession | None = None
        self._outgoing: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._writer = asyncio.create_task(
            self._write_loop(), name=f"gateway-writer-{connection_id}"
        )
        self.closed = False

    def send(self, payload: dict[str, Any]) -> None:
        if not self.closed:
            self._outgoing.put_nowait(payload)

    async def _write_loop(self) -> None:
        while True:
            payload = await self._outgoing.get()
            try:
                if payload is None:
                    return
                message = self.encoder.encode(json.dumps(payload, separators=(",", ":")))
                if isinstance(message, bytes):
                    await self.ws.send_bytes(message)
                else:
                    await self.ws.send_str(message)
            except (ConnectionError, RuntimeError):
                return
            finally:
                self._outgoing.task_done()

    async def flush(self) -> None:
        """Wait until every queued frame has been written (or the writer has stopped)."""
        drained = asyncio.ensure_future(self._outgoing.join())
        try:
            await asyncio.wait({drained, self._writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drained.cancel()

    def abort(self) -> None:
        """Kill the TCP connection with no close frame, like a network failure."""
        self.closed = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        self._writer.cancel()

    async def close(self, code: int, message: str = "") -> None:
        self.closed = True
        self._outgoing.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._writer, timeout=1.0)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=code, message=message.encode())

    async def stop_writer(self) -> None:
        self.closed = True
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer


@dataclass(eq=False)
class GatewaySession:
    """A bot session: survives dropped sockets so RESUME can replay what was missed."""

    id: str
    identify: dict[str, Any]
    sequence: int = 0
    buffer: list[dict[str, Any]] = field(default_factory=list)
    connection: GatewayConnection | None = None
    valid: bool = True

    @property
    def intents(self) -> int:
        return int(self.identify.get("intents", 0))


class Gateway:
    """Sessions, connections and the log of every frame in and out."""

    def __init__(
        self,
        world: GatewayWorld,
        *,
        heartbeat_interval_ms: int,
        base_url: Callable[[], str],
        max_buffered_events: int = 10_000,
    ) -> None:
        self._world = world
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._base_url = base_url
        self._max_buffered = max_buffered_events
        self.sessions: dict[str, GatewaySession] = {}
        self.connections: list[GatewayConnection] = []
        self.frames: list[GatewayFrame] = []
        self._next_connection_id = 0

    # -- what tests look at -------------------------------------------------------------

    def received(self, op: int | None = None) -> list[GatewayFrame]:
        """Frames the clients sent, optionally only those with opcode `op`."""
        return [
            frame
            for frame in self.frames
            if frame.direction == "received" and (op is None or frame.op == op)
        ]

    @property
    def live_connections(self) -> list[GatewayConnection]:
        return [connection for connection in self.connections if not connection.closed]

    # -- dispatching ---------------------------------------------------------------------

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a DISPATCH to every valid session; disconnected sessions buffer it for RESUME."""
        for session in self.sessions.values():
            if session.valid:
                self._dispatch_to(session, event, data)

    def _dispatch_to(self, session: GatewaySession, event: str, data: dict[str, Any]) -> None:
        session.sequence += 1
        payload = {"op": Opcode.DISPATCH, "t": event, "s": session.sequence, "d": data}
        session.buffer.append(payload)
        if len(session.buffer) > self._max_buffered:
            del session.buffer[: len(session.buffer) - self._max_buffered]
        if session.connection is not None:
            self._send(session.connection, payload)

    def _send(self, connection: GatewayConnection, payload: dict[str, Any]) -> None:
        session = connection.session
        self.frames.append(
            GatewayFrame(
                direction="sent",
                op=payload["op"],
                data=payload.get("d"),
                event=payload.get("t"),
                sequence=payload.get("s"),
                session_id=session.id if session else None,
                connection_id=connection.id,
            )
        )
        connection.send(payload)

    def request_heartbeats(self) -> HeartbeatRequest:
        """Ask every live session for a heartbeat now (op 1, as Discord may). A client answers
        with the last sequence it read, after reading everything sent before the request."""
        mark = len(self.frames)
        sequences: dict[int, int] = {}
        for connection in self.live_connections:
            if connection.session is not None:
                sequences[connection.id] = connection.session.sequence
                self._send(connection, {"op": Opcode.HEARTBEAT, "d": None})
        return HeartbeatRequest(mark, sequences)

    # -- faults --------------------------------------------------------------------------

    async def drop(self, code: int | None = None) -> int:
        """Drop every live socket: abort the TCP stream (code None) or close with `code`.

        Sessions stay valid so clients can RESUME. Returns how many sockets were dropped.
        """
        dropped = 0
        for connection in self.live_connections:
            self._detach(connection)
            if code is None:
                connection.abort()
            else:
                await connection.close(code)
            dropped += 1
        return dropped

    async def invalidate_sessions(self, *, resumable: bool = False) -> None:
        """Send INVALID_SESSION to every live socket; non-resumable sessions are forgotten."""
        for connection in self.live_connections:
            if connection.session is not None and not resumable:
                connection.session.valid = False
            self._send(connection, {"op": Opcode.INVALID_SESSION, "d": resumable})
        await self._flush_all()

    async def request_reconnect(self) -> None:
        """Send RECONNECT (op 7) to every live socket; clients should RESUME."""
        for connection in self.live_connections:
            self._send(connection, {"op": Opcode.RECONNECT, "d": None})
        await self._flush_all()

    async def _flush_all(self) -> None:
        for connection in self.live_connections:
            await connection.flush()

    async def close(self) -> None:
        for connection in self.live_connections:
            self._detach(connection)
            await connection.close(1001, "server shutting down")

    def _detach(self, connection: GatewayConnection) -> None:
        session = connection.session
        if session is not None and session.connection is connection:
            session.connection = None

    # -- the websocket handler -----------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        version = request.query.get("v", "10")
        encoding = request.query.get("encoding", "json")
        if version != "10":
            raise web.HTTPBadRequest(text=f"this test gateway speaks v=10 only, not v={version}")
        if encoding != "json":
            raise web.HTTPBadRequest(text=f"this test gateway speaks encoding=json, not {encoding}")
        try:
            encoder = _Encoder(request.query.get("compress"))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None

        ws = web.WebSocketResponse(max_msg_size=0, autoclose=False)
        await ws.prepare(request)
        self._next_connection_id += 1
        connection = GatewayConnection(self._next_connection_id, ws, request, encoder)
        self.connections.append(connection)
        self._send(
            connection,
            {"op": Opcode.HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}},
        )
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    payload = json.loads(message.data)
                elif message.type is WSMsgType.BINARY:
                    payload = json.loads(message.data.decode())
                else:
                    break
                await self._received(connection, payload)
                if connection.closed:
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._detach(connection)
            await connection.stop_writer()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close()
            self._world.notify_waiters()
        return ws

    async def _received(self, connection: GatewayConnection, payload: dict[str, Any]) -> None:
        op = payload.get("op")
        data = payload.get("d")
        session = connection.session
        self.frames.append(
            GatewayFrame(
                direction="received",
                op=op if isinstance(op, int) else -1,
                data=data,
                event=None,
                sequence=None,
                session_id=session.id if session else None,
                connection_id=connection.id,
            )
        )
        if op == Opcode.HEARTBEAT:
            self._send(connection, {"op": Opcode.HEARTBEAT_ACK, "d": None})
        elif op == Opcode.IDENTIFY:
            await self._identify(connection, data or {})
        elif op == Opcode.RESUME:
            await self._resume(connection, data or {})
        elif op == Opcode.REQUEST_GUILD_MEMBERS:
            if session is not None:
                for chunk in self._world.member_chunk_payloads(data or {}):
                    self._dispatch_to(session, "GUILD_MEMBERS_CHUNK", chunk)
        elif op in (Opcode.PRESENCE_UPDATE, Opcode.VOICE_STATE_UPDATE):
            pass
        else:
            _log.warning("gateway received unknown opcode %r", op)
            await connection.close(4001, "Unknown opcode.")
        self._world.notify_waiters()

    async def _identify(self, connection: GatewayConnection, data: dict[str, Any]) -> None:
        if connection.session is not None:
            await connection.close(4005, "Already authenticated.")
            return
        if data.get("token") != self._world.bot_token:
            await connection.close(4004, "Authentication failed.")
            return
        session = GatewaySession(id=secrets.token_hex(16), identify=data)
        self.sessions[session.id] = session
        connection.session = session
        session.connection = connection
        resume_url = self._base_url().replace("http://", "ws://", 1) + "/resume-gateway/"
        shard = data.get("shard")
        self._dispatch_to(
            session, "READY", self._world.ready_payload(session.id, resume_url, shard)
        )
        for guild in self._world.guild_create_payloads():
            self._dispatch_to(session, "GUILD_CREATE", guild)

    async def _resume(self, connection: GatewayConnection, data: dict[str, Any]) -> None:
        if data.get("token") != self._world.bot_token:
            await connection.close(4004, "Authentication failed.")
            return
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or not session.valid:
            self._send(connection, {"op": Opcode.INVALID_SESSION, "d": False})
            return
        previous = session.connection
        if previous is not None and previous is not connection:
            # Discord closes the old socket of a resumed session.
            self._detach(previous)
            previous.abort()
        connection.session = session
        session.connection = connection
        last_seen = data.get("seq") or 0
        if session.buffer and last_seen < session.buffer[0]["s"] - 1:
            # Too far behind: the events it missed are no longer kept.
            self._send(connection, {"op": Opcode.INVALID_SESSION, "d": False})
            return
        for payload in session.buffer:
            if payload["s"] > last_seen:
                self._send(connection, payload)
        self._dispatch_to(session, "RESUMED", {"_trace": ["fake-discord"]})
