"""What the bot remembers about you: see it, erase it, or pin something to remember.

A user only ever sees or erases their own data: the commands take no user argument.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_transport.cogs.conversation.cog import channel_key
from bot.discord_transport.errors import UserFacingError, reply_error

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot

__all__ = ["MemoryCommands", "Remember"]

_log = logging.getLogger(__name__)

#: Longest text ``/remember`` takes (the memory store's own bound on one memory).
REMEMBER_LIMIT = 1000


def _user_id(interaction: discord.Interaction) -> str:
    return f"discord:{interaction.user.id}"


class MemoryCommands(commands.GroupCog, group_name="memory"):
    """``/memory show`` and ``/memory forget``."""

    def __init__(self, bot: GreenroomBot) -> None:
        self.bot = bot
        super().__init__()

    def _memory(self):  # -> MemoryPort
        memory = self.bot.engine.memory
        if memory is None:
            raise UserFacingError("Memory is switched off on this bot; nothing is remembered.")
        return memory

    @app_commands.command(name="show", description="See what the bot remembers about you.")
    async def show(self, interaction: discord.Interaction) -> None:
        memory = self._memory()
        await interaction.response.defer(ephemeral=True, thinking=True)
        records = await memory.show_user(user_id=_user_id(interaction))
        if not records:
            await interaction.followup.send("I don't remember anything about you.", ephemeral=True)
            return
        lines = [f"- [{r.persona}] ({r.kind}) {r.text}" for r in records]
        text = "What I remember about you:\n" + "\n".join(lines)
        if len(text) > 2000:
            text = text[:1950].rsplit("\n", 1)[0] + f"\n… and {len(lines)} memories in all."
        await interaction.followup.send(text, ephemeral=True)

    @app_commands.command(
        name="forget", description="Erase everything the bot remembers about you."
    )
    async def forget(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        removed = await self.bot.engine.delete_data_for_user(
            requester="user", user_id=_user_id(interaction)
        )
        _log.info("user %s erased their data (%d items)", interaction.user.id, removed)
        await interaction.followup.send(
            f"Done: I erased {removed} stored items about you, across every persona.",
            ephemeral=True,
        )

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await reply_error(interaction, error)


class Remember(commands.Cog):
    """``/remember <text>``: pin a memory with this channel's persona."""

    def __init__(self, bot: GreenroomBot) -> None:
        self.bot = bot

    @app_commands.command(name="remember", description="Ask the persona to remember something.")
    @app_commands.describe(text="What to remember (up to 1,000 characters)")
    async def remember(
        self,
        interaction: discord.Interaction,
        text: app_commands.Range[str, 1, REMEMBER_LIMIT],
    ) -> None:
        memory = self.bot.engine.memory
        if memory is None:
            raise UserFacingError("Memory is switched off on this bot; nothing is remembered.")
        from memory import MemoryInputError

        bound = await self.bot.channels.persona_for(channel_key(interaction.channel))  # type: ignore[arg-type]
        persona = bound or self.bot.settings.default_persona
        try:
            await memory.pin(
                persona=persona, user_id=_user_id(interaction), text=text, source="user"
            )
        except MemoryInputError as error:
            raise UserFacingError(str(error)) from None
        await interaction.response.send_message(
            f"**{persona}** will remember that.", ephemeral=True
        )

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await reply_error(interaction, error)
