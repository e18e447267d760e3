"""The actor console's commands and listeners.

``/console setup #channel @role [lead:@role]`` (server managers) names the console channel, the
actors' role and the leads' role; ``/console mode`` sets this channel's moderation mode. Rewrite
and score modals are handled here from the raw interaction, so a modal opened before a restart
still lands after it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_transport.console.items import (
    REWRITE_MODAL_ID,
    handle_rewrite_submit,
    tell_when_database_down,
)
from bot.discord_transport.console.scoring import SCORE_MODAL_ID, handle_score_submit
from bot.discord_transport.console.verdict import VERDICT_ITEMS
from bot.discord_transport.console.view import DYNAMIC_ITEMS
from bot.discord_transport.errors import UserFacingError, reply_error

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot

__all__ = ["Console"]

_log = logging.getLogger(__name__)


def _is_manager(interaction: discord.Interaction) -> bool:
    return interaction.guild is not None and interaction.permissions.manage_guild


class Console(commands.GroupCog, group_name="console"):
    """``/console ...`` and the console's listeners."""

    def __init__(self, bot: GreenroomBot) -> None:
        self.bot = bot
        self._resumed = False
        super().__init__()

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(*DYNAMIC_ITEMS)

    @app_commands.command(name="setup", description="Choose the actor console channel and role.")
    @app_commands.describe(
        channel="Where candidates are shown",
        role="Who may act on them",
        lead="Actors with this role too are leads: they mark gold verdicts (none if left out)",
    )
    async def setup_(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel,
        role: discord.Role,
        lead: discord.Role | None = None,
    ) -> None:
        if not _is_manager(interaction):
            raise UserFacingError("Only server managers (Manage Server) can set up the console.")
        roles = (role, lead) if lead is not None else (role,)
        if channel.guild.id != interaction.guild_id or any(
            r.guild.id != interaction.guild_id for r in roles
        ):
            raise UserFacingError("Pick a channel and roles from this server.")
        await self.bot.desk.guilds.set_console(
            f"discord:{interaction.guild_id}",
            channel_id=str(channel.id),
            actor_role_id=str(role.id),
            lead_role_id=str(lead.id) if lead is not None else None,
            by=f"discord:{interaction.user.id}",
        )
        leads = (
            f"Leads (gold verdicts): actors who also have {lead.mention}."
            if lead is not None
            else "No leads: add `lead:` to let some actors mark gold verdicts."
        )
        if self.bot.desk.settings.staff_guild_id == interaction.guild_id:
            dms = "Direct messages show here too (this server is `console.staff_guild_id`)."
        else:
            dms = (
                "Direct messages are not shown here: to review them in this console, set "
                f"`console.staff_guild_id = {interaction.guild_id}` (environment "
                "`GREENROOM_CONSOLE__STAFF_GUILD_ID`) and restart. Until a console shows them, "
                "an urgent DM reply is replaced by the persona's safety line and help resources."
            )
        await interaction.response.send_message(
            f"Console: {channel.mention}. Actors: members with {role.mention}. {leads}\n{dms}",
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @app_commands.command(name="mode", description="Send replies at once, or hold them for actors.")
    @app_commands.describe(mode="auto, review, or persona (follow the persona's card)")
    async def mode(
        self, interaction: discord.Interaction, mode: Literal["auto", "review", "persona"]
    ) -> None:
        if not _is_manager(interaction):
            raise UserFacingError("Only server managers (Manage Server) can change the mode.")
        await self.bot.channels.set_mode(
            f"discord:{interaction.channel_id}",
            mode=None if mode == "persona" else mode,
            guild_key=f"discord:{interaction.guild_id}",
            by=f"discord:{interaction.user.id}",
        )
        await interaction.response.send_message(
            f"This channel is now in {mode} mode.", ephemeral=True
        )

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await reply_error(interaction, error)

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Rewrite and score submissions, and logging of console ids that match no control."""
        custom_id = str((interaction.data or {}).get("custom_id", ""))
        if not custom_id.startswith("gr:"):
            return
        if interaction.type is discord.InteractionType.modal_submit:
            if match := REWRITE_MODAL_ID.fullmatch(custom_id):
                action = handle_rewrite_submit(interaction, int(match["id"]))
            elif match := SCORE_MODAL_ID.fullmatch(custom_id):
                action = handle_score_submit(
                    interaction, int(match["id"]), match["version"], match["chosen"]
                )
            else:
                _log.warning(
                    "ignored modal with malformed id %r from %s",
                    custom_id[:100],
                    interaction.user.id,
                )
                return
            with self.bot.tracking():
                await tell_when_database_down(interaction, action)
            return
        templates = [
            item.__discord_ui_compiled_template__  # type: ignore[attr-defined]
            for item in (*DYNAMIC_ITEMS, *VERDICT_ITEMS)
        ]
        if interaction.type is discord.InteractionType.component and not any(
            template.fullmatch(custom_id) for template in templates
        ):
            _log.warning(
                "ignored control with forged or malformed id %r from %s",
                custom_id[:100],
                interaction.user.id,
            )

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        if self._resumed:
            return
        self._resumed = True
        await self.bot.desk.resume()
