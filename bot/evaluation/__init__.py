"""Measuring personas: the stability harness (``greenroom eval stability``).

Modules, one concern each: :mod:`~bot.evaluation.openings` (the bundled openings),
:mod:`~bot.evaluation.simulated_user`, :mod:`~bot.evaluation.models` (which chat models a run
uses), :mod:`~bot.evaluation.workspace` (a throwaway runtime per run),
:mod:`~bot.evaluation.harness` (conversations and probes through the engine),
:mod:`~bot.evaluation.scoring` (plain-code verdicts), :mod:`~bot.evaluation.records` and
:mod:`~bot.evaluation.report` (JSON and plots). Probes themselves come from the card
(:mod:`personas.probes`).
"""

from __future__ import annotations

from .harness import play, run_stability
from .records import MAX_CONVERSATIONS, MAX_TURNS, RunResult, StabilityConfig
from .report import compare, summarize, write_comparison, write_run

__all__ = [
    "MAX_CONVERSATIONS",
    "MAX_TURNS",
    "RunResult",
    "StabilityConfig",
    "compare",
    "play",
    "run_stability",
    "summarize",
    "write_comparison",
    "write_run",
]
