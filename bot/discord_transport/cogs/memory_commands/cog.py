"""Your data: see or erase what the bot remembers, pin a memory, say whether it may train.

A user only ever sees or erases their own data: the commands take no user argument.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_transport.cogs.conversation.cog import channel_key
from bot.discord_transport.errors import UserFacingError, reply_error
from feedback.privacy import PrivacyStore

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot

__all__ = ["Consent", "MemoryCommands", "Remember"]

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


class Consent(commands.Cog):
    """``/consent on|off``: may this user's turns be used to train models?"""

    def __init__(self, bot: GreenroomBot) -> None:
        self.bot = bot
        self.privacy = PrivacyStore(bot.sessions)

    @app_commands.command(name="consent", description="Allow or refuse training use of your chats.")
    @app_commands.describe(choice="on: your messages may train models; off: never")
    async def consent(self, interaction: discord.Interaction, choice: Literal["on", "off"]) -> None:
        await self.privacy.set_consent(_user_id(interaction), choice == "on")
        text = (
            "Thanks: your conversations may be used to improve the personas."
            if choice == "on"
            else "Done: your conversations will not be used for training."
        )
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(
        name="consent-default", description="Server default for members who have not said."
    )
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.guild_only()
    async def consent_default(
        self, interaction: discord.Interaction, choice: Literal["on", "off"]
    ) -> None:
        if not interaction.permissions.manage_guild:
            raise UserFacingError("Only server managers (Manage Server) can set the default.")
        await self.privacy.set_guild_default(
            f"discord:{interaction.guild_id}", choice == "on", by=_user_id(interaction)
        )
        await interaction.response.send_message(
            f"Members who have not used /consent are now treated as consent {choice}.",
            ephemeral=True,
        )

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await reply_error(interaction, error)
