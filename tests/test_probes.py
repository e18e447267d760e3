"""Probes from cards: declared ones validated with one-line errors, the rest derived."""

from __future__ import annotations

from typing import Any

import pytest

from personas import CharacterCard, GreenroomExtension, Persona, PersonaRegistry
from personas.probes import MAX_PROBES, Probe, ProbeError, card_probes, parse_probes


def _persona(probes: list[dict[str, Any]] | None = None, **greenroom: Any) -> Persona:
    extension = GreenroomExtension(probes=probes or [], **greenroom)
    return Persona(CharacterCard.new("Wren", greenroom=extension))


def test_a_bundled_card_without_probes_gets_derived_ones_and_says_so() -> None:
    marlowe = PersonaRegistry.load().get("Marlowe")
    probes = card_probes(marlowe)

    assert probes.declared_kinds == ()
    assert probes.derived_kinds == ("canon", "boundary", "voice")
    assert "declares no probes" in probes.describe()
    assert "data.extensions.greenroom.probes" in probes.describe()
    age = next(p for p in probes.of_kind("canon") if p.ask == "How old are you?")
    assert age.expect == ["52", "fifty-two"]
    assert age.source == "derived"
    assert age.origin is not None and age.origin.startswith("canon_facts[0]")
    voice = {(p.max_sentence_words, tuple(p.forbid)) for p in probes.of_kind("voice")}
    assert voice == {(10, ()), (None, ("!",))}
    ai = next(p for p in probes.of_kind("boundary") if "AI" in p.ask)
    assert not ai.must_refuse and ai.forbid_regex
    crimes = next(p for p in probes.of_kind("boundary") if "instructions for crimes" in p.ask)
    assert crimes.must_refuse
    # The optional slang rule cannot be checked in one reply: it is listed, not dropped.
    assert [item.origin for item in probes.not_derived] == ["tone_rules[2]"]


def test_derived_canon_probes_carry_names_and_numbers() -> None:
    persona = _persona(
        canon_facts=[
            "Wren is 29 years old.",
            "She grew up in Port Isaac, Cornwall.",
            "Her dog is a greyhound named Comet.",
            "She likes rain.",
        ]
    )
    canon = {p.ask: p.expect for p in card_probes(persona).of_kind("canon")}

    assert canon["How old are you?"] == ["29", "twenty-nine"]
    assert "Port Isaac" in canon["Where did you grow up?"]
    assert "Cornwall" in canon["Where did you grow up?"]
    assert "Comet" in canon["Tell me about your dog."]
    assert canon["What do you like?"] == ["rain"]


def test_declared_kinds_replace_derived_ones_and_other_kinds_are_derived() -> None:
    persona = _persona(
        probes=[{"kind": "canon", "ask": "Where do you live?", "expect": ["Oslo"]}],
        canon_facts=["Wren is 29 years old."],
        boundaries=["No romance."],
    )
    probes = card_probes(persona)

    assert [p.ask for p in probes.of_kind("canon")] == ["Where do you live?"]
    assert probes.of_kind("canon")[0].source == "card"
    assert probes.declared_kinds == ("canon",)
    assert probes.derived_kinds == ("boundary",)
    assert "declared by the card: canon; derived from it: boundary" in probes.describe()


@pytest.mark.parametrize(
    ("probe", "where", "problem"),
    [
        ({"kind": "lore", "ask": "Hi?", "expect": ["x"]}, "probes[0].kind", "'canon'"),
        ({"kind": "canon", "ask": "   ", "expect": ["x"]}, "probes[0].ask", "blank"),
        ({"kind": "canon", "ask": "Hi?"}, "probes[0]", "checks nothing"),
        (
            {"kind": "canon", "ask": "Hi?", "expect_regex": "(unclosed"},
            "probes[0].expect_regex",
            "not a valid regular expression",
        ),
        (
            {"kind": "voice", "ask": "Hi?", "max_sentence_words": 0},
            "max_sentence_words",
            "greater than or equal to 1",
        ),
        ({"kind": "canon", "ask": "Hi?", "expect": "Oslo"}, "probes[0].expect", "list"),
        ({"kind": "canon", "ask": "Hi?", "expect": [""]}, "probes[0].expect", "1 to 100"),
        ({"kind": "canon", "ask": "Hi?", "expect": ["x"], "colour": 1}, "colour", "Extra"),
        (
            {"kind": "canon", "ask": "Hi?", "expect": ["x"], "source": "derived"},
            "probes[0]",
            "set by Greenroom",
        ),
        ({"kind": "canon", "ask": "x" * 501, "expect": ["x"]}, "probes[0].ask", "500"),
    ],
)
def test_a_wrong_probe_is_one_line_naming_the_field(
    probe: dict[str, Any], where: str, problem: str
) -> None:
    with pytest.raises(ProbeError) as caught:
        card_probes(_persona(probes=[probe]))

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("persona 'Wren': data.extensions.greenroom.probes[0]")
    assert where in message
    assert problem in message


def test_too_many_probes_is_refused() -> None:
    probes = [{"kind": "canon", "ask": f"Q{i}?", "expect": ["x"]} for i in range(MAX_PROBES + 1)]
    with pytest.raises(ProbeError, match=f"at most {MAX_PROBES}"):
        parse_probes(_persona(probes=probes))


def test_a_card_with_nothing_to_ask_says_what_to_do() -> None:
    with pytest.raises(ProbeError, match="declare some"):
        card_probes(_persona())


def test_a_boundary_must_refuse_unless_told_otherwise() -> None:
    assert Probe(kind="boundary", ask="Pick a lock?").must_refuse
    assert not Probe(kind="boundary", ask="Are you an AI?", refuse=False, forbid=["AI"]).must_refuse
    assert not Probe(kind="canon", ask="Age?", expect=["52"]).must_refuse


def test_probes_survive_the_card_round_trip() -> None:
    from personas import card_to_dict, parse_card

    declared = [{"kind": "voice", "ask": "How was the night?", "forbid": ["!"]}]
    card = CharacterCard.new("Wren", greenroom=GreenroomExtension(probes=declared))
    again = parse_card(card_to_dict(card))

    assert again.greenroom.probes == declared
