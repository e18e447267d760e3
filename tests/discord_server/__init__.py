"""A Discord-compatible test server (REST API v10 and gateway) for the real discord.py client.

Typical use::

    async with DiscordTestServer() as server:
        guild = server.add_guild("Stage")
        channel = server.add_channel(guild, "general")
        with point_discord_py_at(server):
            ...  # start a discord.py client with server.bot_token
"""

from __future__ import annotations

from .fixtures import discord_server, point_discord_py_at
from .gateway import GatewayFrame, Opcode
from .models import Channel, ChannelType, Guild, Member, Permission, Role, User, Webhook
from .server import DiscordTestServer, Fault, InteractionRecord, RecordedRequest

__all__ = (
    "Channel",
    "ChannelType",
    "DiscordTestServer",
    "Fault",
    "GatewayFrame",
    "Guild",
    "InteractionRecord",
    "Member",
    "Opcode",
    "Permission",
    "RecordedRequest",
    "Role",
    "User",
    "Webhook",
    "discord_server",
    "point_discord_py_at",
)
