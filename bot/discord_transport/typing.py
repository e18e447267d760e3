"""A typing indicator that never delays the reply.

discord.py's ``channel.typing()`` awaits its first request before the body runs; here the
indicator runs beside the work: sent after ``delay`` (a reply ready sooner needs none, which
saves a request per turn with a fast model), renewed every 8 s (Discord shows it for 10 s),
stopped on exit. A failed typing request is logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import discord

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["keep_typing"]

_log = logging.getLogger(__name__)

_RENEW_EVERY_S = 8.0


async def _typing_loop(channel: discord.abc.Messageable) -> None:
    while True:
        try:
            await channel.typing()
        except discord.HTTPException as error:
            _log.debug("typing indicator failed: %s", error)
        await asyncio.sleep(_RENEW_EVERY_S)


@contextlib.asynccontextmanager
async def keep_typing(
    channel: discord.abc.Messageable, *, delay: float = 0.3
) -> AsyncIterator[None]:
    """Show "typing..." in ``channel`` while the body runs (from ``delay`` seconds on).

    Until then only a timer is pending (no task), which is all a fast reply ever costs.
    """
    loop = asyncio.get_running_loop()
    typing: list[asyncio.Task[None]] = []
    timer = loop.call_later(delay, lambda: typing.append(loop.create_task(_typing_loop(channel))))
    try:
        yield
    finally:
        timer.cancel()
        for task in typing:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # we are being cancelled ourselves: never swallow that
