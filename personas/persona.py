"""The read-only view of a card that the conversation engine works with."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .card_io import canonical_json
from .lorebook import select_lore
from .prompting import Role, parse_example_dialogue, render_system_prompt, substitute

if TYPE_CHECKING:
    from .schema import CharacterCard, GreenroomExtension

__all__ = [
    "DEFAULT_FALLBACK_LINES",
    "DEFAULT_HOLDING_LINES",
    "DEFAULT_NON_TEXT_LINES",
    "DEFAULT_SAFETY_LINES",
    "Persona",
]

#: Used when a card has no ``fallback_lines``.
DEFAULT_FALLBACK_LINES = (
    "*{{char}} pauses, searching for the right words.* Give me a moment.",
    "*{{char}} frowns.* Sorry, I lost my train of thought. Say that again?",
)
#: Used when a card has no ``non_text_lines``.
DEFAULT_NON_TEXT_LINES = ("*{{char}} squints.* I can only read words here. Tell me about it?",)
#: Used when a card has no ``holding_lines``.
DEFAULT_HOLDING_LINES = (
    "*{{char}} takes a moment to think that over.*",
    "Hold that thought, I want to answer this one properly.",
)
#: Used when a card has no ``safety_lines``.
DEFAULT_SAFETY_LINES = (
    "I'm really glad you told me, and I care about what happens to you. I'm not the right one "
    "to help with this, but people who are can talk with you right now:",
)


#: A third-person verb right after a conjunction: "I am 52 and goes by ..." shares the "I".
_COORDINATED_VERB = re.compile(
    r"\b((?:and|but|or|then)\s+(?:(?:always|never|often|still|also|sometimes|usually|\w+ly)\s+)?)"
    r"([a-z]+?(?<!s)s)\b"
)
_IRREGULAR_FIRST_PERSON = {"is": "am", "has": "have", "does": "do", "goes": "go", "was": "was"}
#: Words ending in "s" that follow a conjunction but are not verbs.
_NOT_VERBS = frozenset(
    [
        "always",
        "sometimes",
        "perhaps",
        "besides",
        "afterwards",
        "nevertheless",
        "nonetheless",
        "thus",
        "this",
        "its",
        "his",
        "hers",
        "theirs",
        "ours",
        "yours",
        "us",
        "plus",
        "less",
    ]
)


def _as_first_person(verb: str) -> str:
    """``goes`` → ``go``, ``carries`` → ``carry``, ``teaches`` → ``teach``, ``is`` → ``am``."""
    if verb in _IRREGULAR_FIRST_PERSON:
        return _IRREGULAR_FIRST_PERSON[verb]
    if verb.endswith("ies") and len(verb) > 4:
        return verb[:-3] + "y"
    if re.search(r"(ch|sh|x|z|o)es$", verb):
        return verb[:-2]
    return verb[:-1]


def _first_person(match: re.Match[str]) -> str:
    """A coordinated verb, conjugated for "I" (an adverb between stays)."""
    lead, verb = match.groups()
    return match.group(0) if verb in _NOT_VERBS else lead + _as_first_person(verb)


class Persona:
    """An immutable persona built from a card.

    ``version_hash`` (first 16 hex digits of the SHA-256 of the card's canonical JSON) changes
    whenever any field of the card changes, so stored data can say which version it came from.
    Do not mutate ``card`` after building a persona from it.
    """

    __slots__ = ("_avatar", "_card", "_greenroom", "_name", "_version_hash")

    def __init__(self, card: CharacterCard, *, avatar: bytes | None = None) -> None:
        self._card = card
        self._avatar = avatar
        self._name = card.data.name.strip()
        self._greenroom = card.greenroom
        digest = hashlib.sha256(canonical_json(card).encode("utf-8")).hexdigest()
        self._version_hash = digest[:16]

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, "_version_hash"):
            raise AttributeError(f"Persona is immutable; cannot set {name!r}")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"<Persona name={self._name!r} version={self._version_hash}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Persona):
            return NotImplemented
        return self._version_hash == other._version_hash and self._name == other._name

    def __hash__(self) -> int:
        return hash((self._name, self._version_hash))

    @property
    def name(self) -> str:
        return self._name

    @property
    def card(self) -> CharacterCard:
        return self._card

    @property
    def version_hash(self) -> str:
        return self._version_hash

    @property
    def avatar(self) -> bytes | None:
        """The PNG card's picture as avatar bytes (``None`` for a JSON card); transports use it
        when the card names no ``avatar_url``."""
        return self._avatar

    @property
    def greenroom(self) -> GreenroomExtension:
        return self._greenroom

    def render(self, text: str, user_name: str) -> str:
        """``text`` with ``{{char}}``/``{{user}}`` (and ``<BOT>``/``<USER>``) substituted."""
        return substitute(text, self._name, user_name)

    def system_prompt(self, user_name: str) -> str:
        """The system message; identical for identical ``user_name`` (KV cache friendly)."""
        return render_system_prompt(self._card.data, self._greenroom, user_name)

    def greeting(self, user_name: str) -> str:
        """The card's first message, or a short default when it has none."""
        first = (self._card.data.first_mes or "").strip()
        return self.render(first or "*{{char}} looks up.* Hello, {{user}}.", user_name)

    def post_history_instructions(self, user_name: str) -> str:
        """The card's instructions meant to follow the chat history (may be empty)."""
        return self.render((self._card.data.post_history_instructions or "").strip(), user_name)

    def example_dialogue(self, user_name: str) -> list[tuple[Role, str]]:
        """Example messages parsed from ``mes_example`` (``<START>`` blocks)."""
        return parse_example_dialogue(self._card.data.mes_example or "", self._name, user_name)

    def triggered_lore(
        self, recent_texts: Sequence[str], user_name: str, *, token_budget: int | None = None
    ) -> list[str]:
        """Lorebook entries fired by the recent messages (oldest first), substituted.

        ``token_budget`` caps the total below the book's own budget; see
        :mod:`personas.lorebook` for the matching rules.
        """
        return select_lore(
            self._card.data.character_book,
            recent_texts,
            lambda text: self.render(text, user_name),
            token_budget=token_budget,
        )

    def canon_as_self(self) -> list[str]:
        """The canon facts in the persona's own voice ("She grew up in X" -> "I grew up in X"),
        so they compare with what the persona says about itself. A rough English rewrite:
        subject, possessives and the commonest verb forms."""
        first = re.escape(self.name.split()[0])
        subject = rf"^(?:{first}(?:\s+(?-i:[A-Z])[\w'-]+)?|she|he|they)\b"
        facts = []
        for fact in self._greenroom.canon_facts:
            text = self.render(fact.strip(), "you")
            text = re.sub(subject + r"\s+(?:is|are)\b", "I am", text, flags=re.IGNORECASE)
            text = re.sub(subject + r"\s+(?:has|have)\b", "I have", text, flags=re.IGNORECASE)
            text = re.sub(subject + r"\s+(?:was|were)\b", "I was", text, flags=re.IGNORECASE)
            text = re.sub(
                subject + r"\s+(\w+?(?<!s)s)\b",
                lambda match: "I " + _as_first_person(match.group(1)),
                text,
                flags=re.IGNORECASE,
            )
            text = re.sub(subject, "I", text, flags=re.IGNORECASE)
            text = re.sub(r"\b(?:her|him|them)\b(?=\s*[.,;!?]|\s*$)", "me", text, flags=re.I)
            text = re.sub(
                r"\bher(?=\s+(?:for|since|and|until|in|at|on|to|every|when|because)\b)",
                "me",
                text,
                flags=re.IGNORECASE,
            )
            text = re.sub(r"\b(?:him|them)\b", "me", text, flags=re.IGNORECASE)
            text = re.sub(r"\b(?:her|his|their)\b", "my", text, flags=re.IGNORECASE)
            text = re.sub(r"^my\b", "My", text)
            if text.startswith("I "):
                text = _COORDINATED_VERB.sub(_first_person, text)
            facts.append(text)
        return facts

    def fallback_line(self, seed: int = 0, *, user_name: str = "you") -> str:
        """An in-persona line for when the model fails; the same seed gives the same line."""
        return self._pick(self._greenroom.fallback_lines, DEFAULT_FALLBACK_LINES, seed, user_name)

    def holding_line(self, seed: int = 0, *, user_name: str = "you") -> str:
        """An in-persona line for when a reply is held or dropped; deterministic per seed."""
        return self._pick(self._greenroom.holding_lines, DEFAULT_HOLDING_LINES, seed, user_name)

    def safety_line(self, seed: int = 0, *, user_name: str = "you") -> str:
        """An in-persona line that leads to help resources, sent instead of an urgent reply no
        actor could review; deterministic per seed."""
        return self._pick(self._greenroom.safety_lines, DEFAULT_SAFETY_LINES, seed, user_name)

    def non_text_line(self, seed: int = 0, *, user_name: str = "you") -> str:
        """An in-persona line for a message with no text (only an attachment or a sticker)."""
        return self._pick(self._greenroom.non_text_lines, DEFAULT_NON_TEXT_LINES, seed, user_name)

    def _pick(
        self, lines: Sequence[str], defaults: Sequence[str], seed: int, user_name: str
    ) -> str:
        usable = [line.strip() for line in lines if line.strip()] or list(defaults)
        return self.render(usable[seed % len(usable)], user_name)
