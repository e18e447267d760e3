"""``/review``: actors pull the next finished turn to review, in the console channel."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.discord_transport.cogs.review.cog import Review

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot


async def setup(bot: GreenroomBot) -> None:
    await bot.add_cog(Review(bot))
