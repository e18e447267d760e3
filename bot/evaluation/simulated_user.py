"""The simulated user of the stability harness: a scripted opening, then a chat model.

The user model gets the conversation with the roles turned round (the persona's lines as the
other speaker's, the user's own as its replies) under a short system prompt, and writes the
user's next line. Any langchain chat model works: the persona's own model or another one built
by the provider factory. A line it cannot give (failure, nothing left after clean-up, a
repeat of the user's last line, a line of the persona's) is replaced by a stock line
(:data:`bot.evaluation.openings.CONTINUATIONS`), and its source says so.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from bot.llm import GenerationError, generate
from bot.text import clean_reply

from .openings import CONTINUATIONS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from langchain_core.language_models import BaseChatModel

    from personas import Persona

__all__ = ["MAX_USER_CHARS", "SEEN_LINES", "SimulatedUser", "UserLine"]

_log = logging.getLogger(__name__)

#: Longest line the simulated user sends (cut at a word): users of a chat write short lines.
MAX_USER_CHARS = 300
#: Lines of the conversation the user model sees at most (the newest). The window moves in
#: steps of half that, not every turn, so the user model's prompt keeps its prefix between
#: steps and a prompt cache (llama.cpp's, a server's) reuses it.
SEEN_LINES = 16


@dataclass(frozen=True, slots=True)
class UserLine:
    """One line of the simulated user, and where it came from."""

    text: str
    source: Literal["opening", "model", "continuation", "replay"]


class SimulatedUser:
    """Plays one user in one conversation: ``opening`` first, then ``model``.

    ``transcript`` arguments are ``(speaker, text)`` pairs, ``speaker`` being ``"user"`` or
    ``"persona"``, oldest first.
    """

    def __init__(
        self,
        model: BaseChatModel,
        *,
        persona: Persona,
        user_name: str,
        opening: Sequence[str],
        rng: random.Random,
        timeout_s: float = 60.0,
    ) -> None:
        self.model = model
        self.persona = persona
        self.user_name = user_name
        self.opening = tuple(opening)
        self.rng = rng
        self.timeout_s = timeout_s

    def system_prompt(self) -> str:
        """What the user model is told: who it plays, who it talks to, how to write."""
        scenario = self.persona.render(self.persona.card.data.scenario or "", self.user_name)
        setting = f" The setting: {scenario.strip()}" if scenario.strip() else ""
        name = self.persona.name
        return (
            f"You are {self.user_name}, a person chatting casually with {name}.{setting} "
            f"Write only {self.user_name}'s next message: one or two short sentences that answer "
            f"what {name} just said, or ask {name} something new. Never write {name}'s lines "
            "and never describe actions."
        )

    def prompt(self, transcript: Sequence[tuple[str, str]]) -> list[BaseMessage]:
        """The user model's messages: the system prompt, then the recent turns, roles turned."""
        messages: list[BaseMessage] = [SystemMessage(content=self.system_prompt())]
        for speaker, text in transcript[_window_start(len(transcript)) :]:
            if speaker == "persona":
                messages.append(HumanMessage(content=text))
            else:
                messages.append(AIMessage(content=text))
        if len(messages) == 1 or isinstance(messages[-1], AIMessage):
            messages.append(HumanMessage(content="..."))
        return messages

    async def next_line(self, transcript: Sequence[tuple[str, str]]) -> UserLine:
        """The user's next line after ``transcript``."""
        said = sum(1 for speaker, _ in transcript if speaker == "user")
        if said < len(self.opening):
            return UserLine(self.opening[said], "opening")
        try:
            result = await generate(
                self.model,
                self.prompt(transcript),
                timeout_s=self.timeout_s,
                stop=[f"\n{self.persona.name}:", f"\n{self.user_name}:"],
            )
            text = clean_reply(result.text, speaker=self.user_name, others=(self.persona.name,))
        except GenerationError as error:
            _log.info("the user model failed (%s); a stock line stands in", error.reason)
            text = ""
        text = _first_line(text)
        last = next((t for speaker, t in reversed(transcript) if speaker == "user"), None)
        speaks_for_persona = text.casefold().startswith(f"{self.persona.name.casefold()}:")
        if not text or text == last or speaks_for_persona:
            return UserLine(self.rng.choice(CONTINUATIONS), "continuation")
        return UserLine(text, "model")


def _window_start(lines: int) -> int:
    """Where the user model's view of ``lines`` transcript lines starts: at most
    :data:`SEEN_LINES` back, moved in steps of half that, at a line of the persona's."""
    step = SEEN_LINES // 2
    start = 0 if lines <= SEEN_LINES else ((lines - SEEN_LINES) // step + 1) * step
    return start + 1 if start % 2 == 0 and start else start


def _first_line(text: str) -> str:
    """The first non-empty line, stage directions and quotes trimmed, cut to
    :data:`MAX_USER_CHARS` at a word."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = line.strip('"“” ')
    if len(line) > MAX_USER_CHARS:
        line = line[:MAX_USER_CHARS].rsplit(" ", 1)[0]
    return line
