"""Helper processes that share the work of one job (an export, an API page) over the database.

Both helpers run as ``python -m MODULE`` (not :mod:`multiprocessing`, which would run the
caller's main module again), import this checkout's ``feedback`` package, and open the
database themselves, so they need a URL another process can open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = ["shared_database_url", "start_module", "stop_module"]

_log = logging.getLogger(__name__)

#: The folder that holds the ``feedback`` package, for the helper processes' imports.
_ROOT = str(Path(__file__).resolve().parents[1])


def shared_database_url(sessions: async_sessionmaker[AsyncSession]) -> str | None:
    """The URL (password included) of the database of ``sessions``, or ``None`` when another
    process cannot open it (in-memory SQLite)."""
    engine = sessions.kw.get("bind")
    if engine is None or engine.url.database in (None, "", ":memory:"):
        return None
    return str(engine.url.render_as_string(hide_password=False))


async def start_module(module: str, *, capture_errors: bool = False) -> asyncio.subprocess.Process:
    """``python -m module`` with pipes on its input and output (and on its errors with
    ``capture_errors``; else they go to this process's), this checkout first on its path."""
    search_path = os.pathsep.join(filter(None, (_ROOT, os.environ.get("PYTHONPATH"))))
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if capture_errors else None,
        env={**os.environ, "PYTHONPATH": search_path},
    )


async def stop_module(process: asyncio.subprocess.Process, *, within: float, name: str) -> None:
    """Close the input of ``process`` (a helper stops when it ends) and wait for it to exit;
    kill it if it has not within ``within`` seconds (logged, naming it ``name``)."""
    if process.stdin is not None:
        process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), timeout=within)
    except TimeoutError:
        _log.warning("the %s did not stop within %g s; killing it", name, within)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
