"""The Greenroom Discord bot: dependencies in through the constructor, features as cogs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import discord
import yarl
from discord.ext import commands
from discord.gateway import DiscordWebSocket

from bot.discord_transport.console.desk import ConsoleDesk
from bot.discord_transport.delivery import PersonaVoice
from bot.discord_transport.outages import HealthState
from bot.discord_transport.outlet import DiscordOutlet
from bot.discord_transport.tree import GreenroomTree
from feedback.channels import GuildSettingsStore

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from bot.decisions import DecisionService
    from bot.engine import ConversationEngine
    from bot.settings import Settings
    from feedback.channels import ChannelSettingsStore

__all__ = ["EXTENSIONS", "GreenroomBot"]

_log = logging.getLogger(__name__)

#: The features, one cog each, loaded in this order by :meth:`GreenroomBot.setup_hook`.
EXTENSIONS = (
    "bot.discord_transport.cogs.conversation",
    "bot.discord_transport.cogs.console",
    "bot.discord_transport.cogs.review",
    "bot.discord_transport.cogs.persona_commands",
    "bot.discord_transport.cogs.memory_commands",
    "bot.discord_transport.cogs.help",
    "bot.discord_transport.cogs.health",
)


class GreenroomBot(commands.Bot):
    """Greenroom's bot. It never pings anyone: mentions are off for everything it sends."""

    def __init__(
        self,
        *,
        engine: ConversationEngine,
        decisions: DecisionService,
        sessions: async_sessionmaker[AsyncSession],
        channels: ChannelSettingsStore,
        settings: Settings,
        **client_options: Any,
    ) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
            tree_cls=GreenroomTree,
            **client_options,
        )
        self.engine = engine
        self.decisions = decisions
        self.sessions = sessions
        self.channels = channels
        self.settings = settings
        self.voice = PersonaVoice(
            use_webhooks=settings.discord.use_webhooks, personas=engine.personas
        )
        decisions.add_outlet("discord", DiscordOutlet(self, self.voice))
        self.desk = ConsoleDesk(
            client=self,
            decisions=decisions,
            store=engine.store,
            personas=engine.personas,
            channels=channels,
            guilds=GuildSettingsStore(sessions),
            settings=settings.console,
        )
        #: What the bot has seen of its dependencies; ``/healthz`` reports it.
        self.health = HealthState()
        #: Replies being produced or delivered; SIGTERM waits for them.
        self.in_flight: set[asyncio.Task[object]] = set()
        self.accepting = True

    async def setup_hook(self) -> None:
        if self.settings.discord.api_base:
            await self._use_advertised_gateway()
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if self.settings.discord.sync_commands:
            synced = await self.tree.sync()
            _log.info("synced %d application commands", len(synced))

    async def _use_advertised_gateway(self) -> None:
        """With a custom API base, connect to the gateway that API advertises.

        discord.py's plain ``Client`` connects to ``DiscordWebSocket.DEFAULT_GATEWAY`` without
        asking ``GET /gateway/bot``; a Discord-compatible server elsewhere needs its own.
        """
        _shards, url, *_ = await self.http.get_bot_gateway()
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
        _log.info("using gateway %s", url)

    async def on_message(self, message: discord.Message, /) -> None:
        """Prefix commands are not used; the conversation cog listens to messages."""

    async def shutdown(self, grace_s: float) -> None:
        """Stop taking messages, let replies in flight finish (up to ``grace_s``), close."""
        self.accepting = False
        pending = [task for task in self.in_flight if not task.done()]
        if pending:
            _log.info("waiting up to %.0fs for %d replies in flight", grace_s, len(pending))
            _done, still = await asyncio.wait(pending, timeout=grace_s)
            if still:
                _log.warning("%d replies did not finish before shutdown", len(still))
        await self.close()

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        """Count the current task as work in flight (a reply, an actor's click)."""
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        try:
            yield
        finally:
            if task is not None:
                self.in_flight.discard(task)

    async def close(self) -> None:
        """Stop taking work, cancel what is still in flight (what it committed stays; holds
        resume from the database at the next start), then disconnect."""
        self.accepting = False
        await self.decisions.close()
        current = asyncio.current_task()
        pending = [task for task in self.in_flight if task is not current and not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)
        await super().close()
