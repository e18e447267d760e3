"""Answering users: DMs, mentions, replies to the bot, and channels bound to a persona."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.discord_transport.cogs.conversation.cog import Conversation

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot


async def setup(bot: GreenroomBot) -> None:
    await bot.add_cog(Conversation(bot))
