"""Lorebook entries: which ones enter the prompt, in which order, within which budget."""

from __future__ import annotations

from typing import Any

from personas import DEFAULT_SCAN_DEPTH, CharacterCard, Persona


def _persona(entries: list[dict[str, Any]], **book: Any) -> Persona:
    character_book = {"entries": entries, **book}
    return Persona(CharacterCard.new("Wren", character_book=character_book))


def _entry(keys: list[str], content: str, **fields: Any) -> dict[str, Any]:
    return {"keys": keys, "content": content, "extensions": {}, "enabled": True,
            "insertion_order": 0, **fields}  # fmt: skip


def test_keyword_entry_fires_only_when_a_key_appears() -> None:
    persona = _persona([_entry(["dragon", "wyrm"], "Dragons nest on Mount Ash.")])
    assert persona.triggered_lore(["tell me about the WYRMS"], "Kim") == [
        "Dragons nest on Mount Ash."
    ]
    assert persona.triggered_lore(["tell me about the sea"], "Kim") == []
    assert persona.triggered_lore([], "Kim") == []


def test_constant_entry_always_fires_and_disabled_never_does() -> None:
    persona = _persona(
        [
            _entry([], "Always here.", constant=True),
            _entry(["dragon"], "Never shown.", enabled=False),
            _entry([], "Disabled constant.", constant=True, enabled=False),
        ]
    )
    assert persona.triggered_lore(["a dragon!"], "Kim") == ["Always here."]
    assert persona.triggered_lore([], "Kim") == ["Always here."]


def test_case_sensitive_entries() -> None:
    persona = _persona(
        [
            _entry(["Rose"], "Rose is a person.", case_sensitive=True),
            _entry(["Tulip"], "Tulip (any case).", case_sensitive=False),
            # SillyTavern keeps the flag in the entry's extensions.
            _entry(["Iris"], "Iris is a person.", extensions={"case_sensitive": True}),
        ]
    )
    assert persona.triggered_lore(["a rose and a tulip and an iris"], "Kim") == [
        "Tulip (any case)."
    ]
    assert persona.triggered_lore(["Rose met Iris"], "Kim") == [
        "Rose is a person.",
        "Iris is a person.",
    ]


def test_selective_entry_needs_a_secondary_key() -> None:
    persona = _persona(
        [
            _entry(["king"], "The king is at war.", selective=True, secondary_keys=["war", "army"]),
            _entry(["queen"], "Not selective.", selective=False, secondary_keys=["never"]),
        ]
    )
    assert persona.triggered_lore(["the king is old"], "Kim") == []
    assert persona.triggered_lore(["the king", "sent an army"], "Kim") == ["The king is at war."]
    assert persona.triggered_lore(["the queen"], "Kim") == ["Not selective."]


def test_sillytavern_selective_logic_not_any() -> None:
    not_any = {"selectiveLogic": 2}
    persona = _persona(
        [
            _entry(["king"], "Peaceful king.", selective=True, secondary_keys=["war"],
                   extensions=not_any),
        ]
    )  # fmt: skip
    assert persona.triggered_lore(["the king rests"], "Kim") == ["Peaceful king."]
    assert persona.triggered_lore(["the king goes to war"], "Kim") == []


def test_regex_keys_bare_and_slash_form() -> None:
    persona = _persona(
        [
            _entry([r"colou?r"], "Colour entry.", use_regex=True),
            _entry(["/^HELLO$/m"], "Case from flags.", use_regex=True),
            _entry(["/ship(s)?/i"], "Ships.", use_regex=True),
            _entry(["c++ ("], "Invalid regex matched literally.", use_regex=True),
            _entry(["a.c"], "Not a regex without use_regex."),
        ]
    )
    assert persona.triggered_lore(["what COLOR is it"], "Kim") == ["Colour entry."]
    assert persona.triggered_lore(["hi\nHELLO\nbye"], "Kim") == ["Case from flags."]
    assert persona.triggered_lore(["hello"], "Kim") == []
    assert persona.triggered_lore(["Two SHIPS"], "Kim") == ["Ships."]
    assert persona.triggered_lore(["I write c++ (badly)"], "Kim") == [
        "Invalid regex matched literally."
    ]
    assert persona.triggered_lore(["abc"], "Kim") == []
    assert persona.triggered_lore(["a.c"], "Kim") == ["Not a regex without use_regex."]


def test_whole_word_matching_when_the_entry_asks() -> None:
    persona = _persona(
        [
            _entry(["art"], "Whole word art.", extensions={"match_whole_words": True}),
            _entry(["sun"], "Substring sun."),
        ]
    )
    assert persona.triggered_lore(["a start on sunday"], "Kim") == ["Substring sun."]
    assert persona.triggered_lore(["modern art"], "Kim") == ["Whole word art."]


def test_scan_depth_limits_the_messages_scanned() -> None:
    entries = [_entry(["dragon"], "Dragon lore.")]
    old_mention = ["dragon", "a", "b"]
    assert _persona(entries, scan_depth=2).triggered_lore(old_mention, "Kim") == []
    assert _persona(entries, scan_depth=3).triggered_lore(old_mention, "Kim") == ["Dragon lore."]
    assert _persona(entries, scan_depth=0).triggered_lore(["dragon"], "Kim") == []
    default = _persona(entries)
    padding = ["x"] * DEFAULT_SCAN_DEPTH
    assert default.triggered_lore(["dragon", *padding], "Kim") == []
    assert default.triggered_lore(["dragon", *padding[1:]], "Kim") == ["Dragon lore."]


def test_budget_keeps_high_priority_and_output_follows_insertion_order() -> None:
    persona = _persona(
        [
            _entry(["x"], "A" * 40, insertion_order=3, priority=1),  # 10 tokens
            _entry(["x"], "B" * 40, insertion_order=1, priority=9),  # 10 tokens
            _entry(["x"], "C" * 40, insertion_order=2, priority=5),  # 10 tokens
        ],
        token_budget=20,
    )
    assert persona.triggered_lore(["x"], "Kim") == ["B" * 40, "C" * 40]
    # A caller's budget can only lower the book's.
    assert persona.triggered_lore(["x"], "Kim", token_budget=10) == ["B" * 40]
    assert persona.triggered_lore(["x"], "Kim", token_budget=1000) == ["B" * 40, "C" * 40]


def test_recursive_scanning_follows_fired_content() -> None:
    entries = [
        _entry(["castle"], "The castle belongs to Queen Mab.", insertion_order=1),
        _entry(["Mab"], "Mab is 300 years old.", insertion_order=2),
    ]
    assert _persona(entries).triggered_lore(["the castle"], "Kim") == [
        "The castle belongs to Queen Mab."
    ]
    assert _persona(entries, recursive_scanning=True).triggered_lore(["the castle"], "Kim") == [
        "The castle belongs to Queen Mab.",
        "Mab is 300 years old.",
    ]


def test_macros_in_keys_and_content_and_v3_decorators() -> None:
    persona = _persona(
        [
            _entry(["{{user}}"], "{{char}} remembers <USER>."),
            _entry([], "@@depth 4\n@@dont_activate\nHidden.", constant=True),
            _entry(["moon"], "@@depth 2\nThe moon is near."),
        ]
    )
    assert persona.triggered_lore(["kim says hi", "moon"], "Kim") == [
        "Wren remembers Kim.",
        "The moon is near.",
    ]


def test_bundled_lorebooks_fire() -> None:
    from personas import PersonaRegistry

    registry = PersonaRegistry.load()
    juniper = registry.get("Juniper").triggered_lore(["How is your sister Roz?"], "Kim")
    assert len(juniper) == 2
    assert any("Portland" in line for line in juniper)
    vex = registry.get("Captain Vex").triggered_lore(["Where's the PARROT?"], "Kim")
    assert any(line.startswith("Bolt is the ship's robot parrot") for line in vex)
