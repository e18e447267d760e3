"""``/review``: an actor pulls the next finished turn to review, in the console channel.

The item is leased to the actor (:mod:`feedback.reviews`) and shown to them alone (an ephemeral
message with the verdict form of :mod:`bot.discord_transport.console.verdict`). Running
``/review`` again while the lease lasts shows the same item. The form's controls are registered
here, so a form shown before a restart still works after it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_transport.console.items import ONLY_ACTORS
from bot.discord_transport.console.verdict import VERDICT_ITEMS, review_form
from bot.discord_transport.errors import UserFacingError, reply_error
from feedback.rubric import RubricError

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot

__all__ = ["NOTHING_TO_REVIEW", "Review"]

_log = logging.getLogger(__name__)

NOTHING_TO_REVIEW = (
    "Nothing to review right now: every queued reply has its reviews, or is one you decided "
    "or reviewed already."
)


class Review(commands.Cog):
    """``/review`` and the verdict form's controls."""

    def __init__(self, bot: GreenroomBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(*VERDICT_ITEMS)

    @app_commands.command(
        name="review", description="Review the next finished reply (actors, in the console)."
    )
    async def review(self, interaction: discord.Interaction) -> None:
        desk, decisions = self.bot.desk, self.bot.decisions
        if not await desk.is_actor(interaction):
            _log.warning("refused /review by %s: not an actor", interaction.user.id)
            raise UserFacingError(ONLY_ACTORS)
        if not await desk.is_console_channel(interaction):
            raise UserFacingError("Use /review in this server's actor console channel.")
        if decisions.reviews is None:
            raise UserFacingError("Reviews are not set up on this bot.")
        with self.bot.tracking():
            item = await decisions.reviews.next_item(f"discord:{interaction.user.id}")
            if item is None:
                await interaction.response.send_message(NOTHING_TO_REVIEW, ephemeral=True)
                return
            try:
                rubric = decisions.rubric_for(item.persona)
            except (RubricError, KeyError) as error:
                raise UserFacingError(f"This item cannot be reviewed: {error}") from None
            embed, view = review_form(item, rubric)
            await interaction.response.send_message(
                embed=embed,
                view=view,
                ephemeral=True,
                allowed_mentions=discord.AllowedMentions.none(),
            )

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await reply_error(interaction, error)
