"""``greenroom api`` and ``greenroom tokens ...``: the trainer API server and its tokens.

The functions here are registered on the main Typer app by :mod:`bot.cli`. Errors a user can fix
end the command with one line on standard error and exit code 2.

The pseudonym key is the exports' (:func:`bot.runtime.pseudonym_secret`), so the API and the
files name the same people the same way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Annotated

import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from bot.cli_common import err_console, fail, settings_or_exit, with_database
from bot.cli_trainer import rubric_dimensions
from bot.runtime import pseudonym_secret
from bot.settings import ConfigError
from feedback.api import create_app
from feedback.tokens import SCOPES, TokenError, create_token, list_tokens, revoke_token

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = ["api_command", "event_loop_factory", "tokens_app"]

_log = logging.getLogger(__name__)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``greenroom api`` serves on: uvloop's (installed with ``uvicorn[standard]``,
    as ``uvicorn`` itself would pick it), or asyncio's where uvloop is not available (Windows).

    A page mostly moves bytes between sockets (the database's rows in, the JSON out), and
    uvloop's transports do that in C, for much less CPU (``bench/RESULTS.md``, "API event
    loop")."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


tokens_app = typer.Typer(no_args_is_help=True, help="Manage the trainer API's bearer tokens.")


def api_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
) -> None:
    """Serve the trainer HTTP API (OpenAPI docs at /docs)."""
    settings = settings_or_exit()
    try:
        secret = pseudonym_secret(settings)
    except ConfigError as error:
        fail(str(error))
    logging.basicConfig(
        level=getattr(logging, settings.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def serve(sessions: async_sessionmaker[AsyncSession]) -> None:
        app = create_app(sessions, pseudonym_secret=secret, dimensions=rubric_dimensions(settings))
        config = uvicorn.Config(
            app, host=host, port=port, log_level=settings.log_level.lower(), log_config=None
        )
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        _log.info("trainer API on http://%s:%d (event loop: %s)", host, port, loop)
        await uvicorn.Server(config).serve()

    with_database(settings, serve, user_errors=(TokenError,), loop_factory=event_loop_factory())


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="A unique name: 1-64 of A-Z a-z 0-9 _ . -")],
    scope: Annotated[
        str, typer.Option(help=f"One of: {', '.join(SCOPES)} (lease includes read).")
    ] = "read",
) -> None:
    """Create a token and print it once; only its hash is stored."""
    settings = settings_or_exit()
    token = with_database(
        settings, lambda sessions: create_token(sessions, name, scope), user_errors=(TokenError,)
    )
    typer.echo(token)
    err_console.print(
        f"Token {name!r} (scope {scope}) created. Store it now: it cannot be shown again.",
        highlight=False,
    )


@tokens_app.command("revoke")
def tokens_revoke(name: Annotated[str, typer.Option(help="The token's name.")]) -> None:
    """Revoke a token; requests using it are refused from now on."""
    settings = settings_or_exit()
    with_database(
        settings, lambda sessions: revoke_token(sessions, name), user_errors=(TokenError,)
    )
    typer.echo(f"Revoked {name}.")


@tokens_app.command("list")
def tokens_list() -> None:
    """List the tokens (names, scopes, dates; never the tokens themselves)."""
    settings = settings_or_exit()
    tokens = with_database(settings, list_tokens, user_errors=(TokenError,))
    table = Table("name", "scope", "created", "revoked")
    for token in tokens:
        table.add_row(
            token.name,
            token.scope,
            f"{token.created_at:%Y-%m-%d %H:%M}",
            "" if token.revoked_at is None else f"{token.revoked_at:%Y-%m-%d %H:%M}",
        )
    Console().print(table)
