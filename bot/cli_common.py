"""What every ``greenroom`` command shares: one-line failures and the settings."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

from bot.settings import ConfigError, Settings, load_settings

__all__ = ["err_console", "fail", "settings_or_exit"]

#: Standard error, for progress bars and failures (standard output stays for results).
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line on standard error and exit (2: the input or the setup is wrong)."""
    err_console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_or_exit() -> Settings:
    """The settings, or exit with the one-line reason they are wrong."""
    try:
        return load_settings()
    except ConfigError as error:
        fail(str(error))
