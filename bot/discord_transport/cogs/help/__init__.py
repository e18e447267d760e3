"""``/help``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.discord_transport.cogs.help.cog import Help

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot


async def setup(bot: GreenroomBot) -> None:
    await bot.add_cog(Help(bot))
