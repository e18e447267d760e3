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

from bot.engine import IncomingMessage, Refusal, TakenOver
from bot.llm import GenerationError
from feedback.corrections import TAGS, Actor, InvalidAction
from personas import UnknownPersonaError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from rich.console import Console

    from bot.engine import ConversationEngine, Reply
    from feedback.corrections import CorrectionStore
    from feedback.privacy import PrivacyStore

__all__ = ["TerminalChat"]

_log = logging.getLogger(__name__)

_HELP = (
    "Commands: /persona NAME, /personas, /rate N [TAGS...], /rewrite TEXT, /regen, "
    "/consent on|off, /help, /quit. Tags: " + ", ".join(TAGS) + "."
)


class TerminalChat:
    """One user chatting with one persona at a time."""

    def __init__(
        self,
        engine: ConversationEngine,
        *,
        persona: str,
        user: str,
        corrections: CorrectionStore,
        privacy: PrivacyStore,
    ) -> None:
        self.engine = engine
        self.persona = engine.personas.get(persona).name
        self.user = user
        self.corrections = corrections
        self.privacy = privacy
        #: The reply the user last received: what /rate, /rewrite and /regen act on.
        self.last_reply_id: int | None = None

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

    async def _pass_to_actor(self, line: str) -> str:
        """Store a line the model must not answer (an actor holds the conversation)."""
        await self.engine.record_user_turn(self._incoming(line))
        return f"An actor is speaking for {self.persona} now; your message was passed on."

    @property
    def actor(self) -> Actor:
        """A solo user correcting their persona acts as their own actor."""
        return Actor(self.user_id, self.user)

    async def _command(self, line: str) -> tuple[str | None, str | None]:
        """Run a ``/command``: returns (a notice, a new reply line), or (None, None) to quit."""
        name, _, argument = line[1:].partition(" ")
        argument = argument.strip()
        if name in {"quit", "exit"}:
            return None, None
        if name in {"rate", "rewrite", "regen", "consent"}:
            try:
                return await self._correction(name, argument)
            except InvalidAction as error:
                return str(error), None
        return self._setting(name, argument), None

    async def _correction(self, name: str, argument: str) -> tuple[str, str | None]:
        if name == "consent":
            if argument not in {"on", "off"}:
                return "Usage: /consent on|off", None
            await self.privacy.set_consent(self.user_id, argument == "on")
            return f"Training consent is {argument}.", None
        if self.last_reply_id is None:
            return f"Nothing to /{name} yet: talk to {self.persona} first.", None
        if name == "rate":
            parts = argument.split()
            if not parts or not parts[0].isdigit():
                return "Usage: /rate N [TAGS...], N from 1 to 5", None
            rating_text, *tags = parts
            outcome = await self.corrections.rate(
                self.last_reply_id, actor=self.actor, rating=int(rating_text), tags=tags, key=None
            )
            return (
                outcome.message if outcome.status == "refused" else f"Rated {rating_text}/5."
            ), None
        if name == "rewrite":
            outcome = await self.corrections.rewrite(
                self.last_reply_id, actor=self.actor, text=argument, key=None
            )
            if outcome.status == "refused" or outcome.result_id is None:
                return outcome.message, None
            await self._deliver(outcome.result_id, outcome.replaces)
            return "Rewritten: the persona now remembers your version.", None
        return await self._regenerate()

    async def _regenerate(self) -> tuple[str, str | None]:
        assert self.last_reply_id is not None
        try:
            text, snapshot, flags = await self.engine.regenerate(self.last_reply_id)
        except (GenerationError, LookupError) as error:
            return f"Could not regenerate: {error}", None
        made = await self.corrections.regenerate(
            self.last_reply_id,
            actor=self.actor,
            text=text,
            snapshot=snapshot,
            flags=flags,
            hold_until=None,
            key=None,
        )
        if made.status == "refused" or made.result_id is None:
            return made.message, None
        picked = await self.corrections.approve(made.result_id, actor=self.actor, key=None)
        await self._deliver(made.result_id, picked.replaces)
        return "Regenerated.", f"{self.persona}: {' '.join(text.split())}"

    async def _deliver(self, node_id: int, replaces: int | None) -> None:
        await self.engine.delivered(node_id, external_id=None, replaces=replaces)
        self.last_reply_id = node_id

    def _setting(self, name: str, argument: str) -> str:
        if name == "persona":
            if not argument:
                return f"Usage: /persona NAME. Known: {', '.join(self.engine.personas.names())}"
            try:
                self.persona = self.engine.personas.get(argument).name
            except UnknownPersonaError as error:
                return str(error)
            self.last_reply_id = None
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
                shown, reply_line = await self._command(line.strip())
                if shown is None:
                    break
                print(shown, file=err, flush=True)
                if reply_line is not None:
                    print(reply_line, file=out, flush=True)
                continue
            result = await self.engine.respond(self._incoming(line))
            if isinstance(result, TakenOver):
                print(f"! {await self._pass_to_actor(line)}", file=err, flush=True)
                continue
            if isinstance(result, Refusal):
                if result.reason != "empty":
                    print(f"! {result.notice}", file=err, flush=True)
                continue
            await self.engine.mark_sent(result)
            self.last_reply_id = result.candidate_id
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
                shown, reply_line = await self._command(line.strip())
                if shown is None:
                    return
                console.print(f"[dim]{shown}[/]")
                if reply_line is not None:
                    console.print(reply_line, style="green")
                continue
            try:
                reply = await self._stream_reply(console, line)
            except Exception:  # the loop survives anything one turn does
                _log.exception("turn failed")
                console.print("[red]Something went wrong with that message; try again.[/]")
                continue
            if reply is not None:
                await self.engine.mark_sent(reply)
                self.last_reply_id = reply.candidate_id

    async def _stream_reply(self, console: Console, line: str) -> Reply | None:
        shown = Text()
        header = Text(f"{self.persona}: ", style="bold green")
        with Live(header, console=console, refresh_per_second=12, transient=True) as live:

            async def on_token(token: str) -> None:
                shown.append(token)
                live.update(header + shown)

            result = await self.engine.respond(self._incoming(line), on_token=on_token)
        if isinstance(result, TakenOver):
            console.print(f"[dim]{await self._pass_to_actor(line)}[/]")
            return None
        if isinstance(result, Refusal):
            if result.reason != "empty":
                console.print(f"[yellow]{result.notice}[/]")
            return None
        console.print(header + Text(result.text))
        if result.fallback:
            console.print("[dim](the model failed; a fallback line was sent and flagged)[/]")
        return result
