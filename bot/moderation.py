"""Which replies must wait for a human actor, and which are urgent.

A candidate is risky when the user's message is emotionally heavy (a keyword list for grief,
crisis and self-harm, plus VADER's compound score, which alone misreads grief), when it touches a
topic the persona's card reserves for actors, or when a consistency flag is over its threshold.
Self-harm and crisis language are urgent: never sent unreviewed. Keyword lists are English only;
they are a floor, not a classifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Risk", "RiskAssessor"]

_SELF_HARM = re.compile(
    r"\b(kill(ing)? my ?self|suicid\w*|end (it all|my life)|want(ed)? to die|wish i were dead|"
    r"self[- ]?harm\w*|hurt(ing)? my ?self|cut(ting)? my ?self|no reason to live|"
    r"better off dead|overdos\w*)\b",
    re.IGNORECASE,
)
_CRISIS = re.compile(
    r"\b(abus(e|ed|ive)|assault(ed)?|rap(e|ed)|panic attack|emergency|can'?t breathe|"
    r"being followed|threaten(ed|ing)|homeless|hopeless)\b",
    re.IGNORECASE,
)
_GRIEF = re.compile(
    r"\b(died|dying|passed away|funeral|griev\w*|grief|miscarriage|terminal|cancer|"
    r"lost my (mom|mum|dad|mother|father|wife|husband|partner|son|daughter|brother|sister|"
    r"friend|baby|dog|cat|grand\w+))\b",
    re.IGNORECASE,
)
#: VADER compound score at or below which a message counts as emotionally heavy.
HEAVY_COMPOUND = -0.6


def _topic_terms(topic: str) -> list[str]:
    """A card's topic phrase as terms: "grief, bereavement or the death of X" gives
    ``grief``, ``bereavement``, ``death of X``."""
    parts = re.split(r",|\bor\b|\band\b|/", topic.lower())
    terms = [re.sub(r"^(the|a|an|someone|being)\s+", "", part.strip()) for part in parts]
    return [term for term in terms if len(term) >= 4]


@dataclass(frozen=True, slots=True)
class Risk:
    """Whether to hold a candidate for an actor, whether it is urgent, and why."""

    hold: bool
    urgent: bool
    reasons: tuple[str, ...]

    def as_flag(self) -> dict[str, Any]:
        """The risk as a stored flag (``kind: risk``)."""
        return {"kind": "risk", "urgent": self.urgent, "reasons": list(self.reasons)}

    @classmethod
    def from_flags(cls, flags: Sequence[dict[str, Any]]) -> Risk:
        """The risk a stored candidate's flags recorded (only held candidates carry one)."""
        flag = next((flag for flag in flags if flag.get("kind") == "risk"), None)
        if flag is None:
            return cls(hold=False, urgent=False, reasons=())
        return cls(hold=True, urgent=bool(flag["urgent"]), reasons=tuple(flag["reasons"]))


class RiskAssessor:
    """Scores a user message and a candidate's flags; regular expressions and a lexicon, cheap
    enough for every turn."""

    @cached_property
    def _vader(self) -> SentimentIntensityAnalyzer:
        return SentimentIntensityAnalyzer()

    def assess(
        self,
        user_text: str,
        *,
        flags: Sequence[dict[str, Any]] = (),
        actor_only_topics: Sequence[str] = (),
    ) -> Risk:
        """The risk of answering ``user_text`` with a candidate carrying ``flags``."""
        reasons: list[str] = []
        urgent = bool(_SELF_HARM.search(user_text))
        if urgent:
            reasons.append("self-harm language")
        if _CRISIS.search(user_text):
            urgent = True
            reasons.append("crisis words")
        if _GRIEF.search(user_text):
            reasons.append("grief")
        compound = self._vader.polarity_scores(user_text[:2000])["compound"]
        if compound <= HEAVY_COMPOUND:
            reasons.append(f"heavy emotion (VADER {compound:.2f})")
        lowered = user_text.lower()
        for topic in actor_only_topics:
            hit = next(
                (t for t in _topic_terms(topic) if re.search(rf"\b{re.escape(t)}", lowered)), None
            )
            if hit:
                reasons.append(f"actor-only topic: {hit}")
        for flag in flags:
            if flag.get("over_threshold"):
                reasons.append(f"{flag.get('kind')} over threshold ({flag.get('score')})")
        return Risk(hold=bool(reasons), urgent=urgent, reasons=tuple(reasons))
