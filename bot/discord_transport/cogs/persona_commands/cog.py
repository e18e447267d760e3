"""Slash commands to see personas and bind one to a channel.

Binding in a server needs the Manage Server or Manage Channels permission; in a DM the user
binds their own conversation.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_transport.cogs.conversation.cog import channel_key
from bot.discord_transport.errors import UserFacingError, reply_error
from personas import UnknownPersonaError

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot

__all__ = ["PersonaCommands"]

_log = logging.getLogger(__name__)

#: Discord's limit on an embed description.
_EMBED_DESCRIPTION_LIMIT = 4096
_NAME_LIMIT = 64


def _may_bind(interaction: discord.Interaction) -> bool:
    if interaction.guild is None:
        return True
    permissions = interaction.permissions
    return permissions.manage_guild or permissions.manage_channels


class PersonaCommands(commands.GroupCog, group_name="persona"):
    """``/persona ...``: list, show, bind, unbind."""

    def __init__(self, bot: GreenroomBot) -> None:
        self.bot = bot
        super().__init__()

    def _persona(self, name: str):  # -> Persona
        if not name.strip() or len(name) > _NAME_LIMIT:
            raise UserFacingError(f"Give a persona name of 1 to {_NAME_LIMIT} characters.")
        try:
            return self.bot.engine.personas.get(name)
        except UnknownPersonaError as error:
            raise UserFacingError(str(error)) from None

    async def _autocomplete(
        self, _interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = self.bot.engine.personas.names()
        return [
            app_commands.Choice(name=n, value=n) for n in names if current.lower() in n.lower()
        ][:25]

    @app_commands.command(name="list", description="List the personas you can talk with.")
    async def list_(self, interaction: discord.Interaction) -> None:
        lines = []
        for persona in self.bot.engine.personas:
            summary = " ".join(persona.card.data.description.split())[:120]
            lines.append(f"**{persona.name}**: {summary}")
        bound = await self.bot.channels.persona_for(channel_key(interaction.channel))  # type: ignore[arg-type]
        footer = f"\nThis channel is bound to **{bound}**." if bound else ""
        await interaction.response.send_message(("\n".join(lines) + footer)[:2000], ephemeral=True)

    @app_commands.command(name="show", description="Show a persona's card.")
    @app_commands.describe(name="The persona's name")
    async def show(self, interaction: discord.Interaction, name: str) -> None:
        persona = self._persona(name)
        user = interaction.user.display_name
        embed = discord.Embed(
            title=persona.name,
            description=persona.card.data.description[:_EMBED_DESCRIPTION_LIMIT],
        )
        embed.add_field(name="Greeting", value=persona.greeting(user)[:1024], inline=False)
        embed.set_footer(text=f"card {persona.card.spec} · version {persona.version_hash}")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    show.autocomplete("name")(_autocomplete)

    @app_commands.command(name="bind", description="Make a persona answer every message here.")
    @app_commands.describe(name="The persona's name")
    async def bind(self, interaction: discord.Interaction, name: str) -> None:
        if not _may_bind(interaction):
            raise UserFacingError(
                "Only server managers (Manage Server or Manage Channels) can bind personas."
            )
        persona = self._persona(name)
        await self.bot.channels.bind(
            channel_key(interaction.channel),  # type: ignore[arg-type]
            persona=persona.name,
            guild_key=f"discord:{interaction.guild_id}" if interaction.guild_id else None,
            by=f"discord:{interaction.user.id}",
        )
        await interaction.response.send_message(
            f"**{persona.name}** now answers every message in this channel.", ephemeral=True
        )

    bind.autocomplete("name")(_autocomplete)

    @app_commands.command(name="unbind", description="Stop the persona answering every message.")
    async def unbind(self, interaction: discord.Interaction) -> None:
        if not _may_bind(interaction):
            raise UserFacingError(
                "Only server managers (Manage Server or Manage Channels) can unbind personas."
            )
        key = channel_key(interaction.channel)  # type: ignore[arg-type]
        if await self.bot.channels.persona_for(key) is None:
            raise UserFacingError("No persona is bound to this channel.")
        await self.bot.channels.bind(
            key,
            persona=None,
            guild_key=f"discord:{interaction.guild_id}" if interaction.guild_id else None,
            by=f"discord:{interaction.user.id}",
        )
        await interaction.response.send_message(
            "Unbound. Mention me or reply to me to talk here.", ephemeral=True
        )

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await reply_error(interaction, error)
