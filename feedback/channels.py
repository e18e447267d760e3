"""Per-channel and per-server settings: bound persona, moderation mode, the actor console.

Read on every incoming message (and typing signal), so lookups are cached in process, the most
recently used :data:`CACHED_CHANNELS` channels; writes go through this store and refresh the
cache.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from sqlalchemy import select

from feedback.models import ChannelSetting, GuildSetting

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = ["CACHED_CHANNELS", "ChannelSettingsStore", "GuildSettingsStore"]

#: Channels whose settings stay cached (every DM is a channel; about 200 bytes each).
CACHED_CHANNELS = 50_000

_log = logging.getLogger(__name__)


class ChannelSettingsStore:
    """Channel bindings, keyed ``transport:channel id``."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, cache_size: int = CACHED_CHANNELS
    ) -> None:
        self._sessions = sessions
        self._cache: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        self._cache_size = cache_size

    async def _row(self, channel_key: str) -> tuple[str | None, str | None]:
        cached = self._cache.get(channel_key)
        if cached is not None:
            self._cache.move_to_end(channel_key)
            return cached
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(ChannelSetting.persona, ChannelSetting.mode).where(
                        ChannelSetting.channel_key == channel_key
                    )
                )
            ).first()
        return self._remember(channel_key, (row[0], row[1]) if row else (None, None))

    def _remember(
        self, channel_key: str, settings: tuple[str | None, str | None]
    ) -> tuple[str | None, str | None]:
        self._cache[channel_key] = settings
        self._cache.move_to_end(channel_key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return settings

    async def persona_for(self, channel_key: str) -> str | None:
        """The persona bound to the channel, or ``None``."""
        return (await self._row(channel_key))[0]

    async def mode_for(self, channel_key: str) -> str | None:
        """The channel's moderation mode (``auto``/``review``), or ``None`` for the persona's."""
        return (await self._row(channel_key))[1]

    async def set_mode(
        self, channel_key: str, *, mode: str | None, guild_key: str | None, by: str
    ) -> None:
        """Set the channel's moderation mode (``None``: follow the persona's card)."""
        await self._update(channel_key, guild_key=guild_key, by=by, mode=mode)

    async def bind(
        self, channel_key: str, *, persona: str | None, guild_key: str | None, by: str
    ) -> None:
        """Bind ``persona`` to the channel (``None`` unbinds)."""
        await self._update(channel_key, guild_key=guild_key, by=by, persona=persona)

    async def _update(
        self, channel_key: str, *, guild_key: str | None, by: str, **values: str | None
    ) -> None:
        async with self._sessions() as session:
            row = await session.get(ChannelSetting, channel_key)
            if row is None:
                row = ChannelSetting(channel_key=channel_key, guild_key=guild_key, updated_by=by)
                session.add(row)
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_by = by
            await session.commit()
            self._remember(channel_key, (row.persona, row.mode))
        _log.info("channel %s set %s by %s", channel_key, values, by)


class GuildSettingsStore:
    """A server's actor console (channel, actor role and lead role) and consent default."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._cache: dict[str, GuildSetting | None] = {}

    async def get(self, guild_key: str) -> GuildSetting | None:
        """The server's settings, or ``None`` when it has none."""
        if guild_key in self._cache:
            return self._cache[guild_key]
        async with self._sessions() as session:
            row = await session.get(GuildSetting, guild_key)
        self._cache[guild_key] = row
        return row

    async def set_console(
        self,
        guild_key: str,
        *,
        channel_id: str,
        actor_role_id: str,
        lead_role_id: str | None = None,
        by: str,
    ) -> GuildSetting:
        """Point the server's console at a channel and name the actors' role and the leads'
        (``None``: no leads; leads are actors who also hold the lead role)."""
        async with self._sessions() as session:
            row = await session.get(GuildSetting, guild_key)
            if row is None:
                row = GuildSetting(guild_key=guild_key, updated_by=by)
                session.add(row)
            row.console_channel_id = channel_id
            row.actor_role_id = actor_role_id
            row.lead_role_id = lead_role_id
            row.updated_by = by
            await session.commit()
        self._cache[guild_key] = row
        _log.info(
            "console of %s set to channel %s, actor role %s, lead role %s by %s",
            guild_key,
            channel_id,
            actor_role_id,
            lead_role_id,
            by,
        )
        return row
