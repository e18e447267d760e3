"""What every ``greenroom`` command shares: one-line failures, the settings, the database."""

from __future__ import annotations

import asyncio
import gc
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console

from bot.settings import ConfigError, Settings, load_settings
from feedback.database import DatabaseError, create_engine, migrate, session_factory

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = ["err_console", "fail", "quiet_collector", "settings_or_exit", "with_database"]

#: Standard error, for progress bars and failures (standard output stays for results).
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line on standard error and exit (2: the input or the setup is wrong)."""
    err_console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def quiet_collector() -> None:
    """Keep what start-up loaded out of the cyclic collector's passes, and run its young pass
    every 10,000 surviving objects instead of 700, as ``greenroom run`` does: building export
    records allocates hundreds of thousands of short-lived objects (no cycles among them), and
    every full pass walked all the modules loaded. Call it once, after the imports."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def settings_or_exit() -> Settings:
    """The settings, or exit with the one-line reason they are wrong."""
    try:
        return load_settings()
    except ConfigError as error:
        fail(str(error))


def with_database(
    settings: Settings,
    work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[Any]],
    *,
    user_errors: tuple[type[Exception], ...] = (),
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> Any:
    """Run ``work`` over the migrated database, on an event loop of ``loop_factory`` (asyncio's
    own by default); database errors and ``user_errors`` (mistakes the user can fix) end the
    command with one line."""

    async def main() -> Any:
        engine = create_engine(settings.resolved_database_url)
        try:
            await migrate(engine)
            return await work(session_factory(engine))
        finally:
            await engine.dispose()

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main())
    except (DatabaseError, ConfigError, *user_errors) as error:
        fail(str(error))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
