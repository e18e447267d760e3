"""What an export selects, and the parsing of the options that say it.

Every bad value raises :class:`ExportError` with one line that says what was wrong; the CLI
prints it and exits with code 2, the HTTP API answers 400 with it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from feedback.corrections import TAGS

__all__ = [
    "DEFAULT_GOOD_RATING",
    "FORMATS",
    "LOW_RATING",
    "ExportError",
    "ExportFilter",
    "check_format",
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
    """

    since: datetime | None = None
    until: datetime | None = None
    persona: str | None = None
    min_rating: int | None = None
    tags: tuple[str, ...] = ()

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
