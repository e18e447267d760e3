"""Candidates' flags in words, for every console (the Discord embed and the terminal).

A flag is the dict the engine stores on a candidate (``kind`` plus details); this module knows
the kinds the engine writes and shows any other kind by its name and score.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["describe_flag", "describe_flags", "is_urgent"]

#: Longest evidence quote shown for a consistency flag.
EVIDENCE_LIMIT = 200


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_urgent(flags: Sequence[dict[str, Any]]) -> bool:
    """Whether a risk flag among ``flags`` is urgent (self-harm or crisis language)."""
    return any(flag.get("kind") == "risk" and flag.get("urgent") for flag in flags)


def describe_flag(flag: dict[str, Any]) -> str:
    """One line for one flag: risk reasons, a model failure, a withheld urgent reply, or a
    consistency check with its score and the evidence it compared against."""
    kind = flag.get("kind", "flag")
    if kind == "risk":
        return ("🚨 URGENT: " if flag.get("urgent") else "⚠️ ") + ", ".join(flag["reasons"])
    if kind == "generation_failed":
        return f"⚠️ model failed ({flag.get('reason')}); a fallback line was used"
    if kind == "safety_fallback":
        return (
            f"🛟 sent instead of urgent reply #{flag.get('withheld')} that no actor reviewed: "
            "the persona's safety line and help resources"
        )
    over = " **over threshold**" if flag.get("over_threshold") else ""
    evidence = flag.get("evidence") or {}
    detail = evidence.get("fact") or evidence.get("statement") or ""
    score = flag.get("score")
    score_text = f" {score:.2f}" if isinstance(score, int | float) else ""
    sentence = evidence.get("reply_sentence")
    said = f" in “{_clip(str(sentence), EVIDENCE_LIMIT)}”" if sentence else ""
    against = f": “{_clip(str(detail), EVIDENCE_LIMIT)}”" if detail else ""
    return f"{kind}{score_text}{over}{said}{against}"


def describe_flags(flags: Sequence[dict[str, Any]]) -> list[str]:
    """One line per flag, in the order the engine stored them."""
    return [describe_flag(flag) for flag in flags]
