"""The console message's controls, put together: the actions of :mod:`.items` and the Score
form of :mod:`.scoring`.

A console message holds at most 5 rows: row 0 the five buttons (a row's limit), rows 1 and 2
the rating and tag selects, row 3 the Score and Gold buttons (Gold: leads only, see
:mod:`.verdict`).
"""

from __future__ import annotations

from typing import Any

import discord

from bot.discord_transport.console.items import (
    ApproveButton,
    RatingSelect,
    RegenerateButton,
    ReleaseButton,
    RewriteButton,
    TagsSelect,
    TakeOverButton,
)
from bot.discord_transport.console.scoring import ScoreButton, ScoreMoreButton
from bot.discord_transport.console.verdict import GoldButton

__all__ = ["DYNAMIC_ITEMS", "console_view"]

#: Registered with ``bot.add_dynamic_items`` so they work after a restart.
DYNAMIC_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (
    ApproveButton,
    RewriteButton,
    RegenerateButton,
    TakeOverButton,
    ReleaseButton,
    RatingSelect,
    TagsSelect,
    ScoreButton,
    ScoreMoreButton,
    GoldButton,
)


def console_view(candidate_id: int, conversation_id: int) -> discord.ui.View:
    """A console message's persistent controls: the ids live in each ``custom_id``."""
    view = discord.ui.View(timeout=None)
    for item in (
        ApproveButton(candidate_id),
        RewriteButton(candidate_id),
        RegenerateButton(candidate_id),
        TakeOverButton(conversation_id),
        ReleaseButton(conversation_id),
        RatingSelect(candidate_id),
        TagsSelect(candidate_id),
        ScoreButton(candidate_id),
        GoldButton(candidate_id),
    ):
        view.add_item(item)
    return view
