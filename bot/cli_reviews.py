"""``greenroom gold import FILE``: a lead imports gold verdicts from a JSONL file.

Registered on the main Typer app by :mod:`bot.cli`. The operator running the command is a lead
(as the terminal's is); the verdicts are recorded as theirs (``terminal:<login>`` unless ``--by``
names another). The file's format and limits are :mod:`feedback.gold`'s: one JSON object a line,
every line stored or none, each problem named with its line number (exit code 2).
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from bot.cli_common import fail, settings_or_exit, with_database
from bot.runtime import review_policy
from feedback.gold import MAX_LINE_CHARS, GoldImportError, GoldStore
from personas import PersonaRegistry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import TextIO

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from bot.settings import Settings
    from feedback.rubric import Rubric

__all__ = ["gold_app"]

gold_app = typer.Typer(
    no_args_is_help=True,
    help="Gold verdicts: leads' reference verdicts, mixed blind into the review queue.",
)


def _bounded_lines(handle: TextIO) -> Iterator[str]:
    """The file's lines; a line over :data:`~feedback.gold.MAX_LINE_CHARS` is cut just past the
    limit (the import refuses it by its length) and its rest skipped, so one huge line is
    never held in memory."""
    while line := handle.readline(MAX_LINE_CHARS + 2):
        if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
            while (rest := handle.readline(MAX_LINE_CHARS)) and not rest.endswith("\n"):
                pass
        yield line


def _rubrics(settings: Settings) -> Callable[[str], Rubric]:
    """A persona's rubric, as the decision service makes it: the deployment's dimensions, then
    the card's."""
    personas = PersonaRegistry.load(settings.persona_search_dirs)
    deployment = settings.rubric.rubric()
    return lambda name: deployment.extended(personas.get(name).greenroom.rubric)


@gold_app.command("import")
def gold_import(
    path: Annotated[Path, typer.Argument(help="A JSONL file: one gold verdict a line.")],
    by: Annotated[
        str | None, typer.Option(help="The lead's terminal name (default: your login).")
    ] = None,
) -> None:
    """Import gold verdicts: every line is stored, or none (each problem named with its line)."""
    settings = settings_or_exit()
    lead = f"terminal:{by or _login_name()}"
    rubric_for = _rubrics(settings)

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        store = GoldStore(sessions, review_policy(settings), rubric_for)
        with path.open(encoding="utf-8", newline="") as handle:
            return await store.import_lines(_bounded_lines(handle), by=lead)

    try:
        imported = with_database(settings, work, user_errors=(GoldImportError,))
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")
    except UnicodeDecodeError as error:
        fail(f"{path} is not UTF-8 text (byte {error.start})")
    Console(soft_wrap=True).print(
        f"imported {imported} gold verdicts from {path} (by {lead})", highlight=False
    )


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"
