"""What an export selects, and the parsing of the options that say it.

Every bad value raises :class:`ExportError` with one line that says what was wrong; the CLI
prints it and exits with code 2, the HTTP API answers 400 with it.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from feedback.corrections import TAGS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "DEFAULT_GOOD_RATING",
    "FORMATS",
    "LOW_RATING",
    "MAX_DIMENSION_RULES",
    "MAX_MIN_REVIEWS",
    "DimensionRule",
    "ExportError",
    "ExportFilter",
    "check_dimensions",
    "check_format",
    "parse_dimension",
    "parse_fraction",
    "parse_split",
    "parse_tags",
    "parse_time",
]

#: The export formats, in the order ``--dry-run`` lists them.
FORMATS = ("openai-sft", "openai-dpo", "trl-sft", "trl-dpo", "trl-kto", "oasst")
#: A reply whose mean actor rating reaches this is "good" unless ``--min-rating`` says otherwise.
DEFAULT_GOOD_RATING = 4
#: A reply whose mean actor rating is at most this is "bad" (KTO label ``false``).
LOW_RATING = 2
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
#: ``--min-reviews`` above this is surely a typo (an item takes a handful of reviews).
MAX_MIN_REVIEWS = 100
#: ``--dimension`` rules one export takes (a rubric has at most 16 dimensions).
MAX_DIMENSION_RULES = 16
_RULE = re.compile(r"\s*([A-Za-z0-9_]+)\s*(>=|<=|==|=|>|<)\s*(\S+)\s*")
_DIMENSION_NAME = re.compile(r"[a-z0-9_]{1,24}")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "=": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
}


@dataclass(frozen=True, slots=True)
class DimensionRule:
    """``--dimension fidelity>=4``: the consensus score of a dimension compared with a value."""

    name: str
    op: str
    value: int

    def passes(self, score: float | None) -> bool:
        """Whether a consensus ``score`` satisfies the rule (no score never does)."""
        return score is not None and _COMPARE[self.op](score, self.value)

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


def parse_dimension(text: str) -> DimensionRule:
    """``fidelity>=4`` (also ``<=``, ``>``, ``<``, ``=``): a rubric dimension (or ``overall``),
    an operator and a whole score 1 to 5."""
    found = _RULE.fullmatch(text) if len(text) <= 64 else None
    if found is None:
        raise ExportError(
            f"--dimension {text[:64]!r} is not NAME OP SCORE; write e.g. fidelity>=4 "
            "(operators >=, <=, >, <, =)"
        )
    name, op, raw = found.groups()
    if not _DIMENSION_NAME.fullmatch(name):
        raise ExportError(
            f"--dimension {text!r}: {name!r} is not a dimension name (a-z, 0-9, _; at most 24)"
        )
    if not (raw.isdigit() and 1 <= int(raw) <= 5):
        raise ExportError(f"--dimension {text!r}: the score is a whole number 1 to 5, not {raw!r}")
    return DimensionRule(name, "=" if op == "==" else op, int(raw))


def parse_fraction(value: str | float, *, option: str) -> float:
    """A number from 0 to 1 (``0.6``), for ``--min-agreement`` and ``--min-trust``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ExportError(f"{option} is a number from 0 to 1, not {value!r}") from None
    if not (math.isfinite(number) and 0 <= number <= 1):
        raise ExportError(f"{option} is a number from 0 to 1, not {value}")
    return number


def check_dimensions(flt: ExportFilter, known: Iterable[str]) -> None:
    """:class:`ExportError` when a ``--dimension`` rule names a dimension not in ``known`` (the
    rubric's dimensions, the cards', and ``overall``)."""
    names = sorted(set(known))
    for rule in flt.dimensions:
        if rule.name not in names:
            raise ExportError(
                f"--dimension {rule}: unknown dimension {rule.name!r}; use one of: "
                f"{', '.join(names)}"
            )


class ExportError(ValueError):
    """An export option is wrong, or the output cannot be written; the message says which."""


@dataclass(frozen=True)
class ExportFilter:
    """Which user turns and replies an export takes.

    ``since``/``until`` bound the time of the user turn (``since`` inclusive, ``until``
    exclusive), both timezone-aware (naive values are taken as UTC). ``min_rating`` replaces
    :data:`DEFAULT_GOOD_RATING` as the mean rating that makes a rated reply good. ``tags`` keeps
    records whose target reply (SFT reply, DPO chosen, KTO completion, any reply of an oasst
    tree) carries at least one of them.

    The review filters apply to the same target reply as ``min_rating`` (see
    :mod:`feedback.exports.records`, ``quality``): ``min_reviews`` reviews at least,
    ``min_agreement`` (0-1) the share of its reviews agreeing on ``acceptable``,
    ``min_trust`` (0-1) the mean trust weight of the actors who decided it, and each of
    ``dimensions`` on its consensus scores. A reply without the figure does not pass.
    """

    since: datetime | None = None
    until: datetime | None = None
    persona: str | None = None
    min_rating: int | None = None
    tags: tuple[str, ...] = ()
    min_reviews: int | None = None
    min_agreement: float | None = None
    min_trust: float | None = None
    dimensions: tuple[DimensionRule, ...] = ()

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=UTC))
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ExportError(
                f"the time range is empty: --since {self.since.isoformat()} is not before "
                f"--until {self.until.isoformat()}"
            )
        if self.min_rating is not None and not 1 <= self.min_rating <= 5:
            raise ExportError(f"--min-rating is 1 to 5, not {self.min_rating}")
        object.__setattr__(self, "tags", parse_tags(self.tags))
        if self.min_reviews is not None and not 1 <= self.min_reviews <= MAX_MIN_REVIEWS:
            raise ExportError(f"--min-reviews is 1 to {MAX_MIN_REVIEWS}, not {self.min_reviews}")
        for name in ("min_agreement", "min_trust"):
            value = getattr(self, name)
            if value is not None:
                option = "--" + name.replace("_", "-")
                object.__setattr__(self, name, parse_fraction(value, option=option))
        rules = tuple(
            rule if isinstance(rule, DimensionRule) else parse_dimension(rule)
            for rule in self.dimensions
        )
        if len(rules) > MAX_DIMENSION_RULES:
            raise ExportError(f"at most {MAX_DIMENSION_RULES} --dimension rules, not {len(rules)}")
        object.__setattr__(self, "dimensions", rules)

    @property
    def filters_quality(self) -> bool:
        """Whether any review filter (reviews, agreement, trust, dimensions) is set."""
        return bool(
            self.min_reviews is not None
            or self.min_agreement is not None
            or self.min_trust is not None
            or self.dimensions
        )

    @property
    def good_rating(self) -> int:
        """The mean rating from which a rated reply counts as good."""
        return self.min_rating if self.min_rating is not None else DEFAULT_GOOD_RATING


def check_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`FORMATS`, else :class:`ExportError`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    return fmt


def parse_time(value: str, *, option: str = "--since") -> datetime:
    """An ISO 8601 date or date-time (``2025-01-31``, ``2025-01-31T12:00+02:00``); naive is UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ExportError(
            f"{option} {value!r} is not an ISO 8601 date or time (e.g. 2025-01-31T12:00Z)"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_tags(values: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Tags from repeated or comma-separated values, checked against the actor tags."""
    tags: list[str] = []
    for value in values:
        tags.extend(part.strip() for part in value.split(",") if part.strip())
    unknown = [tag for tag in tags if tag not in TAGS]
    if unknown:
        raise ExportError(f"unknown tag {unknown[0]!r}; use one of: {', '.join(TAGS)}")
    return tuple(sorted(set(tags), key=TAGS.index))


def parse_split(value: str) -> dict[str, float]:
    """``train=0.9,test=0.1`` as ``{"train": 0.9, "test": 0.1}``; the fractions must sum to 1."""
    split: dict[str, float] = {}
    for part in value.split(","):
        name, sep, fraction = part.partition("=")
        name = name.strip()
        if not sep or not _SPLIT_NAME.fullmatch(name):
            raise ExportError(
                f"bad --split part {part.strip()!r}; write NAME=FRACTION pairs such as "
                "train=0.9,test=0.1"
            )
        if name in split:
            raise ExportError(f"--split names {name!r} twice")
        try:
            number = float(fraction)
        except ValueError:
            raise ExportError(f"--split fraction {fraction.strip()!r} is not a number") from None
        if not (math.isfinite(number) and 0 < number <= 1):
            raise ExportError(f"--split fraction for {name!r} must be above 0 and at most 1")
        split[name] = number
    total = sum(split.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ExportError(f"--split fractions add up to {total:g}, not 1")
    return split
