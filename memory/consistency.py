"""Consistency rules: does a candidate reply contradict a fact, and how far is it from the voice?

Contradiction is decided by rules, not a model (no NLI model with bundled weights exists here):

1. Key rule: facts extracted from the reply (see :mod:`memory.facts`) against facts extracted from
   canon lines and earlier self-statements with the same key ("I grew up in Lisbon" vs "I grew
   up in Oslo"; "I am 34" vs "I'm 29"; "I have a sister" vs "I don't have a sister"). Score 1.0.
2. Similarity rules, for a reply sentence close to a fact sentence (cosine >= ``gate``): a
   negation present in one but not the other, different numbers, or different named entities
   (capitalized words other than the first of the sentence and "I"). Score = the cosine.

What the reply says about the user is checked against the user's facts the same way: the
reply's second person is read as the user's first ("you live in Oslo" as "I live in Oslo"), so
the key rule applies, and a name the user gave one relation that the reply gives another ("your
cat Pip" when Pip is the user's dog) is a ``relation_mismatch``. Score 1.0.

Drift is ``1 - cosine(reply, voice centroid)``, the centroid being the normalized mean of the
embeddings of the card's example lines and of actor-approved replies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .facts import RELATIONS, ExtractedFact, extract_facts, normalize_relation, split_sentences

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "Conflict",
    "ConsistencyFlag",
    "contradiction_flags",
    "drift_flag",
    "find_conflicts",
    "find_user_conflicts",
    "voice_centroid",
]

_NEGATION_RE = re.compile(r"(?i)\b(?:not|no|never|none|nobody|nothing|neither|nor|\w+n[’']t)\b")
_NUMBER_RE = re.compile(r"\b\d+(?:[.,]\d+)?\b")
_CAPITAL_RE = re.compile(r"\b[A-Z][a-zA-Z'-]+\b")
_NOT_ENTITIES = frozenset(
    {"I", "I'm", "I've", "I'd", "I'll", "Yes", "No", "Oh", "Well", "Sure", "Okay", "OK"}
)


@dataclass(frozen=True)
class Conflict:
    """One contradiction between a reply sentence and a known fact."""

    rule: str
    score: float
    reply_sentence: str
    fact_text: str
    fact_kind: str
    fact_source: str
    detail: dict[str, str]


@dataclass(frozen=True)
class ConsistencyFlag:
    """A consistency signal on a candidate reply; ``evidence`` is JSON-serializable."""

    kind: Literal["contradiction", "drift"]
    score: float
    threshold: float
    over_threshold: bool
    evidence: dict[str, Any] = field(default_factory=dict)


def contradiction_flags(conflicts: Sequence[Conflict], threshold: float) -> list[ConsistencyFlag]:
    """One ``contradiction`` flag per conflict, in the conflicts' order."""
    return [
        ConsistencyFlag(
            kind="contradiction",
            score=round(c.score, 4),
            threshold=threshold,
            over_threshold=c.score >= threshold,
            evidence={
                "rule": c.rule,
                "fact": c.fact_text,
                "fact_kind": c.fact_kind,
                "fact_source": c.fact_source,
                "reply_sentence": c.reply_sentence,
                **c.detail,
            },
        )
        for c in conflicts
    ]


def drift_flag(
    reply_vector: np.ndarray, centroid: np.ndarray, voice_lines: int, threshold: float
) -> ConsistencyFlag:
    """The ``drift`` flag: ``1 - cosine`` of the reply's vector to the voice centroid."""
    similarity = float(reply_vector @ centroid)
    drift = 1.0 - similarity
    return ConsistencyFlag(
        kind="drift",
        score=round(drift, 4),
        threshold=threshold,
        over_threshold=drift >= threshold,
        evidence={"similarity_to_voice": round(similarity, 4), "voice_lines": voice_lines},
    )


def _entities(sentence: str) -> set[str]:
    words = _CAPITAL_RE.findall(sentence)
    first = sentence.split(maxsplit=1)[0].strip("\"'(") if sentence.split() else ""
    return {w for w in words if w not in _NOT_ENTITIES and w != first}


def _normalized(value: str | None) -> str:
    return " ".join((value or "").lower().split())


def find_conflicts(
    reply: str,
    facts: Sequence[tuple[str, str, str]],
    fact_vectors: np.ndarray | None,
    reply_vectors: np.ndarray | None,
    *,
    gate: float,
) -> list[Conflict]:
    """Contradictions between ``reply`` and ``facts`` (``(text, kind, source)`` triples).

    ``fact_vectors`` / ``reply_vectors`` are normalized embeddings of the fact texts and of
    :func:`split_sentences` of the reply (either may be ``None``: then only the key rule runs);
    the caller embeds, so this stays pure and fast.
    """
    conflicts: list[Conflict] = []
    reply_facts = extract_facts(reply)
    seen: set[tuple[str, str]] = set()
    for fact_text, kind, source in facts:
        known: list[ExtractedFact] = extract_facts(fact_text)
        for said in reply_facts:
            for fact in known:
                if fact.attribute != said.attribute or fact.value is None or said.value is None:
                    continue
                if _normalized(fact.value) == _normalized(said.value):
                    continue
                seen.add((said.sentence, fact_text))
                conflicts.append(
                    Conflict(
                        rule="value_mismatch",
                        score=1.0,
                        reply_sentence=said.sentence,
                        fact_text=fact_text,
                        fact_kind=kind,
                        fact_source=source,
                        detail={
                            "key": said.attribute,
                            "expected": fact.value,
                            "found": said.value,
                        },
                    )
                )
    if fact_vectors is None or reply_vectors is None or not len(facts):
        return conflicts
    sentences = split_sentences(reply)
    similarity = reply_vectors @ fact_vectors.T
    for i, sentence in enumerate(sentences):
        for j, (fact_text, kind, source) in enumerate(facts):
            score = float(similarity[i, j])
            if score < gate or (sentence, fact_text) in seen:
                continue
            rule, detail = _similarity_rule(sentence, fact_text)
            if rule is None:
                continue
            conflicts.append(Conflict(rule, score, sentence, fact_text, kind, source, detail))
    conflicts.sort(key=lambda c: c.score, reverse=True)
    return conflicts


def _similarity_rule(sentence: str, fact: str) -> tuple[str | None, dict[str, str]]:
    neg_reply = bool(_NEGATION_RE.search(sentence))
    neg_fact = bool(_NEGATION_RE.search(fact))
    if neg_reply != neg_fact:
        return "negation_mismatch", {"negated": "reply" if neg_reply else "fact"}
    numbers_reply = set(_NUMBER_RE.findall(sentence))
    numbers_fact = set(_NUMBER_RE.findall(fact))
    if numbers_reply and numbers_fact and not numbers_reply & numbers_fact:
        return "number_mismatch", {
            "expected": ", ".join(sorted(numbers_fact)),
            "found": ", ".join(sorted(numbers_reply)),
        }
    entities_reply = _entities(sentence)
    entities_fact = _entities(fact)
    if entities_reply and entities_fact and not entities_reply & entities_fact:
        return "entity_mismatch", {
            "expected": ", ".join(sorted(entities_fact)),
            "found": ", ".join(sorted(entities_reply)),
        }
    return None, {}


#: Second person as the user's first person, longest phrases first.
_AS_USER = (
    (re.compile(r"(?i)\byou(?:'re|’re| are)\b"), "I am"),
    (re.compile(r"(?i)\byou(?:'ve|’ve)\b"), "I have"),
    (re.compile(r"(?i)\byour\b"), "my"),
    (re.compile(r"(?i)\byou\b"), "I"),
)
#: "your dog Pip", "your dog, Pip", "Pip, your dog".
_NAMED_RELATION = re.compile(
    rf"(?i:\byour ({RELATIONS}))(?:,)? ((?-i:[A-Z])[\w'-]+)"
    rf"|\b((?-i:[A-Z])[\w'-]+),? (?i:your ({RELATIONS}))\b"
)


def _as_user(sentence: str) -> str:
    for pattern, first_person in _AS_USER:
        sentence = pattern.sub(first_person, sentence)
    return sentence


def find_user_conflicts(reply: str, user_facts: Sequence[tuple[str, str, str]]) -> list[Conflict]:
    """Contradictions between what ``reply`` says about the user and the user's facts
    (``(key, value, statement)`` as memory keeps them)."""
    conflicts: list[Conflict] = []
    known = {key: (value, statement) for key, value, statement in user_facts}
    names = {
        _normalized(value): (key, statement)
        for key, value, statement in user_facts
        if key.startswith("relation:")
    }
    for sentence in split_sentences(reply):
        for said in extract_facts(_as_user(sentence)):
            value, statement = known.get(said.attribute, (None, ""))
            if value is None or said.value is None or _normalized(value) == _normalized(said.value):
                continue
            conflicts.append(
                Conflict(
                    "value_mismatch",
                    1.0,
                    sentence,
                    statement,
                    "user_fact",
                    "user",
                    {"key": said.attribute, "expected": value, "found": said.value},
                )
            )
        for match in _NAMED_RELATION.finditer(sentence):
            relation = normalize_relation(match.group(1) or match.group(4))
            name = match.group(2) or match.group(3)
            key, statement = names.get(_normalized(name), ("", ""))
            if not key or key == f"relation:{relation}":
                continue
            conflicts.append(
                Conflict(
                    "relation_mismatch",
                    1.0,
                    sentence,
                    statement,
                    "user_fact",
                    "user",
                    {"name": name, "expected": key.partition(":")[2], "found": relation},
                )
            )
    return conflicts


def voice_centroid(vectors: np.ndarray) -> np.ndarray | None:
    """Normalized mean of ``vectors`` (rows), or ``None`` when there are none."""
    if vectors.size == 0:
        return None
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return None if norm == 0 else (mean / norm).astype(np.float32)
