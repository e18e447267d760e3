"""The bot's command tree: slash commands whose data does not fit them are refused clearly.

Discord checks option types and choices against the commands it has on record, but that record
can be older than the running code (a deploy before the sync reaches every client), and
discord.py passes option values through unchecked. So before a command runs, each option is
checked against the command's own parameters; a mismatch, like an unknown command, gets a short
ephemeral answer and a warning in the log, never an exception.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.enums import AppCommandOptionType

from bot.discord_transport.errors import STALE_COMMAND, reply_error

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["GreenroomTree", "option_problem"]

_log = logging.getLogger(__name__)

_VALUE_TYPES: dict[AppCommandOptionType, tuple[type, ...]] = {
    AppCommandOptionType.string: (str,),
    AppCommandOptionType.integer: (int,),
    AppCommandOptionType.number: (int, float),
    AppCommandOptionType.boolean: (bool,),
}
_SUBCOMMAND_TYPES = (
    AppCommandOptionType.subcommand.value,
    AppCommandOptionType.subcommand_group.value,
)


def _leaf_options(data: Any) -> list[Any]:
    """The options of the innermost subcommand of an APPLICATION_COMMAND's data."""
    options = data.get("options") if isinstance(data, dict) else None
    while (
        isinstance(options, list)
        and len(options) == 1
        and isinstance(options[0], dict)
        and options[0].get("type") in _SUBCOMMAND_TYPES
    ):
        options = options[0].get("options")
    return options if isinstance(options, list) else []


def option_problem(
    parameters: Sequence[app_commands.Parameter], options: Sequence[Any]
) -> str | None:
    """What is wrong with ``options`` for a command with ``parameters``; ``None`` if nothing.

    An option the command does not have is a problem too: it may be an attempt to reach
    further than the command goes (``/memory show user:<someone else>``).
    """
    by_name = {parameter.display_name: parameter for parameter in parameters}
    for option in options:
        if not isinstance(option, dict) or "value" not in option:
            return "an option without a value"
        parameter = by_name.get(option.get("name"))  # type: ignore[arg-type]
        if parameter is None:
            return f"unknown option {str(option.get('name'))[:40]!r}"
        value, kind = option["value"], parameter.type
        wanted = _VALUE_TYPES.get(kind)
        wrong_bool = isinstance(value, bool) and kind is not AppCommandOptionType.boolean
        if wanted is not None and (wrong_bool or not isinstance(value, wanted)):
            return f"option {parameter.display_name!r} should be a {kind.name}"
        if parameter.choices and value not in {choice.value for choice in parameter.choices}:
            return f"{str(value)[:40]!r} is not a choice of {parameter.display_name!r}"
        if kind is AppCommandOptionType.string:
            low, high = parameter.min_value, parameter.max_value
            if (low is not None and len(value) < low) or (high is not None and len(value) > high):
                return f"option {parameter.display_name!r} has {len(value)} characters"
    return None


class GreenroomTree(app_commands.CommandTree):
    """Checks each command's options before it runs; answers unknown commands."""

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        command = interaction.command
        if interaction.type is not discord.InteractionType.application_command or not isinstance(
            command, app_commands.Command
        ):
            return True
        problem = option_problem(command.parameters, _leaf_options(interaction.data))
        if problem is None:
            return True
        _log.warning(
            "refused /%s from %s: %s", command.qualified_name, interaction.user.id, problem
        )
        await interaction.response.send_message(STALE_COMMAND, ephemeral=True)
        return False

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError, /
    ) -> None:
        command = interaction.command
        if command is not None and command._has_any_error_handlers():
            return  # its cog answered
        await reply_error(interaction, error)
