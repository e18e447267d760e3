"""``/persona list|show|bind|unbind``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.discord_transport.cogs.persona_commands.cog import PersonaCommands

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot


async def setup(bot: GreenroomBot) -> None:
    await bot.add_cog(PersonaCommands(bot))
