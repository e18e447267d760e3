"""What an actor sees: one console message per candidate (an embed and persistent controls).

Discord limits that apply here: an embed description holds 4,096 characters, a field 1,024, a
message at most 5 rows of components, and a ``custom_id`` 100 characters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

from bot.flags import describe_flag, is_urgent

if TYPE_CHECKING:
    from feedback.models import Conversation, ConversationClaim, MessageNode

__all__ = ["console_embed"]

_DESCRIPTION_LIMIT = 4096
_FIELD_LIMIT = 1024
_STATE_COLOURS = {
    "held": discord.Colour.orange(),
    "approved": discord.Colour.green(),
    "sent": discord.Colour.green(),
    "rejected": discord.Colour.dark_grey(),
    "replaced": discord.Colour.dark_grey(),
    "dropped": discord.Colour.dark_grey(),
    "withheld": discord.Colour.dark_grey(),
}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _where(conversation: Conversation | None) -> str:
    if conversation is None:
        return "unknown"
    kind, _, ident = conversation.scope.partition(":")
    return f"<#{ident}>" if kind == "channel" else f"DM with user `{ident}`"


def console_embed(
    node: MessageNode,
    *,
    conversation: Conversation | None,
    user_lines: list[str],
    memories: list[str],
    mode: str | None,
    claim: ConversationClaim | None,
) -> discord.Embed:
    """The console embed for a candidate as the database has it now."""
    urgent = is_urgent(node.flags)
    title = f"{'🚨 URGENT · ' if urgent else ''}{node.author_name} · candidate #{node.id}"
    embed = discord.Embed(
        title=title,
        description=_clip(node.content, _DESCRIPTION_LIMIT),
        colour=discord.Colour.red() if urgent else _STATE_COLOURS.get(node.state),
    )
    embed.add_field(name="Conversation", value=_where(conversation), inline=True)
    if mode:
        embed.add_field(name="Mode", value=mode, inline=True)
    status = node.state
    if node.state == "held" and node.hold_until is not None:
        status = f"held until <t:{int(node.hold_until.timestamp())}:T>"
    if node.decided_by:
        status += f" · decided by {node.decided_by}"
    embed.add_field(name="Status", value=status, inline=True)
    if user_lines:
        said = "\n".join(f"> {_clip(line, 300)}" for line in user_lines)
        embed.add_field(name="User said", value=_clip(said, _FIELD_LIMIT), inline=False)
    if memories:
        embed.add_field(name="Memory", value=_clip("\n".join(memories), _FIELD_LIMIT), inline=False)
    flags = [describe_flag(flag) for flag in node.flags]
    if flags:
        embed.add_field(name="Flags", value=_clip("\n".join(flags), _FIELD_LIMIT), inline=False)
    if claim is not None:
        what = "taken over" if claim.takeover else "claimed"
        embed.add_field(
            name="Actor",
            value=f"{what} by {claim.actor_name} until <t:{int(claim.expires_at.timestamp())}:T>",
            inline=False,
        )
    return embed
