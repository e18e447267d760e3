"""``/healthz``: the running bot's dependencies as JSON, for probes and ``greenroom status``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.discord_transport.cogs.health.cog import Health

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot

__all__ = ["Health", "setup"]


async def setup(bot: GreenroomBot) -> None:
    await bot.add_cog(Health(bot))
