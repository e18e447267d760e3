"""``greenroom run``: the Discord bot's process, with a clean SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from typing import TYPE_CHECKING

import discord

from bot.discord_transport.client import GreenroomBot
from bot.runtime import open_runtime
from feedback.channels import ChannelSettingsStore

if TYPE_CHECKING:
    from bot.engine import ConversationEngine
    from bot.settings import Settings

__all__ = ["MissingTokenError", "discord_token", "run_bot"]

_log = logging.getLogger(__name__)


class MissingTokenError(Exception):
    """No bot token is configured."""

    def __init__(self) -> None:
        super().__init__(
            "no Discord token: set DISCORD_TOKEN (or discord.token in greenroom.toml); "
            "`greenroom chat` works without Discord"
        )


def discord_token(settings: Settings) -> str:
    """The token from ``DISCORD_TOKEN`` or the settings; raises :class:`MissingTokenError`."""
    token = os.environ.get("DISCORD_TOKEN") or (
        settings.discord.token.get_secret_value() if settings.discord.token else ""
    )
    if not token.strip():
        raise MissingTokenError
    return token.strip()


async def run_bot(settings: Settings, token: str) -> None:
    """Run until SIGTERM or SIGINT, then let replies in flight finish and close cleanly."""
    if settings.discord.api_base:
        discord.http.Route.BASE = settings.discord.api_base.rstrip("/")
    async with open_runtime(settings) as runtime:
        bot = GreenroomBot(
            engine=runtime.engine,
            decisions=runtime.decisions,
            sessions=runtime.sessions,
            channels=ChannelSettingsStore(runtime.sessions),
            settings=settings,
        )
        # Everything loaded so far (modules, personas, models) lives as long as the process:
        # keep it out of the collector's full passes, which otherwise stall busy replies.
        # A young-generation pass every 10,000 surviving objects instead of 700: a busy bot ran
        # about 40 passes a second (bench_discord_load.py), each a pause in every reply.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        preload = asyncio.create_task(_preload_memory(runtime.engine), name="memory-preload")
        try:
            async with bot:
                running = asyncio.create_task(bot.start(token), name="discord-bot")
                stopping = asyncio.create_task(stop.wait(), name="stop-signal")
                done, _ = await asyncio.wait(
                    {running, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                if stopping in done:
                    _log.info("stopping: finishing replies in flight")
                    await bot.shutdown(settings.discord.shutdown_grace_s)
                    with contextlib.suppress(asyncio.CancelledError):
                        await running
                else:
                    stopping.cancel()
                    running.result()
        finally:
            preload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await preload
        _log.info("stopped cleanly")


async def _preload_memory(engine: ConversationEngine) -> None:
    """Warm recent users' memories while the bot connects (a one-shot command has no use for
    it); a failure costs only speed, so it is logged."""
    try:
        loaded = await engine.preload_memory()
    except Exception:
        _log.warning("memory preload failed; first recalls will be slower", exc_info=True)
    else:
        if loaded:
            _log.info("memory: preloaded %d recent scopes", loaded)
