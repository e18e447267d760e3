"""The terminal transport: a Rich chat on a console, or one reply a line when scripted.

It speaks to the same :class:`~bot.engine.ConversationEngine` and
:class:`~bot.decisions.DecisionService` as Discord does, with ``transport="terminal"`` and one
conversation per user and persona. The user is their own actor: ``/rate``, ``/score``,
``/rewrite`` and ``/regen`` act on the reply they last received, and it is also the outlet that
shows replies. The operator is also an actor and a lead of the review queue: ``/review`` pulls
the next finished turn to review (as in the Discord console), and ``/gold`` gives a reply's gold
verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import TYPE_CHECKING, Any, TextIO

from rich.live import Live
from rich.text import Text

from bot.engine import IncomingMessage, Refusal, TakenOver
from bot.flags import describe_flags
from bot.llm import GenerationError
from feedback.corrections import TAGS, Actor, InvalidAction, check_tags
from feedback.reviews import InvalidVerdict, parse_verdict
from feedback.rubric import RubricError, ScoreError
from personas import UnknownPersonaError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable

    from rich.console import Console

    from bot.decisions import ConversationRef, DecisionService, Delivery
    from bot.engine import ConversationEngine
    from feedback.privacy import PrivacyStore

__all__ = ["TerminalChat"]

_log = logging.getLogger(__name__)

_HELP = (
    "Commands: /persona NAME, /personas, /rate N [TAGS...], "
    "/score DIMENSION=1-5 ... unsafe=yes|no [overall=1-5], /rubric, /rewrite TEXT, /regen, "
    "/review [VERDICT], /gold [#REPLY] VERDICT [-- NOTE], /consent on|off, /help, /quit. "
    "A verdict: acceptable=yes|no unsafe=yes|no overall=1-5 DIMENSION=1-5 ... "
    "Tags: " + ", ".join(TAGS) + "."
)
_VERDICT_USAGE = (
    "acceptable=yes|no unsafe=yes|no overall=1-5 {dimensions} (/rubric: what each means)"
)
_REPLY_REF = re.compile(r"#(?P<id>[0-9]{1,19})")


def _usage(dimensions: tuple[str, ...]) -> str:
    return _VERDICT_USAGE.format(dimensions=" ".join(f"{name}=1-5" for name in dimensions))


class TerminalChat:
    """One user chatting with one persona at a time."""

    def __init__(
        self,
        engine: ConversationEngine,
        *,
        decisions: DecisionService,
        persona: str,
        user: str,
        privacy: PrivacyStore,
    ) -> None:
        self.engine = engine
        self.decisions = decisions
        self.persona = engine.personas.get(persona).name
        self.user = user
        self.privacy = privacy
        #: The reply the user last received: what /rate, /rewrite and /regen act on.
        self.last_reply_id: int | None = None
        #: The review item shown by /review, with its persona, until its verdict is in.
        self.review_item: tuple[int, str] | None = None
        #: Where delivered replies are shown (set by the running loop).
        self._show: Callable[[str, str], None] = lambda persona, text: None
        decisions.add_outlet("terminal", self)

    # -- the decision service's outlet -------------------------------------------------------

    async def deliver(self, delivery: Delivery) -> str | None:
        """Show a reply (a new one, or the version that replaced the last): terminals have no
        message ids."""
        self._show(delivery.persona, delivery.text)
        self.last_reply_id = delivery.node_id
        return None

    async def say(self, conversation: ConversationRef, persona: str, text: str) -> None:
        """A line from the persona that answers nothing."""
        self._show(persona, text)

    @contextlib.asynccontextmanager
    async def waiting(self, conversation: ConversationRef) -> AsyncIterator[None]:
        """Nothing is held in a terminal; nothing to show."""
        yield

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

    async def _command(self, line: str) -> str | None:
        """Run a ``/command``: returns the notice to show, or ``None`` to quit."""
        name, _, argument = line[1:].partition(" ")
        argument = argument.strip()
        if name in {"quit", "exit"}:
            return None
        if name in {"rate", "score", "rewrite", "regen", "consent"}:
            try:
                return await self._correction(name, argument)
            except InvalidAction as error:
                return str(error)
        if name in {"review", "gold"}:
            if self.decisions.reviews is None:
                return "Reviews are not set up."
            try:
                return await (self._review(argument) if name == "review" else self._gold(argument))
            except (InvalidAction, InvalidVerdict) as error:
                return f"Not recorded: {error}."
        return self._setting(name, argument)

    # -- reviews after the fact (the terminal's operator is an actor and a lead) -------------

    async def _review(self, argument: str) -> str:
        """``/review``: the next item to review; ``/review VERDICT``: the verdict on it."""
        reviews = self.decisions.reviews
        assert reviews is not None
        if not argument:
            item = await reviews.next_item(self.user_id)
            if item is None:
                self.review_item = None
                return (
                    "Nothing to review right now: every queued reply has its reviews, or is "
                    "one you decided or reviewed already."
                )
            self.review_item = (item.item_id, item.persona)
            rubric = self.decisions.rubric_for(item.persona)
            lines = [f"To review (yours until {item.expires_at:%H:%M} UTC):"]
            lines += [f"  {name}: {' '.join(text.split())}" for _role, name, text in item.context]
            lines.append(f"  >> {item.persona}'s reply: {' '.join(item.reply.split())}")
            lines.append("Your verdict: /review " + _usage(rubric.names))
            return "\n".join(lines)
        if self.review_item is None:
            return "Run /review first to get an item to review."
        item_id, persona = self.review_item
        verdict = parse_verdict(self.decisions.rubric_for(persona), argument)
        outcome = await reviews.submit(item_id, self.user_id, verdict)
        if outcome.status != "refused":
            self.review_item = None
        return outcome.message

    async def _gold(self, argument: str) -> str:
        """``/gold [#REPLY] VERDICT [-- NOTE]``: the gold verdict on a reply (the last one
        received unless ``#REPLY`` names another)."""
        verdict_text, _, note = argument.partition(" -- ")
        target = self.last_reply_id
        first, _, rest = verdict_text.strip().partition(" ")
        if match := _REPLY_REF.fullmatch(first):
            target, verdict_text = int(match["id"]), rest
        if target is None:
            return f"Nothing to mark gold yet: talk to {self.persona} first, or name #REPLY."
        rubric = await self.decisions.rubric_of_reply(target)
        if not verdict_text.strip():
            return "Usage: /gold [#REPLY] " + _usage(rubric.names) + " [-- NOTE]"
        verdict = parse_verdict(rubric, verdict_text, complete=False)
        return await self.decisions.mark_gold(
            target, lead=self.actor, verdict=verdict, note=note.strip() or None
        )

    async def _score(self, reply_id: int, argument: str) -> str:
        """``/score fidelity=4 resonance=5 unsafe=no [overall=4]`` on the last reply."""
        rubric = await self.decisions.rubric_of_reply(reply_id)
        if not argument:
            return (
                "Usage: /score DIMENSION=1-5 ... unsafe=yes|no [overall=1-5]; dimensions: "
                + ", ".join(f"{d.name} ({d.label})" for d in rubric.dimensions)
                + ". /rubric shows what each score means."
            )
        try:
            parsed = rubric.parse_scores(argument)
        except ScoreError as error:
            return f"Not scored: {error}."
        outcome = await self.decisions.score(
            reply_id,
            actor=self.actor,
            scores=parsed.scores,
            unsafe=parsed.unsafe,
            rating=parsed.rating,
            key=None,
            rubric_version=parsed.rubric_version,
        )
        if outcome.status == "refused":
            return outcome.message
        given = [f"{name} {value}/5" for name, value in parsed.scores.items()]
        if parsed.rating is not None:
            given.append(f"overall {parsed.rating}/5")
        given.append("unsafe" if parsed.unsafe else "not unsafe")
        return f"Scored {', '.join(given)} (rubric {parsed.rubric_version})."

    async def _correction(self, name: str, argument: str) -> str:
        if name == "consent":
            if argument not in {"on", "off"}:
                return "Usage: /consent on|off"
            await self.privacy.set_consent(self.user_id, argument == "on")
            return f"Training consent is {argument}."
        if self.last_reply_id is None:
            return f"Nothing to /{name} yet: talk to {self.persona} first."
        if name == "rate":
            parts = argument.split()
            if not parts or not parts[0].isdigit():
                return "Usage: /rate N [TAGS...], N from 1 to 5"
            rating_text, *tags = parts
            outcome = await self.decisions.rate(
                self.last_reply_id, actor=self.actor, rating=int(rating_text), tags=tags, key=None
            )
            if outcome.status == "refused":
                return outcome.message
            recorded = check_tags(tags)
            tagged = f", tagged {', '.join(recorded)}" if recorded else ""
            return f"Rated {rating_text}/5{tagged}."
        if name == "score":
            return await self._score(self.last_reply_id, argument)
        if name == "rewrite":
            outcome = await self.decisions.rewrite(
                self.last_reply_id, actor=self.actor, text=argument, key=None
            )
            if outcome.status == "refused":
                return outcome.message
            return "Rewritten: the persona now remembers your version."
        try:
            made = await self.decisions.regenerate(
                self.last_reply_id, actor=self.actor, deliver=True
            )
        except (GenerationError, LookupError) as error:
            return f"Could not regenerate: {error}"
        return made.message if made.status == "refused" else "Regenerated."

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
        if name == "rubric":
            try:
                return self.decisions.rubric_for(self.persona).describe()
            except RubricError as error:
                return str(error)
        if name == "help":
            return _HELP
        return f"Unknown command /{name}. {_HELP}"

    async def _answer(self, line: str, **options: Any) -> str | None:
        """Answer one line and show the reply through :meth:`deliver`; returns a notice for
        the user when there is no reply (a takeover, a refusal), else ``None``."""
        result = await self.engine.respond(self._incoming(line), **options)
        if isinstance(result, TakenOver):
            return await self._pass_to_actor(line)
        if isinstance(result, Refusal):
            return result.notice if result.reason != "empty" else None
        await self.decisions.present(result, hold=False)
        notices = []
        if result.risk.urgent:
            notices.append(
                "(urgent: the model's reply was withheld; the persona's safety line and help "
                "resources were sent instead)"
            )
        elif result.fallback:
            notices.append("(the model failed; a fallback line was sent and flagged)")
        notices += [f"flag: {line}" for line in describe_flags(result.flags)]
        return "\n".join(notices) if notices else None

    async def run_script(self, lines: Iterable[str], out: TextIO, err: TextIO) -> int:
        """Answer one message a line; print each reply on one line as ``NAME: reply``.

        Returns the number of replies printed. Empty lines are skipped; refusals and command
        output go to ``err`` so ``out`` holds only replies.
        """
        replies = 0

        def show(persona: str, text: str) -> None:
            nonlocal replies
            print(f"{persona}: {' '.join(text.split())}", file=out, flush=True)
            replies += 1

        self._show = show
        print(f"chatting with {self.persona} as {self.user_id}", file=err, flush=True)
        for raw in lines:
            line = raw.rstrip("\n")
            if line.startswith("/"):
                shown = await self._command(line.strip())
                if shown is None:
                    break
                print(shown, file=err, flush=True)
                continue
            notice = await self._answer(line)
            if notice is not None:
                print(f"! {notice}", file=err, flush=True)
        return replies

    async def run_interactive(self, console: Console) -> None:
        """A Rich chat loop; nothing typed can end it but ``/quit`` or end of input."""
        persona = self.engine.personas.get(self.persona)
        console.print(f"[bold green]{persona.name}[/]: {persona.greeting(self.user)}")
        console.print(
            f"[dim]You are {self.user_id} (see `greenroom memory show --user {self.user}`).[/]"
        )
        console.print(f"[dim]{_HELP}[/]")
        self._show = lambda name, text: console.print(
            Text(f"{name}: ", style="bold green") + Text(text)
        )
        while True:
            try:
                line = await asyncio.to_thread(console.input, f"[bold]{self.user}[/]> ")
            except (EOFError, KeyboardInterrupt):
                console.print()
                return
            if line.strip().startswith("/"):
                shown = await self._command(line.strip())
                if shown is None:
                    return
                console.print(f"[dim]{shown}[/]")
                continue
            try:
                notice = await self._stream_reply(console, line)
            except Exception:  # the loop survives anything one turn does
                _log.exception("turn failed")
                console.print("[red]Something went wrong with that message; try again.[/]")
                continue
            if notice is not None:
                console.print(f"[yellow]{notice}[/]")

    async def _stream_reply(self, console: Console, line: str) -> str | None:
        """Answer ``line``, showing the reply as it is generated (then as delivered)."""
        shown = Text()
        header = Text(f"{self.persona}: ", style="bold green")
        with Live(header, console=console, refresh_per_second=12, transient=True) as live:

            async def on_token(token: str) -> None:
                shown.append(token)
                live.update(header + shown)

            # An urgent line's reply is withheld: never show it, not even while it is written.
            urgent = self.engine.risk.assess(line).urgent
            return await self._answer(line, on_token=None if urgent else on_token)
