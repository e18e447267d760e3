"""Pick the lorebook entries that belong in the prompt for the latest messages.

Rules (Character Card V2/V3, plus the SillyTavern extensions most cards in the wild carry):

- Disabled entries never fire; ``constant`` entries always fire.
- An entry fires when any of its ``keys`` appears in the last ``scan_depth`` messages
  (substring match, case-insensitive unless ``case_sensitive``; whole words only when the
  SillyTavern extension ``match_whole_words`` is true).
- ``selective`` entries with ``secondary_keys`` also need a secondary key (SillyTavern's
  ``selectiveLogic`` 1-3 give NOT ALL, NOT ANY and AND ALL).
- ``use_regex`` keys are regular expressions, written bare or as ``/pattern/flags``; a key
  that does not compile is matched literally.
- With ``recursive_scanning`` the content of fired entries is scanned too.
- The ``token_budget`` (tokens ~ characters / 4) is filled by ``priority`` (higher first);
  the chosen entries come out in ``insertion_order`` (lower first).
- V3 decorators (leading ``@@`` lines) are removed from the content; ``@@dont_activate``
  turns an entry off and ``@@constant`` makes it constant.

Limit: Python's ``re`` has no timeout, so a pathological pattern in an imported card can be
slow; the scanned text is capped at :data:`MAX_SCAN_CHARS` characters to bound the cost.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .prompting import approx_tokens

if TYPE_CHECKING:
    from .schema import CharacterBook, LoreEntry

__all__ = [
    "DEFAULT_SCAN_DEPTH",
    "DEFAULT_TOKEN_BUDGET",
    "MAX_SCAN_CHARS",
    "select_lore",
]

_log = logging.getLogger(__name__)

#: How many recent messages are scanned when the book has no ``scan_depth``.
DEFAULT_SCAN_DEPTH = 4
#: Token budget when the book has none; small because the bundled model has a 2k context.
DEFAULT_TOKEN_BUDGET = 400
#: At most this many characters of recent text are scanned (the newest ones).
MAX_SCAN_CHARS = 20_000

_REGEX_LITERAL = re.compile(r"^/(.+)/([a-z]*)$", re.DOTALL)
_SELECTIVE_AND_ANY, _SELECTIVE_NOT_ALL, _SELECTIVE_NOT_ANY, _SELECTIVE_AND_ALL = range(4)


@dataclass(frozen=True, slots=True)
class _Candidate:
    index: int
    entry: LoreEntry
    content: str
    constant: bool


def select_lore(
    book: CharacterBook | None,
    recent_texts: Sequence[str],
    render: Callable[[str], str],
    *,
    token_budget: int | None = None,
) -> list[str]:
    """Contents of the entries that fire, rendered with ``render`` (macro substitution),
    within the book's budget (and ``token_budget`` if that is smaller)."""
    if book is None or not book.entries:
        return []
    budget = book.token_budget if book.token_budget and book.token_budget > 0 else None
    budget = budget or DEFAULT_TOKEN_BUDGET
    if token_budget is not None:
        budget = min(budget, max(0, token_budget))
    depth = book.scan_depth if book.scan_depth is not None and book.scan_depth >= 0 else None

    candidates = [_candidate(index, entry) for index, entry in enumerate(book.entries)]
    live = [candidate for candidate in candidates if candidate is not None]
    fired: dict[int, _Candidate] = {c.index: c for c in live if c.constant}
    extra_text: list[str] = []
    # Each pass can only add entries, so this ends after at most len(entries) passes.
    while True:
        added = False
        for candidate in live:
            if candidate.index in fired:
                continue
            entry_depth = candidate.entry.extensions.get("scan_depth")
            if not isinstance(entry_depth, int) or isinstance(entry_depth, bool):
                entry_depth = depth if depth is not None else DEFAULT_SCAN_DEPTH
            haystack = _scan_text(recent_texts, entry_depth, extra_text)
            if _fires(candidate.entry, haystack, render):
                fired[candidate.index] = candidate
                added = True
                if book.recursive_scanning:
                    extra_text.append(candidate.content)
        if not (added and book.recursive_scanning):
            break

    ranked = sorted(
        fired.values(),
        key=lambda c: (-(c.entry.priority or 0), not c.constant, c.entry.insertion_order, c.index),
    )
    chosen: list[_Candidate] = []
    used = 0
    for candidate in ranked:
        cost = approx_tokens(render(candidate.content))
        if used + cost <= budget:
            chosen.append(candidate)
            used += cost
    chosen.sort(key=lambda c: (c.entry.insertion_order, c.index))
    return [render(candidate.content) for candidate in chosen]


def _candidate(index: int, entry: LoreEntry) -> _Candidate | None:
    if not entry.enabled:
        return None
    lines = entry.content.splitlines()
    decorators = []
    while lines and lines[0].lstrip().startswith("@@"):
        words = lines.pop(0).strip()[2:].split(maxsplit=1)
        decorators.append(words[0].lower() if words else "")
    content = "\n".join(lines).strip()
    if not content or "dont_activate" in decorators:
        return None
    constant = bool(entry.constant) or "constant" in decorators
    return _Candidate(index=index, entry=entry, content=content, constant=constant)


def _scan_text(recent_texts: Sequence[str], depth: int, extra_text: list[str]) -> str:
    window = list(recent_texts[-depth:]) if depth > 0 else []
    text = "\n".join([*window, *extra_text])
    return text[-MAX_SCAN_CHARS:]


def _fires(entry: LoreEntry, haystack: str, render: Callable[[str], str]) -> bool:
    if not haystack:
        return False
    matchers = [_matcher(render(key), entry) for key in entry.keys if key.strip()]
    if not any(matcher(haystack) for matcher in matchers):
        return False
    secondary = [key for key in entry.secondary_keys or [] if key.strip()]
    if not entry.selective or not secondary:
        return True
    hits = [_matcher(render(key), entry)(haystack) for key in secondary]
    logic = entry.extensions.get("selectiveLogic", _SELECTIVE_AND_ANY)
    if logic == _SELECTIVE_NOT_ALL:
        return not all(hits)
    if logic == _SELECTIVE_NOT_ANY:
        return not any(hits)
    if logic == _SELECTIVE_AND_ALL:
        return all(hits)
    return any(hits)


def _matcher(key: str, entry: LoreEntry) -> Callable[[str], bool]:
    case_sensitive = entry.case_sensitive
    if case_sensitive is None:
        case_sensitive = entry.extensions.get("case_sensitive") is True
    flags = 0 if case_sensitive else re.IGNORECASE
    if entry.use_regex:
        pattern, flags = _regex_source(key, flags)
        try:
            compiled = re.compile(pattern, flags)
        except re.error as exc:
            _log.debug("lore key %r is not a valid regex (%s); matching it literally", key, exc)
        else:
            return lambda text: compiled.search(text) is not None
    literal = re.escape(key.strip())
    if entry.extensions.get("match_whole_words") is True:
        literal = rf"(?<!\w){literal}(?!\w)"
    compiled_literal = re.compile(literal, flags)
    return lambda text: compiled_literal.search(text) is not None


def _regex_source(key: str, flags: int) -> tuple[str, int]:
    """``/pattern/flags`` keys carry their own flags (``i``, ``m``, ``s``; ``g`` is ignored)."""
    literal = _REGEX_LITERAL.match(key.strip())
    if literal is None:
        return key, flags
    pattern, letters = literal.groups()
    own = 0
    for letter in letters:
        own |= {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}.get(letter, 0)
    return pattern, own
