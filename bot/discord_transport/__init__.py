"""The Discord transport: a ``commands.Bot`` that adapts Discord to the conversation engine."""

from __future__ import annotations

from bot.discord_transport.client import GreenroomBot

__all__ = ["GreenroomBot"]
