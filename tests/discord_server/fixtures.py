"""Pytest fixture and the one place where tests point discord.py at the fake server.

discord.py 2.7 takes its REST base from `discord.http.Route.BASE`. A plain `Client` does not
ask `GET /gateway/bot` for the gateway: it connects straight to
`DiscordWebSocket.DEFAULT_GATEWAY` (only `AutoShardedClient` asks), and it falls back to that
address after INVALID_SESSION. So both class attributes are overridden, and restored after.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pytest_asyncio
import yarl

from .server import DiscordTestServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

__all__ = ("discord_server", "point_discord_py_at")


@contextlib.contextmanager
def point_discord_py_at(server: DiscordTestServer) -> Iterator[None]:
    """Send discord.py's REST calls and gateway connections to `server` while inside."""
    import discord.gateway
    import discord.http

    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = server.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(server.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


@pytest_asyncio.fixture
async def discord_server() -> AsyncIterator[DiscordTestServer]:
    """A running fake Discord with small heartbeats, with discord.py pointed at it."""
    server = DiscordTestServer(heartbeat_interval_ms=500)
    await server.start()
    try:
        with point_discord_py_at(server):
            yield server
    finally:
        await server.stop()
