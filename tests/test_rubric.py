"""The rubric: its definition and version, and actors' scores through the decision service and
the terminal, on both databases. Every refusal stores nothing.

(The Discord console's Score form is tested in ``test_console_discord.py``.)
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from bot.engine import ConversationEngine, EngineLimits, IncomingMessage, Reply
from bot.llm import FakeChatModel
from bot.runtime import decision_service
from bot.settings import ConfigError, load_settings
from bot.terminal import TerminalChat
from feedback.corrections import InvalidAction
from feedback.models import FeedbackEvent
from feedback.privacy import PrivacyStore
from feedback.rubric import (
    DEFAULT_DIMENSIONS,
    MAX_DIMENSIONS,
    Rubric,
    RubricError,
    ScoreError,
)
from personas import PersonaRegistry
from personas.schema import CharacterCard, GreenroomExtension
from tests.factories import ALICE_ACTOR, BOB_ACTOR, decisions_for

if TYPE_CHECKING:
    from bot.decisions import DecisionService
    from feedback.store import ConversationStore

ANCHORS = {1: "awful", 2: "poor", 3: "fine", 4: "good", 5: "superb"}
HUMOUR = {
    "name": "humour",
    "label": "Dry humour",
    "anchors": {str(k): v for k, v in ANCHORS.items()},
}


def _dimension(name: str, label: str = "A dimension") -> dict[str, Any]:
    return {"name": name, "label": label, "anchors": dict(ANCHORS)}


# -- the rubric itself ------------------------------------------------------------------------


def test_the_default_rubric_has_four_anchored_dimensions_and_a_stable_version() -> None:
    rubric = Rubric.of(DEFAULT_DIMENSIONS)
    assert rubric.names == ("fidelity", "voice", "resonance", "memory")
    assert all(sorted(d.anchors) == [1, 2, 3, 4, 5] for d in rubric.dimensions)
    assert len(rubric.version) == 12 and int(rubric.version, 16) >= 0
    # the same definition, given as plain data (as TOML or JSON gives it), is the same version
    again = Rubric.of([d.model_dump(mode="json") for d in DEFAULT_DIMENSIONS])
    assert again.version == rubric.version
    assert load_settings().rubric.rubric().version == rubric.version


def test_any_change_to_the_rubric_makes_a_new_version() -> None:
    base = Rubric.of([_dimension("a"), _dimension("b")])
    reworded = dict(_dimension("b"), anchors={**ANCHORS, 3: "fine enough"})
    relabelled = _dimension("b", "Another label")
    versions = {
        base.version,
        Rubric.of([_dimension("b"), _dimension("a")]).version,  # order
        Rubric.of([_dimension("a"), reworded]).version,  # an anchor
        Rubric.of([_dimension("a"), relabelled]).version,  # a label
        Rubric.of([_dimension("a")]).version,  # a dimension fewer
        base.extended([HUMOUR]).version,  # a card's dimension
    }
    assert len(versions) == 6
    assert base.extended([]) is base


@pytest.mark.parametrize(
    ("dimensions", "message"),
    [
        ([], "at least one dimension"),
        ([_dimension("Fidelity")], "must be 1 to 24 of a-z"),
        ([_dimension("x" * 25)], "must be 1 to 24"),
        ([_dimension("unsafe")], "reserved"),
        ([_dimension("overall")], "reserved"),
        ([dict(_dimension("a"), anchors={1: "a", 2: "b", 3: "c", 4: "d"})], "exactly the scores"),
        ([dict(_dimension("a"), anchors={**ANCHORS, 6: "more"})], "exactly the scores"),
        ([dict(_dimension("a"), anchors={**ANCHORS, 2: "x" * 101})], "anchor 2"),
        ([dict(_dimension("a"), anchors={**ANCHORS, 2: "  "})], "anchor 2"),
        ([_dimension("a", "x" * 46)], "45 characters"),
        ([dict(_dimension("a"), colour="red")], "Extra inputs"),
        ([_dimension("a"), _dimension("a")], "'a' is defined twice"),
        ([_dimension(f"d{n}") for n in range(MAX_DIMENSIONS + 1)], "at most 16"),
    ],
)
def test_a_malformed_rubric_is_refused_naming_what_is_wrong(
    dimensions: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(RubricError, match=message):
        Rubric.of(dimensions)


def test_a_malformed_rubric_setting_stops_the_settings_with_one_line() -> None:
    with pytest.raises(ConfigError, match=r"rubric\.dimensions\.0\.name .*'Bad'"):
        load_settings(rubric={"dimensions": [_dimension("Bad")]})
    with pytest.raises(ConfigError, match="defined twice"):
        load_settings(rubric={"dimensions": [_dimension("a"), _dimension("a")]})
    custom = load_settings(rubric={"dimensions": [_dimension("warmth")]})
    assert custom.rubric.rubric().names == ("warmth",)


def test_parse_scores_reads_dimensions_the_flag_and_the_overall_score() -> None:
    rubric = Rubric.of(DEFAULT_DIMENSIONS)
    scores = rubric.parse_scores("resonance=5  Fidelity=4 unsafe=no overall=3")
    assert scores.scores == {"fidelity": 4, "resonance": 5}  # in the rubric's order
    assert (scores.unsafe, scores.rating, scores.rubric_version) == (False, 3, rubric.version)
    flagged = rubric.parse_scores("unsafe=yes")
    assert flagged.scores == {} and flagged.unsafe is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fidelity=0 unsafe=no", r"fidelity=0: a score is a whole number from 1 to 5"),
        ("fidelity=6 unsafe=no", r"fidelity=6: a score"),
        ("fidelity=4.5 unsafe=no", r"fidelity=4\.5: a score"),
        ("fidelity=-1 unsafe=no", r"fidelity=-1: a score"),
        ("fidelity=great unsafe=no", r"fidelity=great: a score"),
        ("humour=4 unsafe=no", r"unknown dimension 'humour'; this rubric has: fidelity, voice"),
        ("fidelity=4", r"the unsafe flag is missing"),
        ("fidelity=4 unsafe=maybe", r"unsafe=maybe: say unsafe=yes or unsafe=no"),
        ("fidelity=4 fidelity=5 unsafe=no", r"fidelity is given twice"),
        ("fidelity=4 unsafe=no unsafe=yes", r"unsafe is given twice"),
        ("fidelity 4 unsafe=no", r"'fidelity' is not name=value"),
        ("fidelity= unsafe=no", r"'fidelity=' is not name=value"),
        ("unsafe=no", r"score at least one dimension"),
        ("", r"the unsafe flag is missing"),
        ("fidelity=4 unsafe=no overall=9", r"overall=9: the overall score"),
        ("fidelity=4 unsafe=no " + "x" * 600, r"scores fit in 600"),
    ],
)
def test_parse_scores_refuses_bad_input_naming_it(text: str, message: str) -> None:
    with pytest.raises(ScoreError, match=message):
        Rubric.of(DEFAULT_DIMENSIONS).parse_scores(text)


def test_check_refuses_values_a_form_could_forge() -> None:
    rubric = Rubric.of(DEFAULT_DIMENSIONS)
    for scores, unsafe in (
        ({"fidelity": True}, False),  # a bool is not a score
        ({"fidelity": "4"}, False),  # nor is text
        ({"fidelity": 4}, "no"),  # the flag is a bool
        ({"fidelity": 4}, None),
    ):
        with pytest.raises(ScoreError):
            rubric.check(scores, unsafe=unsafe)


# -- the decision service, on both databases --------------------------------------------------


def _registry(*extra: CharacterCard) -> PersonaRegistry:
    registry = PersonaRegistry.load()
    for card in extra:
        registry.add(card)
    return registry


def _engine(
    store: ConversationStore, registry: PersonaRegistry | None = None
) -> ConversationEngine:
    return ConversationEngine(
        personas=registry or _registry(),
        store=store,
        model=FakeChatModel(replies=["Evening."]),
        limits=EngineLimits(),
    )


async def _reply(decisions: DecisionService, persona: str = "Marlowe") -> int:
    reply = await decisions.engine.respond(
        IncomingMessage(
            transport="terminal",
            scope="terminal:ann",
            user_id="terminal:ann",
            user_name="ann",
            text="hello",
            persona=persona,
        )
    )
    assert isinstance(reply, Reply)
    await decisions.present(reply, hold=False)
    return reply.candidate_id


async def _events(store: ConversationStore) -> list[FeedbackEvent]:
    async with store._sessions() as session:
        return list((await session.scalars(select(FeedbackEvent).order_by(FeedbackEvent.id))).all())


async def test_scores_are_stored_as_one_score_event_with_version_and_flag(
    store: ConversationStore,
) -> None:
    decisions, _ = decisions_for(_engine(store))
    candidate = await _reply(decisions)
    scored: list[str] = []

    async def news(item: Any) -> None:
        scored.append(item.kind)

    decisions.subscribe(news)
    outcome = await decisions.score(
        candidate,
        actor=ALICE_ACTOR,
        scores={"resonance": 5, "fidelity": 4},
        unsafe=False,
        rating=4,
        key="click-1",
    )
    assert outcome.status == "done" and scored == ["scored"]
    again = await decisions.score(
        candidate, actor=ALICE_ACTOR, scores={"fidelity": 1}, unsafe=True, key="click-1"
    )
    assert again.status == "duplicate"
    await decisions.score(candidate, actor=BOB_ACTOR, scores={}, unsafe=True, key=None)
    alice, bob = await _events(store)
    version = decisions.rubric.version
    assert (alice.kind, alice.actor_id, alice.candidate_id) == ("score", ALICE_ACTOR.id, candidate)
    assert alice.scores == {"fidelity": 4, "resonance": 5}
    assert (alice.unsafe, alice.rating, alice.rubric_version) == (False, 4, version)
    assert alice.persona == "Marlowe" and alice.prompt_snapshot_id is not None
    assert (bob.scores, bob.unsafe, bob.rating) == ({}, True, None)


@pytest.mark.parametrize(
    ("scores", "unsafe", "rating", "message"),
    [
        ({"fidelity": 0}, False, None, "fidelity=0: a score is a whole number from 1 to 5"),
        ({"fidelity": 6}, False, None, "fidelity=6"),
        ({"humour": 3}, False, None, "unknown dimension 'humour'"),
        ({"fidelity": 3}, None, None, "the unsafe flag is missing"),
        ({"fidelity": 3}, False, 0, "overall=0"),
        ({}, False, None, "score at least one dimension"),
    ],
)
async def test_bad_scores_are_refused_and_nothing_is_stored(
    store: ConversationStore,
    scores: dict[str, int],
    unsafe: bool | None,
    rating: int | None,
    message: str,
) -> None:
    decisions, _ = decisions_for(_engine(store))
    candidate = await _reply(decisions)
    with pytest.raises(InvalidAction, match=message):
        await decisions.score(
            candidate, actor=ALICE_ACTOR, scores=scores, unsafe=unsafe, rating=rating, key="k"
        )
    assert await _events(store) == []


async def test_a_form_opened_under_another_rubric_version_is_refused(
    store: ConversationStore,
) -> None:
    decisions, _ = decisions_for(_engine(store))
    candidate = await _reply(decisions)
    with pytest.raises(InvalidAction, match="rubric changed since this form was opened"):
        await decisions.score(
            candidate,
            actor=ALICE_ACTOR,
            scores={"fidelity": 4},
            unsafe=False,
            key=None,
            rubric_version="000000000000",
        )
    with pytest.raises(InvalidAction, match="no longer exists"):
        await decisions.score(
            candidate + 1000, actor=ALICE_ACTOR, scores={"fidelity": 4}, unsafe=False, key=None
        )
    assert await _events(store) == []


async def test_a_card_adds_dimensions_and_earlier_scores_keep_their_version(
    store: ConversationStore,
) -> None:
    nova = CharacterCard.new("Nova", greenroom=GreenroomExtension(rubric=[HUMOUR]), first_mes="Hi.")
    registry = _registry(nova)
    deployment = Rubric.of([_dimension("warmth")])
    decisions, _ = decisions_for(_engine(store, registry), rubric=deployment)
    assert decisions.rubric_for("Marlowe") is deployment
    assert decisions.rubric_for("nova").names == ("warmth", "humour")
    candidate = await _reply(decisions, "Nova")
    await decisions.score(
        candidate, actor=ALICE_ACTOR, scores={"humour": 5, "warmth": 2}, unsafe=False, key=None
    )
    with pytest.raises(InvalidAction, match="unknown dimension 'fidelity'"):
        await decisions.score(
            candidate, actor=ALICE_ACTOR, scores={"fidelity": 2}, unsafe=False, key=None
        )
    # The deployment changes its rubric: new scores get the new version, old ones keep theirs.
    changed, _ = decisions_for(_engine(store, registry), rubric=Rubric.of(DEFAULT_DIMENSIONS))
    await changed.score(candidate, actor=BOB_ACTOR, scores={"humour": 4}, unsafe=False, key=None)
    first, second = await _events(store)
    assert first.rubric_version == decisions.rubric_for("Nova").version
    assert second.rubric_version == changed.rubric_for("Nova").version != first.rubric_version
    assert first.scores == {"warmth": 2, "humour": 5} and second.scores == {"humour": 4}


@pytest.mark.parametrize(
    ("rubric", "message"),
    [
        ([_dimension("fidelity")], "card dimension 'fidelity' is already in the deployment's"),
        ([HUMOUR, {"name": "x"}], r"card dimension 2 \(label\): Field required"),
        ([_dimension("Bad")], r"card dimension 1 \(name\): dimension name 'Bad' must be"),
    ],
)
async def test_a_card_with_a_bad_rubric_cannot_be_scored_and_says_why(
    store: ConversationStore, rubric: list[dict[str, Any]], message: str
) -> None:
    broken = CharacterCard.new(
        "Broken", greenroom=GreenroomExtension(rubric=rubric), first_mes="Hi."
    )
    decisions, _ = decisions_for(_engine(store, _registry(broken)))
    with pytest.raises(RubricError, match=f"persona Broken's card rubric: {message}"):
        decisions.rubric_for("Broken")
    candidate = await _reply(decisions, "Broken")
    with pytest.raises(InvalidAction, match="cannot be scored: persona Broken's card rubric"):
        await decisions.score(
            candidate, actor=ALICE_ACTOR, scores={"voice": 3}, unsafe=False, key=None
        )
    assert await _events(store) == []


async def test_start_up_names_a_card_whose_rubric_is_wrong(
    store: ConversationStore, caplog: pytest.LogCaptureFixture
) -> None:
    broken = CharacterCard.new(
        "Broken", greenroom=GreenroomExtension(rubric=[_dimension("voice")]), first_mes="Hi."
    )
    caplog.set_level(logging.WARNING, logger="bot.runtime")
    decisions = decision_service(
        load_settings(), _engine(store, _registry(broken)), store._sessions
    )
    assert [r.getMessage() for r in caplog.records if r.name == "bot.runtime"] == [
        "persona Broken's card rubric: card dimension 'voice' is already in the deployment's rubric"
    ]
    assert decisions.rubric_for("Marlowe").version == Rubric.of(DEFAULT_DIMENSIONS).version


# -- the terminal -------------------------------------------------------------------------------


async def test_the_terminal_scores_the_last_reply_and_refuses_bad_scores(
    store: ConversationStore,
) -> None:
    engine = _engine(store)
    decisions, _ = decisions_for(engine)
    chat = TerminalChat(
        engine,
        decisions=decisions,
        persona="Marlowe",
        user="ann",
        privacy=PrivacyStore(store._sessions),
    )
    out, err = io.StringIO(), io.StringIO()
    await chat.run_script(["/score fidelity=4 unsafe=no"], out, err)
    assert "Nothing to /score yet" in err.getvalue()
    script = [
        "hello",
        "/score",
        "/rubric",
        "/score fidelity=9 unsafe=no",
        "/score humour=3 unsafe=no",
        "/score fidelity=4 resonance=5",
        "/score fidelity=4 resonance=5 unsafe=no overall=4",
        "/rate 2",
    ]
    err = io.StringIO()
    assert await chat.run_script(script, out, err) == 1
    notices = err.getvalue().splitlines()[1:]  # after "chatting with ..."
    version = decisions.rubric.version
    assert (
        notices[0].startswith("Usage: /score DIMENSION=1-5") and "fidelity (Persona" in notices[0]
    )
    assert f"Rubric {version}" in err.getvalue() and "  5 Moving: the user" in err.getvalue()
    assert "Not scored: fidelity=9: a score is a whole number from 1 to 5." in notices
    assert (
        "Not scored: unknown dimension 'humour'; this rubric has: fidelity, voice, resonance, "
        "memory." in notices
    )
    assert any("the unsafe flag is missing" in line for line in notices)
    assert (
        f"Scored fidelity 4/5, resonance 5/5, overall 4/5, not unsafe (rubric {version})."
        in notices
    )
    score, rate = await _events(store)
    assert (score.kind, score.actor_id) == ("score", "terminal:ann")
    assert (score.scores, score.unsafe, score.rating) == ({"fidelity": 4, "resonance": 5}, False, 4)
    assert (rate.kind, rate.rating, rate.scores) == ("rate", 2, None)
