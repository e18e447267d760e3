"""The health cog: an aiohttp ``/healthz`` endpoint inside the bot's process.

``GET /healthz`` answers JSON with one entry per dependency and HTTP 200 when all are usable,
503 when any is degraded. The database and the memory store are probed at request time (one
round trip each, bounded by ``health.probe_timeout_s``); the model is judged by the last
generation (a probe would cost a generation); Discord by the gateway connection.

Limits: the endpoint has no authentication, so it binds to 127.0.0.1 unless told otherwise;
it is off unless ``health.port`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from discord.ext import commands
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot

__all__ = ["Health", "health_report"]

_log = logging.getLogger(__name__)


async def _probe_database(bot: GreenroomBot, timeout_s: float) -> dict[str, Any]:
    state = bot.health.database
    started = time.perf_counter()
    error: BaseException | None = None
    for _attempt in range(2):  # a connection invalidated by a past outage costs one try
        try:
            async with asyncio.timeout(timeout_s), bot.sessions() as session:
                await session.execute(text("SELECT 1"))
        except sa_exc.DBAPIError as failure:
            error = failure
            if failure.connection_invalidated:
                continue
            break
        except Exception as failure:  # refused, timed out: all mean "down"
            error = failure
            break
        else:
            error = None
            break
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    if error is None:
        if state.ok():
            _log.warning("database reachable again (health probe)")
    elif state.failed(error):
        _log.warning("database unreachable (health probe): %s", type(error).__name__)
    return {
        **state.as_dict(),
        "latency_ms": latency_ms,
        "waiting_messages": bot.health.waiting,
    }


async def _probe_memory(bot: GreenroomBot, timeout_s: float) -> dict[str, Any]:
    state = bot.health.memory
    memory = bot.engine.memory
    if memory is None:
        state.state = "off"
        return {"state": "off"}
    ping = getattr(memory, "ping", None)
    if ping is not None:
        try:
            async with asyncio.timeout(timeout_s):
                await ping()
        except Exception as error:
            if state.failed(error):
                _log.warning("memory store unreachable (health probe)")
        else:
            if state.ok():
                _log.warning("memory store reachable again (health probe)")
    report = state.as_dict()
    report["state"] = "unavailable" if state.state == "down" else state.state
    return report


def _model(bot: GreenroomBot) -> dict[str, Any]:
    report = bot.health.model.as_dict()
    report["state"] = "error" if bot.health.model.state == "down" else report["state"]
    model = bot.engine.model
    report["provider"] = getattr(model, "_llm_type", type(model).__name__)
    return report


def _discord(bot: GreenroomBot) -> dict[str, Any]:
    connected = bot.is_ready() and not bot.is_closed() and bot.ws is not None
    latency = bot.latency
    return {
        "state": "ok" if connected else "disconnected",
        "latency_ms": round(latency * 1000, 1) if math.isfinite(latency) else None,
        "guilds": len(bot.guilds),
    }


async def health_report(bot: GreenroomBot) -> tuple[bool, dict[str, Any]]:
    """``(healthy, report)``: every dependency's state now, probing the database and memory."""
    timeout_s = bot.settings.health.probe_timeout_s
    database, memory = await asyncio.gather(
        _probe_database(bot, timeout_s), _probe_memory(bot, timeout_s)
    )
    checks = {
        "database": database,
        "memory": memory,
        "model": _model(bot),
        "discord": _discord(bot),
    }
    healthy = (
        database["state"] == "ok"
        and memory["state"] in ("ok", "off", "unknown")
        and checks["model"]["state"] in ("ok", "unknown")
        and checks["discord"]["state"] == "ok"
    )
    return healthy, {
        "status": "ok" if healthy else "degraded",
        "time": round(time.time(), 3),
        "checks": checks,
    }


class Health(commands.Cog):
    """Serves ``/healthz`` on ``health.host``:``health.port`` while the cog is loaded."""

    def __init__(self, bot: GreenroomBot) -> None:
        self.bot = bot
        self._runner: web.AppRunner | None = None
        #: The port actually bound (``None`` while not serving).
        self.port: int | None = None

    async def cog_load(self) -> None:
        if self.bot.engine.memory is None:
            self.bot.health.memory.state = "off"
        settings = self.bot.settings.health
        if not settings.port:
            return
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            _log.error(
                "no /healthz: cannot listen on %s:%s (%s)", settings.host, settings.port, error
            )
            return
        self._runner, self.port = runner, settings.port
        _log.info("serving /healthz on http://%s:%s/healthz", settings.host, settings.port)

    async def cog_unload(self) -> None:
        runner, self._runner, self.port = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        healthy, report = await health_report(self.bot)
        return web.json_response(report, status=200 if healthy else 503)
