"""Rules-based extraction of facts from conversation text (no model involved).

Patterns, for the user's messages and for the persona's own replies alike (first person):
"my sister's name is X", "my sister is called/named X", "I have a sister", "I don't have a
sister", "I live in X", "I grew up in X", "I'm from X", "I'm N years old" / "I am N",
"my favourite X is Y", "I work as X". "I no longer live in X" / "I don't work as X anymore"
delete the fact. Anything else is not a fact: the rules favour precision over recall, so a
missed fact is only a turn memory, never a wrong one.

Each fact has a key ``attribute`` (e.g. ``relation:sister``, ``age``) that, together with who said
it (the user or the persona), decides what a newer fact supersedes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RELATIONS", "ExtractedFact", "extract_facts", "normalize_relation", "split_sentences"]

#: The relations facts name (a regular expression alternation).
RELATIONS = (
    "sister|brother|mother|mom|mum|father|dad|wife|husband|partner|girlfriend|boyfriend|son"
    "|daughter|best friend|friend|dog|cat|boss|grandmother|grandma|grandfather|grandpa"
)
_NAME = r"(?P<value>[A-Z][\w'-]*(?: [A-Z][\w'-]*)?)"
_PLACE = r"(?P<value>[A-Z][\w'-]*(?:[ -](?:[A-Z][\w'-]*|de|del|da|do|upon|on))*)"
_TEXT = r"(?P<value>[^.,;!?]{1,60}?)"
_END = r"(?=\s*(?:[.,;!?]|\band\b|\bbut\b|$))"
_I_AM = r"(?i:i(?:'m|’m| am))"

_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|\n+")

# (attribute template, pattern, delete?)
_PATTERNS: tuple[tuple[str, re.Pattern[str], bool], ...] = (
    (
        "relation:{rel}",
        re.compile(
            rf"(?i:\bmy (?P<rel>{RELATIONS})(?:'s|’s) name is) {_NAME}"
            rf"|(?i:\bmy (?P<rel2>{RELATIONS}) is (?:called|named)) {_NAME.replace('value', 'v2')}"
        ),
        False,
    ),
    (
        "has:{rel}",
        re.compile(
            rf"(?i:\bi (?P<neg>don't |do not |don’t |never )?(?:have|had) (?:a|an|one|any) "
            rf"(?P<rel>{RELATIONS})s?\b)"
        ),
        False,
    ),
    ("live_in", re.compile(rf"(?i:\bi (?:no longer|don't|do not) live in) {_PLACE}"), True),
    ("live_in", re.compile(rf"(?i:\bi (?:currently |now |still )?live in) {_PLACE}"), False),
    (
        "live_in",
        re.compile(rf"{_I_AM}(?i: (?:currently |now )?living in) {_PLACE}"),
        False,
    ),
    ("grew_up_in", re.compile(rf"(?i:\bi grew up in) {_PLACE}"), False),
    ("from", re.compile(rf"\b{_I_AM} from {_PLACE}"), False),
    (
        "age",
        re.compile(rf"\b{_I_AM} (?P<value>\d{{1,3}})(?i:(?: years old| yrs old| y/o)|{_END})"),
        False,
    ),
    (
        "favourite:{thing}",
        re.compile(rf"(?i:\bmy favou?rite (?P<thing>[a-z ]{{2,30}}?) is) {_TEXT}{_END}"),
        False,
    ),
    (
        "work_as",
        re.compile(rf"(?i:\bi (?:no longer|don't|do not) work as (?:an? )?){_TEXT}{_END}"),
        True,
    ),
    ("work_as", re.compile(rf"(?i:\bi (?:currently |now )?work as (?:an? )?){_TEXT}{_END}"), False),
)

_LABELS = {
    "live_in": "Lives in",
    "grew_up_in": "Grew up in",
    "from": "From",
    "age": "Age",
    "work_as": "Works as",
}


@dataclass(frozen=True)
class ExtractedFact:
    """One fact found in a sentence; ``value`` is ``None`` for a deletion."""

    attribute: str
    value: str | None
    sentence: str

    @property
    def label(self) -> str:
        """A short human label, e.g. ``Sister`` or ``Favourite food``."""
        kind, _, detail = self.attribute.partition(":")
        if kind == "relation":
            return detail.capitalize()
        if kind == "has":
            return f"Has a {detail}"
        if kind == "favourite":
            return f"Favourite {detail}"
        return _LABELS.get(self.attribute, self.attribute)

    def display(self) -> str:
        """``"Sister: Maya"``; deletions read ``"Lives in: (no longer)"``."""
        return f"{self.label}: {self.value if self.value is not None else '(no longer)'}"


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split after ``.!?`` and at line breaks), stripped, non-empty."""
    return [part.strip() for part in _SENTENCE_RE.split(text) if part and part.strip()]


def normalize_relation(rel: str) -> str:
    rel = rel.lower()
    return {"mom": "mother", "mum": "mother", "dad": "father", "grandma": "grandmother"}.get(
        rel, {"grandpa": "grandfather"}.get(rel, rel)
    )


def extract_facts(text: str) -> list[ExtractedFact]:
    """First-person facts stated in ``text``, in order; a later one for the same key wins."""
    found: dict[str, ExtractedFact] = {}
    for sentence in split_sentences(text):
        taken: list[tuple[int, int]] = []
        for template, pattern, is_delete in _PATTERNS:
            for match in pattern.finditer(sentence):
                span = match.span()
                if any(span[0] < end and start < span[1] for start, end in taken):
                    continue
                groups = {k: v for k, v in match.groupdict().items() if v is not None}
                rel = groups.get("rel") or groups.get("rel2") or ""
                thing = " ".join(groups.get("thing", "").lower().split())
                attribute = template.format(rel=normalize_relation(rel), thing=thing)
                if template.startswith("has:"):
                    value: str | None = "no" if groups.get("neg") else "yes"
                elif is_delete:
                    value = None
                else:
                    value = (groups.get("value") or groups.get("v2") or "").strip(" '\"")
                    if not value:
                        continue
                taken.append(span)
                found.pop(attribute, None)
                found[attribute] = ExtractedFact(attribute, value, sentence)
    return list(found.values())
