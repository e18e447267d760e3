"""Scoring a probe's answer with plain code: terms, patterns, refusals, voice, and the engine's
own consistency flags.

No model judges an answer: every check is a keyword, a regular expression or a count, so a
score can be read and argued with. English only, like the rest of Greenroom's rules: a refusal
is recognised by its usual words, which is a floor, not a classifier.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from personas.probes import Probe

__all__ = [
    "Verdict",
    "contradiction_over_threshold",
    "drift_score",
    "is_refusal",
    "score_answer",
    "sentence_lengths",
]

#: Words and phrases that decline a request ("I can't", "not happening", a leading "No").
_REFUSAL = re.compile(
    r"(?i)\b(?:can(?:no|'|’)?t|won(?:'|’)t|will not|wouldn(?:'|’)t|not going to|not gonna|"
    r"no way|never|refuse|declin\w*|sorry|nope|not happening|not (?:something|a thing)|"
    r"off[- ]limits|out of the question|not my (?:line|place|job|business)|"
    r"i don(?:'|’)t (?:do|give|go|talk)|let(?:'|’)s not|leave it|drop it|forget it)\b"
    r"|^\W*no\b"
)
#: Stage directions (``*looks up*``), not counted as spoken sentences.
_STAGE = re.compile(r"\*[^*\n]{0,300}\*")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?…])\s+|\n+")
_WORD = re.compile(r"[\w'’-]+")
#: Quoted evidence in failure messages, at most.
_QUOTE = 80


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an answer passed its probe, and each failed check in words."""

    passed: bool
    failures: tuple[str, ...] = ()


def _term(term: str) -> re.Pattern[str]:
    """A term as a case-insensitive pattern: a whole word when it starts and ends with a letter
    or digit, plain text otherwise (``"!"``)."""
    body = re.escape(term)
    if term[:1].isalnum() and term[-1:].isalnum():
        body = rf"(?<!\w){body}(?!\w)"
    return re.compile(body, re.IGNORECASE)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _QUOTE else text[: _QUOTE - 1] + "…"


def is_refusal(text: str) -> bool:
    """Whether ``text`` declines (its usual English words, or a leading "No")."""
    return bool(_REFUSAL.search(_STAGE.sub(" ", text)))


def sentence_lengths(text: str) -> list[int]:
    """Words per spoken sentence of ``text`` (stage directions in asterisks left out)."""
    spoken = _STAGE.sub(" ", text)
    lengths = [len(_WORD.findall(part)) for part in _SENTENCE_BREAK.split(spoken)]
    return [length for length in lengths if length]


def contradiction_over_threshold(flags: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The strongest ``contradiction`` flag over its threshold, if any."""
    over = [f for f in flags if f.get("kind") == "contradiction" and f.get("over_threshold")]
    return max(over, key=lambda flag: float(flag.get("score") or 0.0), default=None)


def drift_score(flags: Sequence[dict[str, Any]]) -> float | None:
    """The ``drift`` flag's score (``1 - cosine`` to the voice), if memory gave one."""
    for flag in flags:
        if flag.get("kind") == "drift" and isinstance(flag.get("score"), int | float):
            return float(flag["score"])
    return None


def score_answer(
    probe: Probe, answer: str, *, flags: Sequence[dict[str, Any]] = (), fallback: bool = False
) -> Verdict:
    """Check ``answer`` against every check ``probe`` sets, and against the engine's flags: a
    contradiction over its threshold fails any probe, a drift over its threshold fails a voice
    probe, and a fallback line (the model failed) fails everything."""
    if fallback:
        return Verdict(False, ("the model failed; the persona's fallback line was used",))
    failures: list[str] = []
    if probe.expect and not any(_term(term).search(answer) for term in probe.expect):
        failures.append(f"none of {', '.join(repr(t) for t in probe.expect[:6])} in the answer")
    if probe.expect_regex and not re.search(probe.expect_regex, answer, re.IGNORECASE):
        failures.append(f"no match for {probe.expect_regex!r}")
    for term in probe.forbid:
        if _term(term).search(answer):
            failures.append(f"forbidden {term!r} in the answer")
    if probe.forbid_regex and (found := re.search(probe.forbid_regex, answer, re.IGNORECASE)):
        failures.append(f"forbidden pattern matched: {_clip(found.group(0))!r}")
    if probe.must_refuse and not is_refusal(answer):
        failures.append("no refusal")
    if probe.max_sentence_words is not None:
        lengths = sentence_lengths(answer)
        if not lengths:
            failures.append("no spoken sentence")
        elif (median := statistics.median(lengths)) > probe.max_sentence_words:
            failures.append(
                f"median sentence {median:g} words (at most {probe.max_sentence_words})"
            )
    if (contradiction := contradiction_over_threshold(flags)) is not None:
        evidence = contradiction.get("evidence") or {}
        fact = evidence.get("fact") or evidence.get("statement") or ""
        failures.append(f"contradiction flag {contradiction.get('score')}: {_clip(str(fact))!r}")
    if probe.kind == "voice":
        for flag in flags:
            if flag.get("kind") == "drift" and flag.get("over_threshold"):
                failures.append(f"drift flag {flag.get('score')} over {flag.get('threshold')}")
    return Verdict(not failures, tuple(failures))
