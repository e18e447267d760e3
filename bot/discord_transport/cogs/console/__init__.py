"""``/console setup|mode``, rewrite submissions, takeover threads, and resuming holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.discord_transport.cogs.console.cog import Console

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot


async def setup(bot: GreenroomBot) -> None:
    await bot.add_cog(Console(bot))
