"""Card files: JSON and PNG round trips, imports from other tools, and malformed cards."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from personas import (
    CardData,
    CardError,
    CharacterCard,
    GreenroomExtension,
    LoreEntry,
    PersonaRegistry,
    card_to_dict,
    dump_card_json,
    load_card,
    parse_card,
    write_card_json,
    write_card_png,
)

FIXTURES = Path(__file__).parent / "fixtures" / "cards"


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def _png_text_chunks(path: Path) -> dict[str, str]:
    with Image.open(path) as image:
        return {key: str(value) for key, value in image.text.items()}


def _decode_chunk(value: str) -> dict[str, Any]:
    return json.loads(base64.b64decode(value).decode("utf-8"))


def _sillytavern_export() -> dict[str, Any]:
    """A V2 card shaped like a SillyTavern / chub.ai export, with V1 copies at the top."""
    entry_extensions = {
        "position": 0,
        "exclude_recursion": False,
        "display_index": 0,
        "probability": 100,
        "useProbability": True,
        "depth": 4,
        "selectiveLogic": 0,
        "group": "",
        "group_override": False,
        "group_weight": 100,
        "prevent_recursion": False,
        "scan_depth": None,
        "match_whole_words": None,
        "case_sensitive": None,
        "automation_id": "",
        "role": 0,
        "vectorized": False,
        "sticky": 0,
        "cooldown": 0,
        "delay": 0,
    }
    data = {
        "name": "Seraphel",
        "description": "{{char}} is a forest guardian. Ünïcödé ✓ survives.",
        "personality": "gentle, protective",
        "scenario": "{{user}} wakes in {{char}}'s glade.",
        "first_mes": "*{{char}} kneels beside {{user}}.* You're safe now.",
        "mes_example": "<START>\n{{user}}: Who are you?\n{{char}}: A guardian of Eldwood.",
        "creator_notes": "Made with love.",
        "system_prompt": "",
        "post_history_instructions": "",
        "tags": ["fantasy", "female"],
        "creator": "someone",
        "character_version": "1.2",
        "alternate_greetings": ["*The glade is quiet.*"],
        "extensions": {
            "talkativeness": "0.5",
            "fav": False,
            "world": "Eldwood",
            "depth_prompt": {"prompt": "{{char}} is calm.", "depth": 4, "role": "system"},
            "chub": {"expressions": None, "alt_expressions": {}, "id": 123456, "full_path": "x/y"},
        },
        "character_book": {
            "name": "Eldwood",
            "entries": [
                {
                    "id": 0,
                    "keys": ["glade", "forest"],
                    "secondary_keys": [],
                    "comment": "the glade",
                    "content": "The glade is hidden by old magic.",
                    "constant": False,
                    "selective": True,
                    "insertion_order": 100,
                    "enabled": True,
                    "position": "before_char",
                    "use_regex": True,
                    "extensions": dict(entry_extensions, display_index=0),
                },
                {
                    "id": 1,
                    "keys": ["Eldwood"],
                    "secondary_keys": ["war"],
                    "comment": "",
                    "content": "Eldwood burned once.",
                    "constant": False,
                    "selective": True,
                    "insertion_order": 90,
                    "enabled": False,
                    "position": "after_char",
                    "use_regex": True,
                    "extensions": dict(entry_extensions, display_index=1, depth=2),
                },
            ],
            "extensions": {},
        },
    }
    return {
        "name": data["name"],
        "description": data["description"],
        "personality": data["personality"],
        "scenario": data["scenario"],
        "first_mes": data["first_mes"],
        "mes_example": data["mes_example"],
        "creatorcomment": data["creator_notes"],
        "avatar": "none",
        "chat": "Seraphel - 2024-5-1 @12h 00m 00s 000ms",
        "talkativeness": "0.5",
        "fav": False,
        "tags": data["tags"],
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": data,
        "create_date": "2024-5-1 @12h 00m 00s 000ms",
    }


def test_v2_json_round_trip_keeps_unknown_keys_at_every_level(tmp_path: Path) -> None:
    raw = _fixture("v2_unknown_keys.json")
    card = load_card(FIXTURES / "v2_unknown_keys.json")
    assert card_to_dict(card) == raw
    assert card.greenroom.canon_facts == ["Ada is 60."]
    assert card.greenroom.mode == "review"
    assert card.greenroom.model_extra == {"future_greenroom_key": {"x": 1}}
    # Types are kept exactly: 1.5 stays a float, the 1.0 inside extensions stays 1.0.
    assert json.loads(dump_card_json(card)) == raw
    assert "1.0" in dump_card_json(card)

    out = tmp_path / "ada.json"
    write_card_json(card, out)
    assert json.loads(out.read_text(encoding="utf-8")) == raw


def test_round_trip_output_is_a_copy() -> None:
    raw = _fixture("v2_unknown_keys.json")
    card = parse_card(raw)
    raw["data"]["name"] = "Changed"
    dumped = card_to_dict(card)
    dumped["data"]["extensions"]["some_tool"]["depth"] = 99
    assert card.data.name == "Ada"
    assert card_to_dict(card)["data"]["extensions"]["some_tool"]["depth"] == 4


def test_v3_json_round_trip() -> None:
    raw = _fixture("v3_lorebook.json")
    card = parse_card((FIXTURES / "v3_lorebook.json").read_text(encoding="utf-8"))
    assert card.is_v3
    assert card.data.assets is not None and card.data.assets[0].uri == "ccdefault:"
    assert card.data.character_book is not None
    assert card.data.character_book.entries[0].use_regex is True
    assert card_to_dict(card) == raw
    assert card_to_dict(parse_card(dump_card_json(card))) == raw


def test_v2_png_round_trip_writes_chara_only(tmp_path: Path) -> None:
    raw = _fixture("v2_unknown_keys.json")
    path = tmp_path / "ada.png"
    write_card_png(parse_card(raw), path)
    chunks = _png_text_chunks(path)
    assert set(chunks) == {"chara"}
    assert _decode_chunk(chunks["chara"]) == raw
    assert card_to_dict(load_card(path)) == raw
    with Image.open(path) as image:
        assert image.size == (400, 600)


def test_v3_png_round_trip_writes_ccv3_and_v2_compatible_chara(tmp_path: Path) -> None:
    raw = _fixture("v3_lorebook.json")
    path = tmp_path / "bram.png"
    avatar = Image.new("RGBA", (64, 64), (10, 200, 30, 255))
    write_card_png(parse_card(raw), path, image=avatar)
    chunks = _png_text_chunks(path)
    assert set(chunks) == {"chara", "ccv3"}
    assert _decode_chunk(chunks["ccv3"]) == raw
    v2 = _decode_chunk(chunks["chara"])
    assert (v2["spec"], v2["spec_version"]) == ("chara_card_v2", "2.0")
    assert v2["data"] == raw["data"]
    assert parse_card(v2).spec == "chara_card_v2"
    assert card_to_dict(load_card(path)) == raw
    with Image.open(path) as image:
        assert image.size == (64, 64)
        assert image.getpixel((0, 0)) == (10, 200, 30, 255)


def test_png_reader_prefers_ccv3_over_chara(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    v2 = CharacterCard.new("Old Name", v3=False)
    v3 = CharacterCard.new("New Name")
    info.add_text("chara", base64.b64encode(dump_card_json(v2).encode()).decode())
    info.add_text("ccv3", base64.b64encode(dump_card_json(v3).encode()).decode())
    path = tmp_path / "both.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert load_card(path).data.name == "New Name"


def test_png_overwrites_stale_card_chunks_of_a_reused_image(tmp_path: Path) -> None:
    first = tmp_path / "first.png"
    write_card_png(CharacterCard.new("First"), first)
    with Image.open(first) as image:
        image.load()
        write_card_png(CharacterCard.new("Second", v3=False), tmp_path / "second.png", image=image)
    chunks = _png_text_chunks(tmp_path / "second.png")
    assert set(chunks) == {"chara"}
    assert load_card(tmp_path / "second.png").data.name == "Second"


def test_import_sillytavern_style_png_and_export_keeps_every_field(tmp_path: Path) -> None:
    exported = _sillytavern_export()
    source = tmp_path / "elsewhere" / "main_Seraphel_spec_v2.png"
    source.parent.mkdir()
    info = PngImagePlugin.PngInfo()
    payload = json.dumps(exported, ensure_ascii=False).encode("utf-8")
    info.add_text("chara", base64.b64encode(payload).decode("ascii"))
    Image.new("RGB", (400, 600), (30, 60, 30)).save(source, "PNG", pnginfo=info)

    registry = PersonaRegistry.load()
    persona = registry.import_card(source, tmp_path / "personas")
    copied = tmp_path / "personas" / "seraphel.png"
    assert copied.read_bytes() == source.read_bytes()
    assert registry.get("seraphel") is persona
    assert persona.greeting("Kim") == "*Seraphel kneels beside Kim.* You're safe now."

    card = persona.card
    assert card_to_dict(card) == exported
    extensions = card.data.extensions.model_extra or {}
    assert extensions["depth_prompt"] == {
        "prompt": "{{char}} is calm.",
        "depth": 4,
        "role": "system",
    }
    assert extensions["talkativeness"] == "0.5"
    assert extensions["fav"] is False
    assert extensions["world"] == "Eldwood"
    assert card.greenroom == GreenroomExtension()

    for writer, out in (
        (write_card_png, tmp_path / "out.png"),
        (write_card_json, tmp_path / "out.json"),
    ):
        writer(card, out)
        assert card_to_dict(load_card(out)) == exported
    assert _decode_chunk(_png_text_chunks(tmp_path / "out.png")["chara"]) == exported
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8")) == exported

    # A fresh registry over the import folder sees the same persona.
    again = PersonaRegistry.load([tmp_path / "personas"])
    assert again.get("Seraphel").version_hash == persona.version_hash


def test_new_card_has_every_required_field() -> None:
    card = CharacterCard.new(
        "Nell", greenroom=GreenroomExtension(canon_facts=["Nell is 9."]), description="A kid."
    )
    dumped = card_to_dict(card)
    assert dumped["spec"] == "chara_card_v3"
    for key in ("first_mes", "mes_example", "alternate_greetings", "group_only_greetings", "tags"):
        assert key in dumped["data"]
    assert dumped["data"]["extensions"] == {"greenroom": {"canon_facts": ["Nell is 9."]}}
    assert card_to_dict(parse_card(dumped)) == dumped


# --- malformed cards --------------------------------------------------------------------------


def _valid() -> dict[str, Any]:
    return card_to_dict(CharacterCard.new("Valid", v3=False))


def _with(path: list[str | int], value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(_valid())
    node: Any = raw
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return raw


def _without(path: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(_valid())
    node: Any = raw
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return raw


BAD_CARDS: list[tuple[str, Any, str | None, str]] = [
    ("missing_name", _without(["data", "name"]), "data.name", "required field is missing"),
    ("blank_name", _with(["data", "name"], "  "), "data.name", "must not be empty"),
    ("name_number", _with(["data", "name"], 7), "data.name", "valid string, got number"),
    ("desc_list", _with(["data", "description"], ["x"]), "data.description", "got array"),
    ("tags_string", _with(["data", "tags"], "a,b"), "data.tags", "valid list, got string"),
    ("no_spec", _without(["spec"]), "spec", "missing"),
    ("wrong_spec", _with(["spec"], "chara_card_v9"), "spec", "'chara_card_v9'"),
    ("data_list", _with(["data"], []), "data", "got array"),
    (
        "greenroom_facts_string",
        _with(["data", "extensions"], {"greenroom": {"canon_facts": "Nell is 9"}}),
        "data.extensions.greenroom.canon_facts",
        "got string",
    ),
    (
        "greenroom_bad_mode",
        _with(["data", "extensions"], {"greenroom": {"mode": "manual"}}),
        "data.extensions.greenroom.mode",
        "'auto' or 'review'",
    ),
    (
        "entry_order_string",
        _with(
            ["data", "character_book"],
            {"entries": [{"keys": ["a"], "content": "x"}, {"keys": ["b"], "insertion_order": "5"}]},
        ),
        "data.character_book.entries[1].insertion_order",
        "got string",
    ),
    (
        "entry_enabled_number",
        _with(["data", "character_book"], {"entries": [{"keys": ["a"], "enabled": 1}]}),
        "data.character_book.entries[0].enabled",
        "valid boolean, got number",
    ),
]


@pytest.mark.parametrize(
    ("label", "raw", "field", "fragment"), BAD_CARDS, ids=[case[0] for case in BAD_CARDS]
)
def test_malformed_card_names_file_and_field(
    tmp_path: Path, label: str, raw: Any, field: str | None, fragment: str
) -> None:
    path = tmp_path / f"{label}.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(CardError) as caught:
        load_card(path)
    error = caught.value
    assert error.path == path
    assert error.field == field
    message = str(error)
    assert "\n" not in message
    assert str(path) in message
    assert field is None or field in message
    assert fragment in message


def test_bad_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"spec": "chara_card_v2",\n "data": {"name": "x",}}', encoding="utf-8")
    with pytest.raises(CardError, match=r"broken\.json: invalid JSON at line 2 column") as caught:
        load_card(path)
    assert caught.value.field is None


@pytest.mark.parametrize(
    ("content", "field", "fragment"),
    [
        (b"\x89PNG\r\n\x1a\nnot really a png", None, "not a readable PNG image"),
        (b"GIF89a.....", None, "bad signature"),
    ],
)
def test_bad_png_bytes(tmp_path: Path, content: bytes, field: str | None, fragment: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(CardError, match=fragment) as caught:
        load_card(path)
    assert (caught.value.path, caught.value.field) == (path, field)


def _png_with_chunk(path: Path, key: str | None, value: str) -> Path:
    info = PngImagePlugin.PngInfo()
    if key is not None:
        info.add_text(key, value)
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(
    ("key", "value", "field", "fragment"),
    [
        (None, "", "chara", "no 'ccv3' or 'chara' text chunk"),
        ("chara", "%%% not base64 %%%", "chara", "not valid base64"),
        ("ccv3", base64.b64encode(b"{nope").decode(), "ccv3", "invalid JSON"),
        ("chara", base64.b64encode(b"\xff\xfe").decode(), "chara", "not UTF-8"),
    ],
)
def test_png_chunk_problems_name_the_chunk(
    tmp_path: Path, key: str | None, value: str, field: str, fragment: str
) -> None:
    path = _png_with_chunk(tmp_path / "card.png", key, value)
    with pytest.raises(CardError, match=fragment) as caught:
        load_card(path)
    assert (caught.value.path, caught.value.field) == (path, field)


def test_png_card_with_bad_field_names_the_field(tmp_path: Path) -> None:
    payload = json.dumps(_with(["data", "first_mes"], 5)).encode()
    path = _png_with_chunk(tmp_path / "card.png", "chara", base64.b64encode(payload).decode())
    with pytest.raises(CardError) as caught:
        load_card(path)
    assert (caught.value.path, caught.value.field) == (path, "data.first_mes")


def test_parse_card_rejects_other_inputs() -> None:
    with pytest.raises(CardError, match="card must be a JSON object, got array"):
        parse_card("[1, 2]")
    with pytest.raises(CardError, match="not plain JSON data"):
        parse_card({"spec": "chara_card_v2", "data": {"name": "x", "tags": {1, 2}}})
    with pytest.raises(CardError, match="not UTF-8"):
        parse_card(b"\xff\xfe{}")
    with pytest.raises(CardError, match=r"^<memory>: data\.name"):
        parse_card({"spec": "chara_card_v2", "spec_version": "2.0", "data": {}})


def test_directory_load_collects_errors_and_keeps_good_cards(tmp_path: Path) -> None:
    write_card_json(CharacterCard.new("Good One"), tmp_path / "a_good.json")
    write_card_png(CharacterCard.new("Good Two"), tmp_path / "b_good.png")
    (tmp_path / "c_bad.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "d_noname.json").write_text(json.dumps(_without(["data", "name"])), "utf-8")
    (tmp_path / "e_bad.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    (tmp_path / "notes.txt").write_text("ignored", encoding="utf-8")

    registry = PersonaRegistry.load([tmp_path, tmp_path / "missing"])
    assert {"Good One", "Good Two", "Marlowe", "Juniper", "Captain Vex"} <= set(registry.names())
    failures = {(error.path.name if error.path else None, error.field) for error in registry.errors}
    assert failures == {
        ("c_bad.json", None),
        ("d_noname.json", "data.name"),
        ("e_bad.png", None),
        ("missing", None),
    }


def test_import_rejects_invalid_card_and_copies_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_with(["data", "tags"], 3)), encoding="utf-8")
    registry = PersonaRegistry()
    with pytest.raises(CardError, match=r"data\.tags"):
        registry.import_card(bad, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())
    assert len(registry) == 0


_KNOWN_KEYS = {
    *CharacterCard.model_fields,
    *CardData.model_fields,
    *GreenroomExtension.model_fields,
    *LoreEntry.model_fields,
}
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_unknown_keys = st.dictionaries(
    st.text(min_size=1, max_size=10).filter(lambda key: key not in _KNOWN_KEYS),
    _json_values,
    max_size=3,
)


@settings(max_examples=40, deadline=None)
@given(top=_unknown_keys, data=_unknown_keys, extensions=_unknown_keys, green=_unknown_keys,
       entry=_unknown_keys)  # fmt: skip
def test_any_unknown_json_survives_json_and_png_round_trips(
    tmp_path_factory: pytest.TempPathFactory,
    top: dict[str, Any],
    data: dict[str, Any],
    extensions: dict[str, Any],
    green: dict[str, Any],
    entry: dict[str, Any],
) -> None:
    raw = card_to_dict(CharacterCard.new("Fuzz", character_book={"entries": [{"keys": ["k"]}]}))
    raw.update(top)
    raw["data"].update(data)
    raw["data"]["extensions"].update(extensions)
    raw["data"]["extensions"]["greenroom"] = {"canon_facts": ["x"], **green}
    raw["data"]["character_book"]["entries"][0].update(entry)
    card = parse_card(raw)
    assert card_to_dict(card) == raw
    assert card_to_dict(parse_card(dump_card_json(card))) == raw
    path = tmp_path_factory.mktemp("fuzz") / "card.png"
    write_card_png(card, path, image=Image.new("RGB", (2, 2)))
    assert card_to_dict(load_card(path)) == raw
