"""The ``greenroom`` command line (Typer + Rich).

Every command reads the settings once; a wrong setting, an unknown persona or a bad file ends
the command with one line on standard error and exit code 2.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import discord
import typer
from rich.console import Console
from rich.table import Table

from bot.llm import ModelUnavailableError
from bot.settings import ConfigError, Settings, load_settings
from feedback.database import DatabaseError
from personas import CardError, PersonaRegistry, UnknownPersonaError

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Any

__all__ = ["app"]

_log = logging.getLogger(__name__)

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Greenroom: personas kept honest by actors."
)
personas_app = typer.Typer(no_args_is_help=True, help="Manage persona cards.")
app.add_typer(personas_app, name="personas")

_err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line on standard error and exit."""
    _err.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_or_exit() -> Settings:
    """The settings, or exit with the one-line reason they are wrong."""
    try:
        return load_settings()
    except ConfigError as error:
        fail(str(error))


def run_async(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a command's coroutine with the errors users can fix shown as one line."""
    try:
        return asyncio.run(coroutine)
    except (
        UnknownPersonaError,
        CardError,
        ConfigError,
        ModelUnavailableError,
        DatabaseError,
    ) as error:
        fail(str(error))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _configure_logging(settings: Settings, *, quiet: bool) -> None:
    level = logging.WARNING if quiet else getattr(logging, settings.log_level)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def chat(
    persona: Annotated[str | None, typer.Option(help="Persona to talk with.")] = None,
    user: Annotated[str | None, typer.Option(help="Your name (default: your login).")] = None,
) -> None:
    """Chat with a persona in the terminal, on the configured model.

    When standard input is not a terminal, reads one message a line and prints each reply on
    its own line as ``NAME: reply``.
    """
    settings = settings_or_exit()
    _configure_logging(settings, quiet=True)
    run_async(_chat(settings, persona or settings.default_persona, user or _login_name()))


@app.command()
def run() -> None:
    """Run the Discord bot (token from DISCORD_TOKEN or discord.token in the config)."""
    settings = settings_or_exit()
    _configure_logging(settings, quiet=False)
    from bot.discord_transport.runner import MissingTokenError, discord_token, run_bot

    try:
        token = discord_token(settings)
    except MissingTokenError as error:
        fail(str(error))
    try:
        run_async(run_bot(settings, token))
    except discord.LoginFailure:
        fail("Discord refused the token (401): check DISCORD_TOKEN")


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "user"


async def _chat(settings: Settings, persona: str, user: str) -> None:
    from bot.runtime import open_runtime
    from bot.terminal import TerminalChat

    async with open_runtime(settings) as runtime:
        terminal = TerminalChat(runtime.engine, persona=persona, user=user)
        if sys.stdin.isatty():
            await terminal.run_interactive(Console())
        else:
            await terminal.run_script(sys.stdin, sys.stdout, sys.stderr)


def _registry(settings: Settings) -> PersonaRegistry:
    registry = PersonaRegistry.load(settings.persona_search_dirs)
    for error in registry.errors:
        _err.print(f"[yellow]skipped:[/] {error}", highlight=False)
    return registry


@personas_app.command("list")
def personas_list() -> None:
    """List the personas that loaded."""
    registry = _registry(settings_or_exit())
    table = Table("name", "card", "version", "mode")
    for persona in registry:
        table.add_row(persona.name, persona.card.spec, persona.version_hash, persona.greenroom.mode)
    Console().print(table)


@personas_app.command("show")
def personas_show(name: str) -> None:
    """Show one persona's card as JSON."""
    registry = _registry(settings_or_exit())
    try:
        persona = registry.get(name)
    except UnknownPersonaError as error:
        fail(str(error))
    from personas import dump_card_json

    Console().print_json(dump_card_json(persona.card))


@personas_app.command("import")
def personas_import(path: Path) -> None:
    """Validate a card (JSON or PNG, V2 or V3) and copy it into the data dir's personas."""
    settings = settings_or_exit()
    registry = _registry(settings)
    dest = settings.data_dir / "personas"
    try:
        persona = registry.import_card(path, dest)
    except CardError as error:
        fail(str(error))
    Console().print(f"imported {persona.name} into {dest}")


@personas_app.command("export")
def personas_export(
    name: str,
    out: Annotated[Path, typer.Option(help="File to write: .json or .png.")],
) -> None:
    """Write a persona's card as JSON or as a PNG card (chara / ccv3 chunks)."""
    from personas import dump_card_json, write_card_png

    registry = _registry(settings_or_exit())
    try:
        persona = registry.get(name)
    except UnknownPersonaError as error:
        fail(str(error))
    suffix = out.suffix.lower()
    if suffix not in {".json", ".png"}:
        fail(f"--out must end in .json or .png, not {out.suffix or '(nothing)'}")
    try:
        if suffix == ".json":
            out.write_text(dump_card_json(persona.card), encoding="utf-8")
        else:
            write_card_png(persona.card, out)
    except OSError as error:
        fail(f"cannot write {out}: {error.strerror}")
    Console().print(f"wrote {out}")
