"""The scoring rubric: dimensions scored 1 to 5, each score with an anchored description.

A deployment defines its dimensions (settings group ``rubric``); a persona card may add its own
under ``data.extensions.greenroom.rubric`` (same shape). Every score also carries the
unsafe/invalid flag, which is not a dimension and is always required. The rubric's version is
the first 12 hex digits of the SHA-256 of the canonical JSON of its dimension list: any change
to a name, label, anchor or the order makes a new version, and each stored score keeps the
version it was given under.

Limits follow what the Discord console can show (a select option's description holds 100
characters, a modal label 45): a label is at most 45 characters, an anchor at most 100, and a
rubric at most :data:`MAX_DIMENSIONS` dimensions.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "DEFAULT_DIMENSIONS",
    "MAX_DIMENSIONS",
    "MAX_SCORE_TEXT",
    "MISSING_UNSAFE",
    "RESERVED_NAMES",
    "Dimension",
    "Rubric",
    "RubricError",
    "ScoreError",
    "Scores",
]

#: Dimensions of one rubric, deployment and card together (the console shows them in at most
#: four modals of selects).
MAX_DIMENSIONS = 16
#: The longest ``name=value ...`` text :meth:`Rubric.parse_scores` reads.
MAX_SCORE_TEXT = 600
#: Names a dimension cannot take: the flag and the overall score ride beside the dimensions.
RESERVED_NAMES = frozenset({"unsafe", "overall"})
#: What a score without the unsafe/invalid flag is told.
MISSING_UNSAFE = (
    "the unsafe flag is missing: every score says whether the reply is unsafe or invalid "
    "(unsafe=yes or unsafe=no)"
)
_NAME = re.compile(r"[a-z0-9_]{1,24}")
_YES = {"yes", "y", "true", "1"}
_NO = {"no", "n", "false", "0"}


class RubricError(ValueError):
    """A rubric definition is wrong (settings or a card); the message names what and where."""


class ScoreError(ValueError):
    """Scores an actor gave are wrong; the message names what. Nothing was stored."""


class Dimension(BaseModel):
    """One scored dimension: ``name`` (``a-z0-9_``, at most 24), a ``label`` for people (at most
    45 characters, Discord's modal label limit), and an anchored description of each score 1
    to 5 (each at most 100 characters, Discord's select option description limit)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    label: str = Field(min_length=1, max_length=45)
    anchors: dict[int, str]

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"dimension name {value!r} must be 1 to 24 of a-z, 0-9 and _")
        if value in RESERVED_NAMES:
            raise ValueError(f"dimension name {value!r} is reserved (unsafe and overall are)")
        return value

    @field_validator("anchors")
    @classmethod
    def _check_anchors(cls, value: dict[int, str]) -> dict[int, str]:
        if sorted(value) != [1, 2, 3, 4, 5]:
            raise ValueError(
                f"anchors must describe exactly the scores 1 to 5, got {sorted(value)}"
            )
        for score, text in value.items():
            if not text.strip() or len(text) > 100:
                raise ValueError(f"anchor {score} must be 1 to 100 characters")
        return dict(sorted(value.items()))

    def canonical(self) -> dict[str, Any]:
        """The dimension as the version hashes it (anchors keyed ``"1"`` to ``"5"``)."""
        return {
            "name": self.name,
            "label": self.label,
            "anchors": {str(k): v for k, v in self.anchors.items()},
        }


def _dimension(
    name: str, label: str, one: str, two: str, three: str, four: str, five: str
) -> Dimension:
    return Dimension(name=name, label=label, anchors={1: one, 2: two, 3: three, 4: four, 5: five})


#: The deployment's dimensions unless the settings say otherwise.
DEFAULT_DIMENSIONS: tuple[Dimension, ...] = (
    _dimension(
        "fidelity",
        "Persona fidelity",
        "Breaks character or contradicts the card's canon.",
        "Recognisably the persona, with a clear slip in facts or values.",
        "In character, but generic: any persona could have said it.",
        "In character and consistent with canon, with minor drift.",
        "Unmistakably this persona: canon, values and boundaries all held.",
    ),
    _dimension(
        "voice",
        "Voice and tone",
        "Wrong voice entirely: register, diction or length are off.",
        "The voice shows in places but the tone fights the moment.",
        "Acceptable voice; flat or slightly off tone.",
        "The persona's voice, with a tone that suits the moment.",
        "Distinctive voice and pitch-perfect tone for this moment.",
    ),
    _dimension(
        "resonance",
        "Emotional resonance",
        "Ignores or misreads what the user feels; could hurt.",
        "Notices the feeling but answers it clumsily or coldly.",
        "Polite acknowledgement, no real connection.",
        "Meets the user's feeling with warmth that fits the persona.",
        "Moving: the user would feel truly heard.",
    ),
    _dimension(
        "memory",
        "Memory consistency",
        "Contradicts what the user or persona said before.",
        "Forgets something it should plainly remember.",
        "No memory needed, or uses it without error or benefit.",
        "Uses earlier turns or memories correctly.",
        "Weaves remembered details in naturally and correctly.",
    ),
)


@dataclass(frozen=True, slots=True)
class Scores:
    """One actor's rubric scores on a reply, checked against a rubric.

    ``scores`` maps dimension names to 1..5 (dimensions left out were not scored); ``unsafe``
    is the required unsafe/invalid flag; ``rating`` the optional overall 1..5.
    """

    scores: dict[str, int]
    unsafe: bool
    rubric_version: str
    rating: int | None = None


def _checked(raw: Dimension | Mapping[str, Any], where: str) -> Dimension:
    """``raw`` as a :class:`Dimension`, or :class:`RubricError` naming ``where`` and what."""
    if isinstance(raw, Dimension):
        return raw
    try:
        return Dimension.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        field_name = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise RubricError(f"{where}{f' ({field_name})' if field_name else ''}: {message}") from None


def _is_score(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5


@dataclass(frozen=True, slots=True)
class Rubric:
    """An effective rubric: its dimensions in order and its version. Build with :meth:`of`."""

    dimensions: tuple[Dimension, ...]
    version: str
    _by_name: dict[str, Dimension] = field(repr=False, compare=False)

    @classmethod
    def of(cls, dimensions: Sequence[Dimension | Mapping[str, Any]]) -> Rubric:
        """The rubric of ``dimensions``; :class:`RubricError` when one is malformed, a name
        repeats, or there are none or more than :data:`MAX_DIMENSIONS`."""
        checked = [_checked(raw, f"dimension {n}") for n, raw in enumerate(dimensions, 1)]
        if not checked:
            raise RubricError("a rubric needs at least one dimension")
        if len(checked) > MAX_DIMENSIONS:
            raise RubricError(
                f"a rubric has at most {MAX_DIMENSIONS} dimensions, not {len(checked)}"
            )
        names = [dimension.name for dimension in checked]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise RubricError(f"dimension {repeated[0]!r} is defined twice")
        canonical = json.dumps(
            [dimension.canonical() for dimension in checked],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        version = hashlib.sha256(canonical.encode()).hexdigest()[:12]
        return cls(tuple(checked), version, {d.name: d for d in checked})

    def extended(self, extra: Sequence[Dimension | Mapping[str, Any]]) -> Rubric:
        """This rubric with a card's dimensions after its own (a new version when any);
        :class:`RubricError` when one is malformed or takes a name this rubric has."""
        if not extra:
            return self
        added = [_checked(raw, f"card dimension {n}") for n, raw in enumerate(extra, 1)]
        for dimension in added:
            if dimension.name in self._by_name:
                raise RubricError(
                    f"card dimension {dimension.name!r} is already in the deployment's rubric"
                )
        return Rubric.of([*self.dimensions, *added])

    @property
    def names(self) -> tuple[str, ...]:
        """The dimension names, in order."""
        return tuple(self._by_name)

    def __getitem__(self, name: str) -> Dimension:
        return self._by_name[name]

    def check(
        self, scores: Mapping[str, object], *, unsafe: object, rating: object = None
    ) -> Scores:
        """Scores as stored, or :class:`ScoreError` naming the first thing wrong: an unknown
        dimension, a score that is not a whole number 1 to 5, a missing unsafe flag, an overall
        rating outside 1 to 5, or nothing scored (no dimension, and not marked unsafe)."""
        unknown = [name for name in scores if name not in self._by_name]
        if unknown:
            raise ScoreError(
                f"unknown dimension {unknown[0]!r}; this rubric has: {', '.join(self.names)}"
            )
        for name, value in scores.items():
            if not _is_score(value):
                raise ScoreError(f"{name}={value}: a score is a whole number from 1 to 5")
        if not isinstance(unsafe, bool):
            raise ScoreError(MISSING_UNSAFE)
        if rating is not None and not _is_score(rating):
            raise ScoreError(f"overall={rating}: the overall score is a whole number from 1 to 5")
        if not scores and not unsafe:
            raise ScoreError(
                f"score at least one dimension ({', '.join(self.names)}), or mark it unsafe"
            )
        ordered = {name: cast("int", scores[name]) for name in self.names if name in scores}
        return Scores(ordered, unsafe, self.version, cast("int | None", rating))

    def parse_scores(self, text: str) -> Scores:
        """Read ``fidelity=4 resonance=5 unsafe=no [overall=4]`` (any order, spaces between)
        and :meth:`check` it; :class:`ScoreError` names the first part that is wrong (also a
        part given twice, a part that is not ``name=value``, and text over
        :data:`MAX_SCORE_TEXT` characters)."""
        if len(text) > MAX_SCORE_TEXT:
            raise ScoreError(f"that is {len(text)} characters; scores fit in {MAX_SCORE_TEXT}")
        scores: dict[str, object] = {}
        unsafe: bool | None = None
        rating: object = None
        seen: set[str] = set()
        for part in text.split():
            name, equals, value = part.partition("=")
            name, value = name.strip().lower(), value.strip().lower()
            if not equals or not name or not value:
                raise ScoreError(f"{part!r} is not name=value (e.g. {self.names[0]}=4)")
            if name in seen:
                raise ScoreError(f"{name} is given twice")
            seen.add(name)
            if name == "unsafe":
                if value not in _YES | _NO:
                    raise ScoreError(f"unsafe={value}: say unsafe=yes or unsafe=no")
                unsafe = value in _YES
                continue
            number: object = int(value) if value.isdigit() and len(value) <= 2 else value
            if name == "overall":
                rating = number
            elif name not in self._by_name:
                raise ScoreError(
                    f"unknown dimension {name!r}; this rubric has: {', '.join(self.names)}"
                )
            else:
                scores[name] = number
        return self.check(scores, unsafe=unsafe, rating=rating)

    def describe(self) -> str:
        """The rubric as text, one dimension a paragraph with its anchors (for terminals)."""
        lines = [f"Rubric {self.version}: score 1-5, and unsafe=yes|no (always required)."]
        for dimension in self.dimensions:
            lines.append(f"{dimension.name} ({dimension.label}):")
            lines += [f"  {score} {text}" for score, text in dimension.anchors.items()]
        return "\n".join(lines)
