"""The terminal transport: a Rich chat on a console, or one reply a line when scripted.

It speaks to the same :class:`~bot.engine.ConversationEngine` as Discord does, with
``transport="terminal"`` and one conversation per user and persona.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, TextIO

from rich.live import Live
from rich.text import Text

from bot.engine import IncomingMessage, Refusal
from personas import UnknownPersonaError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from rich.console import Console

    from bot.engine import ConversationEngine, Reply

__all__ = ["TerminalChat"]

_log = logging.getLogger(__name__)

_HELP = "Commands: /persona NAME to switch, /personas to list, /help, /quit."


class TerminalChat:
    """One user chatting with one persona at a time."""

    def __init__(self, engine: ConversationEngine, *, persona: str, user: str) -> None:
        self.engine = engine
        self.persona = engine.personas.get(persona).name
        self.user = user

    @property
    def user_id(self) -> str:
        """The user's id in storage and memory: ``terminal:<name>``."""
        return f"terminal:{self.user}"

    def _incoming(self, text: str) -> IncomingMessage:
        return IncomingMessage(
            transport="terminal",
            scope=f"terminal:{self.user}",
            user_id=self.user_id,
            user_name=self.user,
            text=text,
            persona=self.persona,
        )

    def _command(self, line: str) -> str | None:
        """Run a ``/command``; returns what to show, or ``None`` to quit."""
        name, _, argument = line[1:].partition(" ")
        argument = argument.strip()
        if name in {"quit", "exit"}:
            return None
        if name == "persona":
            if not argument:
                return f"Usage: /persona NAME. Known: {', '.join(self.engine.personas.names())}"
            try:
                self.persona = self.engine.personas.get(argument).name
            except UnknownPersonaError as error:
                return str(error)
            return f"Now talking with {self.persona}."
        if name == "personas":
            return "Personas: " + ", ".join(self.engine.personas.names())
        if name == "help":
            return _HELP
        return f"Unknown command /{name}. {_HELP}"

    async def run_script(self, lines: Iterable[str], out: TextIO, err: TextIO) -> int:
        """Answer one message a line; print each reply on one line as ``NAME: reply``.

        Returns the number of replies printed. Empty lines are skipped; refusals and command
        output go to ``err`` so ``out`` holds only replies.
        """
        replies = 0
        for raw in lines:
            line = raw.rstrip("\n")
            if line.startswith("/"):
                shown = self._command(line.strip())
                if shown is None:
                    break
                print(shown, file=err, flush=True)
                continue
            result = await self.engine.respond(self._incoming(line))
            if isinstance(result, Refusal):
                if result.reason != "empty":
                    print(f"! {result.notice}", file=err, flush=True)
                continue
            await self.engine.mark_sent(result)
            one_line = " ".join(result.text.split())
            print(f"{result.persona}: {one_line}", file=out, flush=True)
            replies += 1
        return replies

    async def run_interactive(self, console: Console) -> None:
        """A Rich chat loop; nothing typed can end it but ``/quit`` or end of input."""
        persona = self.engine.personas.get(self.persona)
        console.print(f"[bold green]{persona.name}[/]: {persona.greeting(self.user)}")
        console.print(f"[dim]{_HELP}[/]")
        while True:
            try:
                line = await asyncio.to_thread(console.input, f"[bold]{self.user}[/]> ")
            except (EOFError, KeyboardInterrupt):
                console.print()
                return
            if line.strip().startswith("/"):
                shown = self._command(line.strip())
                if shown is None:
                    return
                console.print(f"[dim]{shown}[/]")
                continue
            try:
                reply = await self._stream_reply(console, line)
            except Exception:  # the loop survives anything one turn does
                _log.exception("turn failed")
                console.print("[red]Something went wrong with that message; try again.[/]")
                continue
            if reply is not None:
                await self.engine.mark_sent(reply)

    async def _stream_reply(self, console: Console, line: str) -> Reply | None:
        shown = Text()
        header = Text(f"{self.persona}: ", style="bold green")
        with Live(header, console=console, refresh_per_second=12, transient=True) as live:

            async def on_token(token: str) -> None:
                shown.append(token)
                live.update(header + shown)

            result = await self.engine.respond(self._incoming(line), on_token=on_token)
        if isinstance(result, Refusal):
            if result.reason != "empty":
                console.print(f"[yellow]{result.notice}[/]")
            return None
        console.print(header + Text(result.text))
        if result.fallback:
            console.print("[dim](the model failed; a fallback line was sent and flagged)[/]")
        return result
