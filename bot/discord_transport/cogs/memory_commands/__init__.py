"""``/memory show|forget`` and ``/remember``: a user's own memories, answered ephemerally."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.discord_transport.cogs.memory_commands.cog import Consent, MemoryCommands, Remember

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot


async def setup(bot: GreenroomBot) -> None:
    await bot.add_cog(MemoryCommands(bot))
    await bot.add_cog(Remember(bot))
    await bot.add_cog(Consent(bot))
