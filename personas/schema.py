"""Typed models of Character Card V2 and V3, plus Greenroom's own extension.

Every model keeps unknown keys (``extra="allow"``) and validates in strict mode, so a value is
never silently converted (``"5"`` stays an error instead of becoming ``5``, ``1.0`` stays a
float). Together with :func:`~personas.card_io.card_to_dict` (which dumps only the keys that
were present) this gives an exact round trip of any card another tool wrote.

Text fields that the specs call required may be absent or ``null`` in cards found in the wild;
they are accepted and read as empty text by :class:`~personas.persona.Persona`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "SPEC_V2",
    "SPEC_V3",
    "CardAsset",
    "CardData",
    "CardExtensions",
    "CharacterBook",
    "CharacterCard",
    "GreenroomExtension",
    "LoreEntry",
]

SPEC_V2 = "chara_card_v2"
SPEC_V3 = "chara_card_v3"

#: Number type that keeps what it was given: ints stay ints, floats stay floats.
Number = int | float

_CARD_CONFIG = ConfigDict(extra="allow", strict=True, frozen=True)


class GreenroomExtension(BaseModel):
    """Greenroom's fields, stored under ``data.extensions.greenroom`` of a card.

    Unknown keys survive a round trip like everywhere else in the card.
    """

    model_config = _CARD_CONFIG

    #: Facts about the persona that must stay true (used by contradiction checks).
    canon_facts: list[str] = Field(default_factory=list)
    #: How the persona speaks.
    tone_rules: list[str] = Field(default_factory=list)
    #: Hard boundaries the persona never crosses.
    boundaries: list[str] = Field(default_factory=list)
    #: Questions the card settles, with answers code can check, for ``greenroom eval
    #: stability``: ``{"kind": "canon"|"boundary"|"voice", "ask": ..., "expect": [...], ...}``
    #: (fields in :class:`personas.probes.Probe`). Checked when the harness runs, so a typo
    #: here never stops the persona from loading; kinds not declared are derived from the card.
    probes: list[dict[str, Any]] = Field(default_factory=list)
    #: Topics that must go to a human actor instead of the model (e.g. grief, self-harm).
    actor_only_topics: list[str] = Field(default_factory=list)
    #: Short in-persona lines used when the model fails or times out.
    fallback_lines: list[str] = Field(default_factory=list)
    #: In-persona lines used when a reply is held for review or dropped.
    holding_lines: list[str] = Field(default_factory=list)
    #: In-persona lines that lead to help resources, sent instead of an urgent (self-harm,
    #: crisis) reply when no actor can review it.
    safety_lines: list[str] = Field(default_factory=list)
    #: In-persona lines for a message with only an attachment or a sticker.
    non_text_lines: list[str] = Field(default_factory=list)
    #: ``auto`` sends model replies directly; ``review`` holds every reply for an actor.
    mode: Literal["auto", "review"] = "auto"
    #: An image URL transports may show as the persona's avatar (Discord webhooks).
    avatar_url: str | None = None
    #: Rubric dimensions this persona adds to the deployment's, each
    #: ``{"name": ..., "label": ..., "anchors": {"1": ..., ..., "5": ...}}``; checked by
    #: :class:`feedback.rubric.Rubric` when a reply of this persona is scored (and at start-up).
    rubric: list[dict[str, Any]] = Field(default_factory=list)


class CardExtensions(BaseModel):
    """``data.extensions``: free-form per the specs; Greenroom reads its own key."""

    model_config = _CARD_CONFIG

    greenroom: GreenroomExtension | None = None


class LoreEntry(BaseModel):
    """One lorebook entry (V2 fields plus V3 ``use_regex``)."""

    model_config = _CARD_CONFIG

    keys: list[str] = Field(default_factory=list)
    content: str = ""
    extensions: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    insertion_order: Number = 0
    case_sensitive: bool | None = None
    use_regex: bool | None = None
    constant: bool | None = None
    name: str | None = None
    priority: Number | None = None
    id: int | str | None = None
    comment: str | None = None
    selective: bool | None = None
    secondary_keys: list[str] | None = None
    position: str | int | None = None


class CharacterBook(BaseModel):
    """``data.character_book``: the lorebook that travels with a card."""

    model_config = _CARD_CONFIG

    name: str | None = None
    description: str | None = None
    scan_depth: int | None = None
    token_budget: int | None = None
    recursive_scanning: bool | None = None
    extensions: dict[str, Any] = Field(default_factory=dict)
    entries: list[LoreEntry] = Field(default_factory=list)


class CardAsset(BaseModel):
    """A V3 asset (icon, background, ...); Greenroom keeps but does not use them."""

    model_config = _CARD_CONFIG

    type: str
    uri: str
    name: str = ""
    ext: str = ""


class CardData(BaseModel):
    """``data`` of a V2 or V3 card. V3-only fields are simply absent from V2 cards."""

    model_config = _CARD_CONFIG

    name: str
    description: str | None = ""
    personality: str | None = ""
    scenario: str | None = ""
    first_mes: str | None = ""
    mes_example: str | None = ""
    creator_notes: str | None = ""
    system_prompt: str | None = ""
    post_history_instructions: str | None = ""
    alternate_greetings: list[str] | None = Field(default_factory=list)
    character_book: CharacterBook | None = None
    tags: list[str] | None = Field(default_factory=list)
    creator: str | None = ""
    character_version: str | None = ""
    extensions: CardExtensions = Field(default_factory=CardExtensions)
    # V3 additions
    nickname: str | None = None
    creator_notes_multilingual: dict[str, str] | None = None
    source: list[str] | None = None
    group_only_greetings: list[str] | None = None
    creation_date: Number | None = None
    modification_date: Number | None = None
    assets: list[CardAsset] | None = None

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class CharacterCard(BaseModel):
    """A Character Card V2 (``chara_card_v2``) or V3 (``chara_card_v3``).

    Unknown top-level keys (such as the V1 copies SillyTavern writes next to ``data``) are kept.
    Build new cards with :meth:`new` so every field the specs require is present on export.
    """

    model_config = _CARD_CONFIG

    spec: Literal["chara_card_v2", "chara_card_v3"]
    #: ``"2.0"`` or ``"3.0"`` by the specs; not checked, since nothing depends on it.
    spec_version: str | Number | None = None
    data: CardData

    @property
    def is_v3(self) -> bool:
        return self.spec == SPEC_V3

    @property
    def greenroom(self) -> GreenroomExtension:
        """Greenroom's extension, or the defaults when the card has none."""
        return self.data.extensions.greenroom or GreenroomExtension()

    @classmethod
    def new(
        cls,
        name: str,
        *,
        v3: bool = True,
        greenroom: GreenroomExtension | None = None,
        **fields: Any,
    ) -> CharacterCard:
        """A new card with every field the spec requires, so exports are complete.

        ``fields`` are other ``data`` fields (``description=...``, ``character_book=...``).
        """
        data: dict[str, Any] = {
            "name": name,
            "description": "",
            "personality": "",
            "scenario": "",
            "first_mes": "",
            "mes_example": "",
            "creator_notes": "",
            "system_prompt": "",
            "post_history_instructions": "",
            "alternate_greetings": [],
            "tags": [],
            "creator": "",
            "character_version": "",
            "extensions": {},
        }
        if v3:
            data["group_only_greetings"] = []
        data.update(fields)
        if greenroom is not None:
            extensions = data["extensions"]
            if isinstance(extensions, BaseModel):
                extensions = extensions.model_dump(exclude_unset=True)
            data["extensions"] = {
                **extensions,
                "greenroom": greenroom.model_dump(exclude_unset=True),
            }
        return cls.model_validate(
            {
                "spec": SPEC_V3 if v3 else SPEC_V2,
                "spec_version": "3.0" if v3 else "2.0",
                "data": data,
            }
        )
