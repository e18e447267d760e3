"""Per-channel settings: which persona a channel is bound to.

Read on every incoming message, so lookups are cached in process; writes go through this store
and refresh the cache.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import select

from feedback.models import ChannelSetting

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = ["ChannelSettingsStore"]

_log = logging.getLogger(__name__)


class ChannelSettingsStore:
    """Channel bindings, keyed ``transport:channel id``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._persona_cache: dict[str, str | None] = {}

    async def persona_for(self, channel_key: str) -> str | None:
        """The persona bound to the channel, or ``None``."""
        if channel_key in self._persona_cache:
            return self._persona_cache[channel_key]
        async with self._sessions() as session:
            persona = await session.scalar(
                select(ChannelSetting.persona).where(ChannelSetting.channel_key == channel_key)
            )
        self._persona_cache[channel_key] = persona
        return persona

    async def bind(
        self, channel_key: str, *, persona: str | None, guild_key: str | None, by: str
    ) -> None:
        """Bind ``persona`` to the channel (``None`` unbinds)."""
        async with self._sessions() as session:
            row = await session.get(ChannelSetting, channel_key)
            if row is None:
                row = ChannelSetting(channel_key=channel_key, guild_key=guild_key, updated_by=by)
                session.add(row)
            row.persona = persona
            row.updated_by = by
            await session.commit()
        self._persona_cache[channel_key] = persona
        _log.info("channel %s bound to %s by %s", channel_key, persona, by)
