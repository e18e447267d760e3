"""``/help``: what the bot does and which commands exist."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot

__all__ = ["HELP_TEXT", "Help"]

HELP_TEXT = """\
**Greenroom** personas answer in DMs, when mentioned, when you reply to them, and in channels \
bound to a persona. Human actors may review replies to keep each character true.
`/persona list` · `/persona show NAME`
`/persona bind NAME` · `/persona unbind` (server managers)
`/remember TEXT` pins something for the persona to remember
`/memory show` shows what is remembered about you · `/memory forget` erases it all
`/consent on|off` whether your chats may be used to train the personas"""


class Help(commands.Cog):
    def __init__(self, bot: GreenroomBot) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="What Greenroom does and how to use it.")
    async def help(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(HELP_TEXT, ephemeral=True)
