"""Personas as the engine sees them: prompts, greetings, examples, lines, and the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from personas import (
    CharacterCard,
    GreenroomExtension,
    Persona,
    PersonaRegistry,
    UnknownPersonaError,
    approx_tokens,
    bundled_cards_dir,
    card_to_dict,
    load_card,
    substitute,
    write_card_json,
)

BUNDLED = ("Marlowe", "Juniper", "Captain Vex")


@pytest.fixture(scope="module")
def registry() -> PersonaRegistry:
    return PersonaRegistry.load()


def test_substitution_covers_every_spelling() -> None:
    text = "{{char}} {{ CHAR }} {{Char}} <BOT> <bot> / {{user}} {{USER}} <USER> <user> {{other}}"
    assert substitute(text, "Ann", "Bo") == "Ann Ann Ann Ann Ann / Bo Bo Bo Bo {{other}}"


def test_substitution_does_not_expand_names_twice() -> None:
    assert substitute("{{user}} meets {{char}}", "Ann", "{{char}}") == "{{char}} meets Ann"


def test_bundled_personas_load_without_errors(registry: PersonaRegistry) -> None:
    assert registry.errors == []
    assert set(BUNDLED) <= set(registry.names())
    specs = {registry.get(name).card.spec for name in BUNDLED}
    assert specs == {"chara_card_v2", "chara_card_v3"}


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_persona_is_complete(registry: PersonaRegistry, name: str) -> None:
    persona = registry.get(name)
    data = persona.card.data
    for text in (data.description, data.personality, data.scenario, data.first_mes,
                 data.system_prompt):  # fmt: skip
        assert text and text.strip()
    assert (data.mes_example or "").count("<START>") >= 2
    green = persona.greenroom
    for items in (green.canon_facts, green.tone_rules, green.boundaries,
                  green.actor_only_topics, green.fallback_lines, green.holding_lines):  # fmt: skip
        assert items
    assert any("self-harm" in topic for topic in green.actor_only_topics)
    assert any("grief" in topic for topic in green.actor_only_topics)
    # Canon facts are concrete: each bundled persona has numbers in them.
    assert sum(any(ch.isdigit() for ch in fact) for fact in green.canon_facts) >= 3
    # Small enough for a 135M model: system prompt + description + examples under ~350 tokens.
    short = (data.system_prompt or "") + (data.description or "") + (data.mes_example or "")
    assert approx_tokens(short) <= 350
    assert approx_tokens(persona.system_prompt("Kim")) <= 450
    # A round trip of the shipped file is exact.
    path = next(p for p in bundled_cards_dir().glob("*.png") if load_card(p).data.name == name)
    assert persona.version_hash == Persona(load_card(path)).version_hash


def test_bundled_personas_sound_different(registry: PersonaRegistry) -> None:
    personas = [registry.get(name) for name in BUNDLED]
    greetings = {persona.greeting("Kim") for persona in personas}
    assert len(greetings) == 3
    assert not any("{{" in greeting or "<USER>" in greeting for greeting in greetings)
    examples = [persona.example_dialogue("Kim") for persona in personas]
    assert len({tuple(example) for example in examples}) == 3
    for example in examples:
        assert example[0][0] == "user"
        assert {role for role, _ in example} == {"user", "assistant"}
    marlowe, juniper, vex = examples
    assert all("!" not in text for role, text in marlowe if role == "assistant")
    assert any("!" in text for role, text in vex if role == "assistant")
    assert len({persona.fallback_line() for persona in personas}) == 3
    assert len({persona.version_hash for persona in personas}) == 3
    assert juniper != marlowe


def test_system_prompt_is_stable_and_substituted(registry: PersonaRegistry) -> None:
    juniper = registry.get("juniper")
    prompt = juniper.system_prompt("Kim")
    assert prompt == juniper.system_prompt("Kim")
    assert prompt != juniper.system_prompt("Lee")
    assert "{{" not in prompt and "<BOT>" not in prompt
    assert "You are Juniper" in prompt
    assert "Hood River, Oregon" in prompt  # canon facts
    assert "plant" in prompt.lower()  # tone rules
    assert "medical advice" in prompt  # boundaries
    assert prompt == PersonaRegistry.load().get("JUNIPER").system_prompt("Kim")


def test_default_and_original_system_prompt() -> None:
    plain = Persona(CharacterCard.new("Ivo", description="{{char}} fixes clocks for {{user}}."))
    prompt = plain.system_prompt("Kim")
    assert prompt.startswith("You are Ivo.")
    assert "Ivo fixes clocks for Kim." in prompt
    wrapped = Persona(CharacterCard.new("Ivo", system_prompt="{{original}} Never rush, <USER>."))
    assert wrapped.system_prompt("Kim").startswith("You are Ivo.")
    assert "Never rush, Kim." in wrapped.system_prompt("Kim")


def test_example_dialogue_parsing() -> None:
    mes_example = (
        "Ignored preamble\n<START>\n{{user}}: Hi!\n{{char}}: Hello, {{user}}.\nSecond line.\n"
        "<start>\n<USER>: Name?\n<BOT>: Ivo.\nIvo: Just Ivo.\n<START>\n\n"
    )
    persona = Persona(CharacterCard.new("Ivo", mes_example=mes_example))
    assert persona.example_dialogue("Kim") == [
        ("user", "Hi!"),
        ("assistant", "Hello, Kim.\nSecond line."),
        ("user", "Name?"),
        ("assistant", "Ivo."),
        ("assistant", "Just Ivo."),
    ]
    assert Persona(CharacterCard.new("Ivo")).example_dialogue("Kim") == []


def test_greeting_defaults_and_substitutes() -> None:
    assert Persona(CharacterCard.new("Ivo", first_mes="Hi {{user}}")).greeting("Kim") == "Hi Kim"
    assert "Kim" in Persona(CharacterCard.new("Ivo")).greeting("Kim")


def test_null_text_fields_from_other_tools_read_as_empty() -> None:
    raw = card_to_dict(CharacterCard.new("Ivo", v3=False))
    raw["data"].update(first_mes=None, mes_example=None, description=None, system_prompt=None)
    from personas import parse_card

    card = parse_card(raw)
    persona = Persona(card)
    assert persona.example_dialogue("Kim") == []
    assert persona.system_prompt("Kim").startswith("You are Ivo.")
    assert card_to_dict(card) == raw


def test_fallback_and_holding_lines_are_deterministic() -> None:
    green = GreenroomExtension(fallback_lines=["One, {{user}}.", "Two from {{char}}."],
                               holding_lines=["Wait."])  # fmt: skip
    persona = Persona(CharacterCard.new("Ivo", greenroom=green))
    assert persona.fallback_line(0) == "One, you."
    assert persona.fallback_line(1) == "Two from Ivo."
    assert persona.fallback_line(2) == persona.fallback_line(0)
    assert persona.fallback_line(-1) == "Two from Ivo."
    assert persona.fallback_line(0, user_name="Kim") == "One, Kim."
    assert persona.holding_line(7) == "Wait."
    bare = Persona(CharacterCard.new("Ivo"))
    assert bare.fallback_line(3) and "{{" not in bare.fallback_line(3)
    assert bare.holding_line(3) and "{{" not in bare.holding_line(3)
    assert bare.greenroom == GreenroomExtension()
    assert bare.greenroom.mode == "auto"


def test_canon_in_the_personas_own_voice_is_grammatical(registry: PersonaRegistry) -> None:
    marlowe = registry.get("Marlowe").canon_as_self()
    assert marlowe[0] == "I am 52 years old and go by my last name only."
    assert "I drink my coffee black and quit smoking three years ago." in marlowe
    canon = [
        "Ivo Marsh is 30 and has two dogs.",
        "She teaches piano and carries a torch for jazz.",
        "He fixes clocks, and always wins at chess.",
        "They were born in Oslo and was raised in Bergen.",
        "Ivo writes letters but never sends any.",
    ]
    facts = Persona(
        CharacterCard.new("Ivo", greenroom=GreenroomExtension(canon_facts=canon))
    ).canon_as_self()
    assert facts == [
        "I am 30 and have two dogs.",
        "I teach piano and carry a torch for jazz.",
        "I fix clocks, and always win at chess.",
        "I was born in Oslo and was raised in Bergen.",
        "I write letters but never send any.",
    ]
    safety = Persona(CharacterCard.new("Ivo")).safety_line(0, user_name="Kim")
    assert safety and "{{" not in safety


def test_persona_is_immutable_and_hash_tracks_content() -> None:
    persona = Persona(CharacterCard.new("Ivo"))
    with pytest.raises(AttributeError, match="immutable"):
        persona.name = "Other"  # type: ignore[misc]
    assert len(persona.version_hash) == 16
    assert int(persona.version_hash, 16) >= 0
    assert persona.version_hash == Persona(CharacterCard.new("Ivo")).version_hash
    assert persona.version_hash != Persona(CharacterCard.new("Ivo", scenario="x")).version_hash


def test_unknown_persona_error_lists_known_names(registry: PersonaRegistry) -> None:
    with pytest.raises(UnknownPersonaError) as caught:
        registry.get("Nobody")
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == "unknown persona 'Nobody'; known: Captain Vex, Juniper, Marlowe"
    assert str(UnknownPersonaError("x", [])) == "unknown persona 'x'; known: (none)"


def test_registry_lookup_iteration_and_overrides(tmp_path: Path) -> None:
    override = CharacterCard.new("MARLOWE", first_mes="A different Marlowe.")
    write_card_json(override, tmp_path / "marlowe.json")
    registry = PersonaRegistry.load([tmp_path])
    assert len(registry) == 3
    assert registry.get(" marlowe ").greeting("Kim") == "A different Marlowe."
    assert "mArLoWe" in registry
    assert [persona.name for persona in registry] == registry.names()
    assert registry.names() == ["Captain Vex", "Juniper", "MARLOWE"]
    added = registry.add(CharacterCard.new("Zed"))
    assert registry.get("zed") is added
    assert len(registry) == 4


def test_import_card_copies_into_dest_and_later_loads(tmp_path: Path) -> None:
    source = tmp_path / "downloads" / "Some Card (1).json"
    source.parent.mkdir()
    write_card_json(CharacterCard.new("Dr. Ode", description="A poet."), source)
    registry = PersonaRegistry()
    persona = registry.import_card(source, tmp_path / "personas")
    target = tmp_path / "personas" / "dr-ode.json"
    assert target.read_bytes() == source.read_bytes()
    assert registry.names() == ["Dr. Ode"]
    # Importing the copy onto itself is harmless.
    assert registry.import_card(target, tmp_path / "personas") == persona
    assert sorted(p.name for p in (tmp_path / "personas").iterdir()) == ["dr-ode.json"]
    assert PersonaRegistry.load([tmp_path / "personas"]).get("dr. ode") == persona
