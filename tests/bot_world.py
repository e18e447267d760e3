"""A running Greenroom bot connected to the loopback Discord server, for end-to-end tests.

The bot is the real :class:`~bot.discord_transport.GreenroomBot` on the real discord.py client;
only the model is a fake (instant, echoing) unless a test passes another.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.discord_transport import GreenroomBot
from bot.engine import ConversationEngine
from bot.llm import FakeChatModel
from bot.runtime import decision_service, engine_limits
from bot.settings import Settings, load_settings
from feedback.channels import ChannelSettingsStore
from feedback.database import session_factory
from feedback.store import ConversationStore
from personas import PersonaRegistry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from langchain_core.language_models import BaseChatModel
    from sqlalchemy.ext.asyncio import AsyncEngine

    from bot.engine import MemoryPort
    from tests.discord_server.models import Channel, Guild, Role, User
    from tests.discord_server.server import DiscordTestServer

__all__ = ["World", "restarted", "running_bot"]

#: Manage Server, as a role permission bit.
MANAGE_GUILD = 1 << 5


@dataclass
class World:
    """The server, the bot and a small guild: an owner, a member, a text channel."""

    server: DiscordTestServer
    bot: GreenroomBot
    settings: Settings
    store: ConversationStore
    guild: Guild
    channel: Channel
    owner: User
    member: User
    manager_role: Role
    extras: dict[str, Any] = field(default_factory=dict)

    def bot_replies(self, channel: Channel) -> list[dict[str, Any]]:
        """Messages in ``channel`` written by the bot (directly or through its webhook)."""
        return self.server.channel_history(channel, include_user_messages=False)

    async def settle(self, *, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (see wait_until)
        """Wait until the bot has read every dispatch sent so far and finished the work they
        started: discord.py's event, command and component tasks, and ``bot.in_flight``.

        For a "nothing else happened" check with no later signal to wait on (a cooled-down
        message, a typing event, a click that must do nothing). Each of its two steps is
        bounded by ``timeout`` seconds. A hold's timer is not work in flight.
        """
        await self.server.wait_for_dispatches_read(timeout=timeout)
        await self.server.wait_until(
            lambda: _bot_work(self.bot),
            until=lambda pending: not pending,
            what="the bot's event handlers and work in flight to finish",
            timeout=timeout,
        )


#: Names discord.py gives the tasks it runs handlers in: events, app commands, components.
_HANDLER_TASKS = ("discord.py: ", "CommandTree-invoker", "discord-ui-")


def _bot_work(bot: GreenroomBot) -> list[str]:
    """Names of the handler tasks and work in flight that have not finished."""
    current = asyncio.current_task()
    return sorted(
        task.get_name()
        for task in asyncio.all_tasks()
        if task is not current
        and not task.done()
        and (task.get_name().startswith(_HANDLER_TASKS) or task in bot.in_flight)
    )


@contextlib.asynccontextmanager
async def running_bot(
    server: DiscordTestServer,
    db_engine: AsyncEngine,
    tmp_path: Path,
    *,
    model: BaseChatModel | None = None,
    memory: MemoryPort | None = None,
    discord: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[World]:
    """Start the bot against ``server`` and stop it cleanly afterwards."""
    settings = load_settings(
        data_dir=tmp_path,
        discord={
            "api_base": server.api_base,
            "use_webhooks": False,
            "cooldown_messages": 1000,
            **(discord or {}),
        },
        **overrides,
    )
    bot = _new_bot(settings, db_engine, model=model, memory=memory)
    owner = server.add_user("owner")
    member = server.add_user("mia", global_name="Mia")
    guild = server.add_guild("Greenroom Test", owner)
    manager_role = server.add_role(guild, "Managers", permissions=MANAGE_GUILD)
    server.add_member(guild, member)
    channel = server.add_channel(guild, "lounge")
    task = asyncio.create_task(bot.start(server.bot_token))
    try:
        await asyncio.wait_for(bot.wait_until_ready(), 10)
        yield World(
            server=server,
            bot=bot,
            settings=settings,
            store=bot.engine.store,
            guild=guild,
            channel=channel,
            owner=owner,
            member=member,
            manager_role=manager_role,
        )
    finally:
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _new_bot(
    settings: Settings,
    db_engine: AsyncEngine,
    *,
    model: BaseChatModel | None = None,
    memory: MemoryPort | None = None,
) -> GreenroomBot:
    sessions = session_factory(db_engine)
    engine = ConversationEngine(
        personas=PersonaRegistry.load(),
        store=ConversationStore(sessions),
        model=model or FakeChatModel(),
        memory=memory,
        limits=engine_limits(settings),
    )
    return GreenroomBot(
        engine=engine,
        decisions=decision_service(settings, engine, sessions),
        sessions=sessions,
        channels=ChannelSettingsStore(sessions),
        settings=settings,
        guild_ready_timeout=0.05,
    )


@contextlib.asynccontextmanager
async def restarted(
    world: World,
    db_engine: AsyncEngine,
    *,
    model: BaseChatModel | None = None,
    before_start: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[World]:
    """Stop the world's bot, run ``before_start`` (what happens while it is down), then start
    a fresh bot on the same database and server, as a restart would."""
    await world.bot.close()
    if before_start is not None:
        await before_start()
    bot = _new_bot(world.settings, db_engine, model=model)
    task = asyncio.create_task(bot.start(world.server.bot_token))
    world.bot, world.store = bot, bot.engine.store
    try:
        await asyncio.wait_for(bot.wait_until_ready(), 10)
        yield world
    finally:
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task
