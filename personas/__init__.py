"""Personas: Character Card V2/V3 files, and the prompts built from them.

Arrows point inward: this package imports nothing from ``bot/``, ``memory/`` or ``feedback/``.
"""

from __future__ import annotations

from .card_io import (
    MAX_CARD_BYTES,
    CardError,
    canonical_json,
    card_to_dict,
    dump_card_json,
    load_card,
    parse_card,
    write_card_json,
    write_card_png,
)
from .lorebook import DEFAULT_SCAN_DEPTH, DEFAULT_TOKEN_BUDGET, select_lore
from .persona import Persona
from .prompting import approx_tokens, parse_example_dialogue, substitute
from .registry import PersonaRegistry, UnknownPersonaError, bundled_cards_dir
from .schema import (
    SPEC_V2,
    SPEC_V3,
    CardData,
    CardExtensions,
    CharacterBook,
    CharacterCard,
    GreenroomExtension,
    LoreEntry,
)

__all__ = [
    "DEFAULT_SCAN_DEPTH",
    "DEFAULT_TOKEN_BUDGET",
    "MAX_CARD_BYTES",
    "SPEC_V2",
    "SPEC_V3",
    "CardData",
    "CardError",
    "CardExtensions",
    "CharacterBook",
    "CharacterCard",
    "GreenroomExtension",
    "LoreEntry",
    "Persona",
    "PersonaRegistry",
    "UnknownPersonaError",
    "approx_tokens",
    "bundled_cards_dir",
    "canonical_json",
    "card_to_dict",
    "dump_card_json",
    "load_card",
    "parse_card",
    "parse_example_dialogue",
    "select_lore",
    "substitute",
    "write_card_json",
    "write_card_png",
]
