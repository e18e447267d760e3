"""Errors from slash commands: short, ephemeral, and saying what to do."""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bot.discord_transport.outages import (
    DATABASE_UNAVAILABLE,
    is_database_outage,
)

__all__ = ["STALE_COMMAND", "UserFacingError", "reply_error"]

_log = logging.getLogger(__name__)

#: The answer to a command the running bot does not know, or whose options do not fit it.
STALE_COMMAND = (
    "That command came with options I can't use; Discord may be showing you an older "
    "version of it. Please try again in a minute, or see /help."
)


class UserFacingError(app_commands.AppCommandError):
    """A mistake the user can fix; the message is shown to them as it is."""


async def reply_error(
    interaction: discord.Interaction, error: app_commands.AppCommandError
) -> None:
    """Answer a failed command ephemerally; unexpected errors are logged, not shown."""
    original = getattr(error, "original", error)
    if isinstance(original, UserFacingError):
        message = str(original)
    elif isinstance(error, app_commands.CommandOnCooldown):
        message = f"Slow down a little: try again in {error.retry_after:.0f} seconds."
    elif isinstance(error, app_commands.MissingPermissions | app_commands.CheckFailure):
        message = "You don't have permission to do that here."
    elif isinstance(
        error,
        app_commands.CommandNotFound
        | app_commands.CommandSignatureMismatch
        | app_commands.TransformerError,
    ):
        _log.warning("refused a command from %s: %s", interaction.user.id, error)
        message = STALE_COMMAND
    elif is_database_outage(original):
        _log.warning("command %s failed: database unreachable", interaction.command)
        message = DATABASE_UNAVAILABLE
    else:
        _log.error("command %s failed", interaction.command, exc_info=original)
        message = "Something went wrong on my side; please try again in a moment."
    if interaction.response.is_done():
        await interaction.followup.send(message, ephemeral=True)
    else:
        await interaction.response.send_message(message, ephemeral=True)
