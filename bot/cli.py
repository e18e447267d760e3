"""The ``greenroom`` command line (Typer + Rich).

Every command reads the settings once; a wrong setting, an unknown persona or a bad file ends
the command with one line on standard error and exit code 2.
"""

from __future__ import annotations

import asyncio
import getpass
import io
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import discord
import typer
from PIL import Image
from rich.console import Console
from rich.table import Table

from bot.cli_api import api_command, tokens_app
from bot.cli_common import err_console as _err
from bot.cli_common import fail, quiet_collector, settings_or_exit
from bot.cli_eval import eval_app
from bot.cli_reviews import gold_app
from bot.cli_status import status_command
from bot.cli_trainer import actors_app, export_command, report_command
from bot.cli_training import eval_preferences_command, train_command
from bot.llm import ModelUnavailableError
from bot.settings import ConfigError, Settings
from feedback.database import DatabaseError
from personas import CardError, Persona, PersonaRegistry, UnknownPersonaError

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Any

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = ["app"]

_log = logging.getLogger(__name__)

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Greenroom: personas kept honest by actors."
)
personas_app = typer.Typer(no_args_is_help=True, help="Manage persona cards.")
app.add_typer(personas_app, name="personas")
memory_app = typer.Typer(no_args_is_help=True, help="See or erase what is remembered about a user.")
app.add_typer(memory_app, name="memory")
app.command("export")(export_command)
app.command("report")(report_command)
app.command("api")(api_command)
app.command("status")(status_command)
app.command("train")(train_command)
app.add_typer(tokens_app, name="tokens", help="Trainers' API tokens.")
app.add_typer(actors_app, name="actors", help="Actors' reliability: agreement, gold, trust.")
app.add_typer(gold_app, name="gold")
eval_app.command("preferences")(eval_preferences_command)
app.add_typer(eval_app, name="eval")


@app.callback()
def _before_any_command() -> None:
    # Exports and API pages build records by the hundred thousand: see quiet_collector.
    quiet_collector()


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
    model_adapter: Annotated[
        Path | None,
        typer.Option(help="Serve this LoRA adapter (greenroom train --out) on the local model."),
    ] = None,
) -> None:
    """Chat with a persona in the terminal, on the configured model.

    When standard input is not a terminal, reads one message a line and prints each reply on
    its own line as ``NAME: reply``. With ``--model-adapter`` the local provider serves the
    adapter merged into its base (model.adapter_path), converted to GGUF once.
    """
    settings = settings_or_exit()
    _configure_logging(settings, quiet=True)
    if model_adapter is not None:
        settings = _with_adapter(settings, model_adapter)
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


def _with_adapter(settings: Settings, adapter: Path) -> Settings:
    """The settings with ``model.adapter_path`` set, its merged GGUF written (once) first."""
    from pydantic import ValidationError

    from bot.llm.factory import adapter_gguf
    from bot.settings import ModelSettings

    values = {**settings.model.model_dump(), "adapter_path": adapter}
    try:
        model = ModelSettings.model_validate(values)
    except ValidationError as error:
        fail(f"--model-adapter: {error.errors()[0]['msg'].removeprefix('Value error, ')}")
    try:
        with _err.status("merging the adapter into its base, as GGUF (once per adapter)"):
            adapter_gguf(adapter)
    except ModelUnavailableError as error:
        fail(str(error))
    return settings.model_copy(update={"model": model})


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "user"


async def _chat(settings: Settings, persona: str, user: str) -> None:
    from bot.runtime import open_runtime
    from bot.terminal import TerminalChat
    from feedback.privacy import PrivacyStore

    async with open_runtime(settings) as runtime:
        terminal = TerminalChat(
            runtime.engine,
            decisions=runtime.decisions,
            persona=persona,
            user=user,
            privacy=PrivacyStore(runtime.sessions),
        )
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
def personas_show(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw card as JSON.")] = False,
) -> None:
    """Show one persona: a readable summary, or the raw card with --json."""
    registry = _registry(settings_or_exit())
    try:
        persona = registry.get(name)
    except UnknownPersonaError as error:
        fail(str(error))
    from personas import dump_card_json

    if as_json:
        Console().print_json(dump_card_json(persona.card))
        return
    Console().print(_persona_summary(persona))


def _persona_summary(persona: Persona) -> Table:
    """Name, description, voice, boundaries, lorebook and version, as one table."""
    data, greenroom = persona.card.data, persona.greenroom

    def listed(items: list[str]) -> str:
        return "\n".join(f"• {persona.render(item, 'you')}" for item in items) or "(none)"

    book = data.character_book.entries if data.character_book else []
    lore = [
        f"{entry.name or entry.comment or 'entry'}: {', '.join(entry.keys) or '(constant)'}"
        + ("" if entry.enabled else " (disabled)")
        for entry in book
    ]
    version = data.character_version or "unversioned"
    table = Table(title=persona.name, show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("description", persona.render(data.description or "", "you") or "(none)")
    table.add_row("personality", persona.render(data.personality or "", "you") or "(none)")
    table.add_row("voice", listed(greenroom.tone_rules))
    table.add_row("canon", listed(greenroom.canon_facts))
    table.add_row("boundaries", listed(greenroom.boundaries))
    table.add_row("actor-only topics", listed(greenroom.actor_only_topics))
    table.add_row(f"lorebook ({len(lore)})", listed(lore))
    table.add_row("mode", greenroom.mode)
    table.add_row("version", f"{version} ({persona.card.spec}, content {persona.version_hash})")
    return table


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
            picture = Image.open(io.BytesIO(persona.avatar)) if persona.avatar else None
            write_card_png(persona.card, out, image=picture)
    except OSError as error:
        fail(f"cannot write {out}: {error.strerror}")
    Console().print(f"wrote {out}")


_USER_HELP = "The user id (discord:1234, terminal:ann) or a bare name (ann: the terminal's user)."


def _resolve_user(settings: Settings, user: str) -> str:
    """A full id as given; a bare name is the terminal's user of that name, unless only other
    transports' users go by it (then the command lists them and stops)."""
    if ":" in user:
        return user
    from bot.cli_common import with_database
    from feedback.store import ConversationStore

    async def named(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
        return await ConversationStore(sessions).user_ids_named(user)

    terminal_id = f"terminal:{user}"
    matches = with_database(settings, named)
    if not matches or terminal_id in matches:
        return terminal_id
    fail(f"no terminal user {user!r}; users going by that name: {', '.join(matches)}")


@memory_app.command("show")
def memory_show(
    user: Annotated[str, typer.Option(help=_USER_HELP)],
    persona: Annotated[str | None, typer.Option(help="Only this persona's memories.")] = None,
) -> None:
    """List every memory kept about a user, and the history of their facts."""
    settings = settings_or_exit()
    _configure_logging(settings, quiet=True)
    run_async(_memory_show(settings, _resolve_user(settings, user), persona))


async def _memory_show(settings: Settings, user: str, persona: str | None) -> None:
    memory = _open_memory_or_exit(settings)
    try:
        records = await memory.show_user(user_id=user, persona=persona)
        history = await memory.fact_history(user_id=user, persona=persona)
    finally:
        memory.close()
    table = Table("persona", "kind", "text", "source", "when")
    for record in records:
        table.add_row(
            record.persona,
            record.kind,
            record.text,
            record.source,
            f"{record.created_at:%Y-%m-%d %H:%M}",
        )
    console = Console()
    console.print(table if records else f"Nothing is remembered about {user}.")
    if history:
        facts = Table("event", "persona", "key", "old", "new", "when")
        for event in history:
            facts.add_row(
                event.event,
                event.persona,
                event.key,
                event.old_value or "",
                event.new_value or "",
                f"{event.created_at:%Y-%m-%d %H:%M}",
            )
        console.print(facts)


@memory_app.command("forget")
def memory_forget(
    user: Annotated[str, typer.Option(help=_USER_HELP)],
    persona: Annotated[str | None, typer.Option(help="Only this persona's memories.")] = None,
) -> None:
    """Erase a user: memories, facts and pins (one persona, or everything incl. stored turns)."""
    settings = settings_or_exit()
    _configure_logging(settings, quiet=True)
    user = _resolve_user(settings, user)
    removed = run_async(_memory_forget(settings, user, persona))
    Console().print(f"erased {removed} items about {user}")


async def _memory_forget(settings: Settings, user: str, persona: str | None) -> int:
    from bot.runtime import open_runtime

    if persona is not None:
        memory = _open_memory_or_exit(settings)
        try:
            return await memory.forget_persona_user(persona=persona, user_id=user)
        finally:
            memory.close()
    async with open_runtime(settings) as runtime:
        return await runtime.engine.delete_data_for_user(requester="owner", user_id=user)


def _open_memory_or_exit(settings: Settings):  # -> MemoryService
    from bot.runtime import open_memory
    from memory import MemoryStoreError

    try:
        memory = open_memory(settings)
    except MemoryStoreError as error:
        fail(str(error))
    if memory is None:
        fail("memory is switched off (memory.enabled = false)")
    return memory
