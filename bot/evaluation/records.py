"""What a stability run records: its settings, every turn, every probe asked and how it scored.

Plain dataclasses, written by :mod:`bot.evaluation.harness` and read by
:mod:`bot.evaluation.report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from personas.probes import ProbeSet

__all__ = [
    "MAX_CONVERSATIONS",
    "MAX_TURNS",
    "ConversationRecord",
    "ProbeRecord",
    "RunResult",
    "StabilityConfig",
    "TurnRecord",
]

#: Turns one conversation may have (a small local model takes seconds a turn; see
#: bench/RESULTS.md, "Persona stability harness").
MAX_TURNS = 200
#: Conversations one run may play.
MAX_CONVERSATIONS = 50


@dataclass(frozen=True, slots=True)
class StabilityConfig:
    """How many conversations of how many turns, probed every ``every`` turns (and before
    the first), from ``seed`` (which opening, which user name and which probe each
    conversation gets)."""

    turns: int = 32
    conversations: int = 5
    every: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.turns <= MAX_TURNS:
            raise ValueError(f"turns must be 1 to {MAX_TURNS}, not {self.turns}")
        if not 1 <= self.conversations <= MAX_CONVERSATIONS:
            raise ValueError(
                f"conversations must be 1 to {MAX_CONVERSATIONS}, not {self.conversations}"
            )
        if not 1 <= self.every <= self.turns:
            raise ValueError(f"every must be 1 to turns ({self.turns}), not {self.every}")

    def probe_depths(self) -> list[int]:
        """The depths (turns played so far) at which probes are asked."""
        return list(range(0, self.turns + 1, self.every))


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One exchange: the user's line and what the user received. ``depth`` counts exchanges
    (1 for the first)."""

    depth: int
    user: str
    user_source: str
    reply: str
    fallback: bool
    flags: list[dict[str, Any]]
    seconds: float


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """One probe asked in a side branch after ``depth`` exchanges, and its verdict."""

    depth: int
    kind: str
    probe: str
    source: str
    ask: str
    answer: str
    passed: bool
    failures: list[str]
    flags: list[dict[str, Any]]
    fallback: bool
    seconds: float


@dataclass
class ConversationRecord:
    """One seeded conversation: who the user was, which opening, its turns and probes."""

    index: int
    user_name: str
    opening: int
    turns: list[TurnRecord] = field(default_factory=list)
    probes: list[ProbeRecord] = field(default_factory=list)

    def user_lines(self) -> list[str]:
        """What the user said, in order (a side-by-side run replays these)."""
        return [turn.user for turn in self.turns]


@dataclass
class RunResult:
    """A whole run: one model and one card version over every conversation."""

    label: str
    persona: str
    persona_version: str
    card_version: str
    model: dict[str, Any]
    #: The simulated user's model, or ``None`` when the user's lines were replayed.
    user_model: dict[str, Any] | None
    config: StabilityConfig
    probes: ProbeSet
    memory: bool
    conversations: list[ConversationRecord] = field(default_factory=list)
    seconds: float = 0.0
    #: Seconds spent in persona turns, simulated-user lines and probes.
    persona_s: float = 0.0
    user_s: float = 0.0
    probe_s: float = 0.0
