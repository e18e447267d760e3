"""What records mean, built from real actor actions: the one preference ordering, the rating
filter on every record, example dialogue kept out of the conversation, and the card version.

The replies come from the real engine (real persona cards, a scripted model) and the actions go
through the real decision service and correction store, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from bot.engine import ConversationEngine, EngineLimits, IncomingMessage, Reply
from bot.llm import FakeChatModel
from feedback.corrections import Actor, CorrectionStore
from feedback.exports import FORMATS, ExportFilter, export_to_file, iter_records
from feedback.exports.records import CONFLICTING_VERDICTS, PROMPT_BEFORE_MARKERS
from feedback.models import FeedbackEvent, PromptSnapshot
from feedback.privacy import PrivacyStore
from feedback.store import SnapshotData
from personas import PersonaRegistry
from tests.factories import (
    ALICE_ACTOR,
    BOB_ACTOR,
    RecallingMemory,
    add_turn,
    decisions_for,
    snapshot_for,
)
from tests.test_api import Api, api  # noqa: F401 - the trainer API fixture
from tests.test_exports_cli import _invoke, app, env  # noqa: F401 - the CLI fixtures

if TYPE_CHECKING:
    from pathlib import Path

    import typer

    from bot.decisions import DecisionService
    from feedback.store import ConversationStore

SECRET = b"test-secret"
ANN = Actor("terminal:ann", "ann")


def _said(text: str) -> IncomingMessage:
    return IncomingMessage(
        transport="terminal",
        scope="terminal:ann",
        user_id="terminal:ann",
        user_name="ann",
        text=text,
        persona="Marlowe",
        external_id=None,
    )


def _engine(
    store: ConversationStore, replies: list[str], memory: RecallingMemory | None = None
) -> ConversationEngine:
    return ConversationEngine(
        personas=PersonaRegistry.load(),
        store=store,
        model=FakeChatModel(replies=replies),
        memory=memory,  # type: ignore[arg-type]
        limits=EngineLimits(),
    )


async def _records(store: ConversationStore, fmt: str, **filters: Any) -> list[dict[str, Any]]:
    return [
        record
        async for _, record in iter_records(
            store._sessions, fmt, ExportFilter(**filters), pseudonym_secret=SECRET
        )
    ]


def _pairs(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in records]


async def _reply(decisions: DecisionService, text: str, *, hold: bool) -> Reply:
    reply = await decisions.engine.respond(_said(text))
    assert isinstance(reply, Reply)
    await decisions.present(reply, hold=hold)
    return reply


# -- 2. preferences follow the actors' verdicts ----------------------------------------------


async def test_rated_rewrite_is_never_beaten_by_an_unrated_regeneration_in_the_terminal(
    store: ConversationStore,
) -> None:
    """candidate -> /rewrite (rated 5) -> /regen delivered: the rewrite is not ``rejected``."""
    decisions, outlet = decisions_for(_engine(store, ["The rain never stops.", "Storms."]))
    await PrivacyStore(store._sessions).set_consent(ANN.id, True)
    reply = await _reply(decisions, "What is the weather like?", hold=False)
    rewrite = await decisions.rewrite(
        reply.candidate_id, actor=ANN, text="Sunny for once.", key=None
    )
    assert rewrite.result_id is not None
    await decisions.rate(rewrite.result_id, actor=ANN, rating=5, key=None)
    regen = await decisions.regenerate(rewrite.result_id, actor=ANN, deliver=True)
    assert regen.status == "done" and outlet.delivered[-1].text == "Storms."
    async with store._sessions() as session:
        kinds = (await session.scalars(select(FeedbackEvent.kind))).all()
    assert "regenerate" in kinds and "approve" not in kinds  # /regen is no approval

    pairs = _pairs(await _records(store, "trl-dpo"))
    assert ("Storms.", "Sunny for once.") not in pairs
    assert pairs == [("Sunny for once.", "The rain never stops.")]
    labels = {r["completion"][0]["content"]: r["label"] for r in await _records(store, "trl-kto")}
    assert labels["Sunny for once."] is True  # rated 5: good, though regenerated later
    [tree] = await _records(store, "oasst")
    ranks = {reply["text"]: reply["rank"] for reply in _turn(tree)["replies"]}
    assert ranks["Sunny for once."] == 0


async def test_rated_rewrite_is_never_beaten_by_an_approved_regeneration_in_a_console(
    store: ConversationStore,
) -> None:
    """The console's order: held, rewritten and rated 5, regenerated, the new one approved."""
    decisions, _ = decisions_for(
        _engine(store, ["The rain never stops.", "Storms."]), hold_seconds=60
    )
    await PrivacyStore(store._sessions).set_consent(ANN.id, True)
    reply = await _reply(decisions, "What is the weather like?", hold=True)
    rewrite = await decisions.rewrite(
        reply.candidate_id, actor=ALICE_ACTOR, text="Sunny for once.", key="w"
    )
    assert rewrite.result_id is not None
    await decisions.rate(rewrite.result_id, actor=ALICE_ACTOR, rating=5, key="r")
    regen = await decisions.regenerate(rewrite.result_id, actor=ALICE_ACTOR, key="g")
    assert regen.result_id is not None
    await decisions.approve(regen.result_id, actor=ALICE_ACTOR, key="a")
    await decisions.close()

    pairs = _pairs(await _records(store, "trl-dpo"))
    assert ("Storms.", "Sunny for once.") not in pairs
    # the rewrite over its original; the approved regeneration over the original it replaced
    assert sorted(pairs) == [
        ("Storms.", "The rain never stops."),
        ("Sunny for once.", "The rain never stops."),
    ]


def _turn(tree: dict[str, Any]) -> dict[str, Any]:
    """The prompter message of an oasst tree that holds the replies (the user turn)."""
    message = tree["prompt"]
    while message["message_id"] != tree["message_tree_id"]:
        [message] = message["replies"]
    return message


async def _consent(store: ConversationStore, user_id: str = "discord:1") -> None:
    await PrivacyStore(store._sessions).set_consent(user_id, True)


async def _rewritten(
    store: ConversationStore, text: str, rewrite: str, ratings: tuple[int | None, int | None]
) -> None:
    """A held candidate rewritten by Alice; ``ratings``: Bob's on the original, the rewrite."""
    corrections = CorrectionStore(store._sessions)
    turn = await add_turn(store, state="held", text=text, reply=f"{rewrite} (draft)")
    original_rating, rewrite_rating = ratings
    if original_rating is not None:
        await corrections.rate(turn.candidate_id, actor=BOB_ACTOR, rating=original_rating, key=None)
    outcome = await corrections.rewrite(
        turn.candidate_id, actor=ALICE_ACTOR, text=rewrite, key=None
    )
    assert outcome.result_id is not None
    if rewrite_rating is not None:
        await corrections.rate(outcome.result_id, actor=BOB_ACTOR, rating=rewrite_rating, key=None)


async def test_conflicting_verdicts_leave_the_turn_out_and_are_counted(
    store: ConversationStore, tmp_path: Path
) -> None:
    """Alice rewrote A into B, but Bob rated A above B: no format takes the turn."""
    await _consent(store)
    await _rewritten(store, "one", "Kept.", (None, 5))
    await _rewritten(store, "two", "Worse.", (5, 2))
    for fmt in FORMATS:
        texts = str(await _records(store, fmt))
        assert "Worse." not in texts, fmt
        assert "Kept." in texts, fmt
        skipped: dict[str, int] = {}
        await export_to_file(
            store._sessions,
            fmt,
            ExportFilter(),
            tmp_path / f"{fmt}.jsonl",
            pseudonym_secret=SECRET,
            skipped=skipped,
        )
        assert skipped == {CONFLICTING_VERDICTS: 1}, fmt


async def test_ratings_order_a_rewrite_they_agree_with_and_a_tie_keeps_the_decision(
    store: ConversationStore,
) -> None:
    await _consent(store)
    await _rewritten(store, "one", "Better.", (2, 4))
    await _rewritten(store, "two", "Same.", (4, 4))
    await _rewritten(store, "three", "Unrated.", (5, None))  # a good reply is not beaten unrated
    pairs = _pairs(await _records(store, "trl-dpo"))
    assert pairs == [("Better.", "Better. (draft)"), ("Same.", "Same. (draft)")]
    ranks = {
        reply["text"]: reply["rank"]
        for tree in await _records(store, "oasst")
        for reply in _turn(tree)["replies"]
    }
    assert ranks["Unrated. (draft)"] == 0 and ranks["Unrated."] == 1


# -- 3. --min-rating applies to every record ------------------------------------------------


async def _min_rating_scenario(store: ConversationStore) -> None:
    """Three turns: an unrated rewrite, an approved regeneration rated 3, a rewrite rated 5."""
    await _consent(store)
    await _rewritten(store, "one", "Unrated rewrite.", (None, None))
    corrections = CorrectionStore(store._sessions)
    turn = await add_turn(store, state="held", text="two", reply="Picked over.")
    regen = await corrections.regenerate(
        turn.candidate_id,
        actor=ALICE_ACTOR,
        text="Picked, rated 3.",
        snapshot=snapshot_for("Marlowe", [{"role": "user", "content": "two"}]),
        flags=[],
        hold_until=datetime.now(UTC) + timedelta(minutes=5),
        key=None,
    )
    assert regen.result_id is not None
    await corrections.approve(regen.result_id, actor=ALICE_ACTOR, key=None)
    await corrections.rate(regen.result_id, actor=BOB_ACTOR, rating=3, key=None)
    await _rewritten(store, "three", "Rewrite rated 5.", (None, 5))


async def test_min_rating_applies_to_every_format(store: ConversationStore) -> None:
    await _min_rating_scenario(store)
    chosen = [r["chosen"][0]["content"] for r in await _records(store, "trl-dpo")]
    assert chosen == ["Unrated rewrite.", "Picked, rated 3.", "Rewrite rated 5."]
    high = {"min_rating": 4}
    assert [r["chosen"][0]["content"] for r in await _records(store, "trl-dpo", **high)] == [
        "Rewrite rated 5."
    ]
    assert [
        r["preferred_output"][0]["content"] for r in await _records(store, "openai-dpo", **high)
    ] == ["Rewrite rated 5."]
    for fmt in ("openai-sft", "trl-sft"):
        sent = [r["messages"][-1]["content"] for r in await _records(store, fmt, **high)]
        assert sent == ["Rewrite rated 5."], fmt
    good = [
        r["completion"][0]["content"]
        for r in await _records(store, "trl-kto", **high)
        if r["label"] is True
    ]
    assert good == ["Rewrite rated 5."]
    trees = await _records(store, "oasst", **high)
    assert [_turn(tree)["text"] for tree in trees] == ["three"]


@pytest.fixture
async def min_rating_data(store: ConversationStore) -> None:
    await _min_rating_scenario(store)


def test_min_rating_through_the_cli(
    min_rating_data: None,
    app: typer.Typer,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "dpo.jsonl"
    code, stdout, _ = _invoke(
        app, "export", "--format", "openai-dpo", "--out", str(out), "--min-rating", "4"
    )
    assert code == 0 and "wrote 1 openai-dpo records" in stdout
    [line] = out.read_text().splitlines()
    assert json.loads(line)["preferred_output"][0]["content"] == "Rewrite rated 5."
    code, stdout, _ = _invoke(
        app, "export", "--format", "trl-dpo", "--out", str(out), "--min-rating", "3"
    )
    assert code == 0 and "wrote 2 trl-dpo records" in stdout


async def test_min_rating_through_the_api(store: ConversationStore, api: Api) -> None:  # noqa: F811
    await _min_rating_scenario(store)
    for fmt, key in (("openai-dpo", "preferred_output"), ("trl-dpo", "chosen")):
        body = (await api.get("/v1/corrections", format=fmt, min_rating=4)).json()
        assert [r[key][0]["content"] for r in body["records"]] == ["Rewrite rated 5."], fmt
    body = (await api.get("/v1/corrections", format="trl-sft", min_rating=4)).json()
    assert [r["messages"][-1]["content"] for r in body["records"]] == ["Rewrite rated 5."]


# -- 4. example dialogue is never a turn; 6. the card version reaches the record --------------


async def _engine_turns(store: ConversationStore) -> ConversationEngine:
    """Two terminal turns from the real engine and card: each reply rewritten and rated 5."""
    engine = _engine(store, ["The rain never stops.", "Storms."])
    decisions, _ = decisions_for(engine)
    await PrivacyStore(store._sessions).set_consent(ANN.id, True)
    for text, rewrite in (("Who are you?", "A detective."), ("Any news?", "None yet.")):
        reply = await _reply(decisions, text, hold=False)
        outcome = await decisions.rewrite(reply.candidate_id, actor=ANN, text=rewrite, key=None)
        assert outcome.result_id is not None
        await decisions.rate(outcome.result_id, actor=ANN, rating=5, key=None)
    return engine


async def test_exported_prompts_mark_the_examples_and_oasst_holds_only_real_turns(
    store: ConversationStore,
) -> None:
    await _engine_turns(store)
    persona = PersonaRegistry.load().get("Marlowe")
    examples = persona.example_dialogue("ann")
    assert examples  # the card has example dialogue to keep apart
    async with store._sessions() as session:
        stored = (await session.scalars(select(PromptSnapshot).order_by(PromptSnapshot.id))).all()
    last_prompt = stored[-1].messages

    [_, second] = await _records(store, "trl-sft")
    prompt = second["messages"][:-1]
    # the prompt as the model saw it, example names kept (the user's name is masked)
    assert [(m["role"], m.get("name")) for m in prompt] == [
        (m["role"], m.get("name")) for m in last_prompt
    ]
    kept = list(zip(prompt, last_prompt, strict=True))
    assert all(
        got["content"] == seen["content"] for got, seen in kept if "ann" not in seen["content"]
    )
    named = [(m["role"], m["content"]) for m in prompt if m.get("name", "").startswith("example_")]
    assert named == list(examples)
    assert {m["name"] for m in prompt if "name" in m} <= {"example_user", "example_assistant"}

    trees = await _records(store, "oasst")
    assert len(trees) == 2
    chain: list[dict[str, Any]] = []
    message = trees[1]["prompt"]
    while message["message_id"] != trees[1]["message_tree_id"]:
        chain.append(message)
        [message] = message["replies"]
    chain.append(message)
    # only the conversation: the first turn, its sent reply (the rewrite), the second turn
    assert [(m["role"], m["text"]) for m in chain] == [
        ("prompter", "Who are you?"),
        ("assistant", "A detective."),
        ("prompter", "Any news?"),
    ]
    example_texts = {line for _, line in examples}
    nodes = str(trees)
    assert not any(line in nodes for line in example_texts)


async def test_exported_prompts_keep_each_turns_context_message_named_and_out_of_oasst(
    store: ConversationStore,
) -> None:
    """Later prompts keep every earlier turn's context message (lore and memories) in place:
    records hold them exactly as the model saw them, each named ``context``, and oasst trees
    none of them."""
    engine = _engine(store, ["The rain never stops."], memory=RecallingMemory())
    decisions, _ = decisions_for(engine)
    await PrivacyStore(store._sessions).set_consent(ANN.id, True)
    said = (("Who are you?", "A detective."), ("Any news?", "None yet."), ("Now?", "Still none."))
    for text, rewrite in said:
        reply = await _reply(decisions, text, hold=False)
        outcome = await decisions.rewrite(reply.candidate_id, actor=ANN, text=rewrite, key=None)
        assert outcome.result_id is not None
        await decisions.rate(outcome.result_id, actor=ANN, rating=5, key=None)
    async with store._sessions() as session:
        stored = (await session.scalars(select(PromptSnapshot).order_by(PromptSnapshot.id))).all()
    last_prompt = stored[-1].messages
    contexts = [m["content"] for m in last_prompt if m.get("name") == "context"]
    assert contexts == [snapshot.context for snapshot in stored] and len(contexts) == 3

    *_, last = await _records(store, "trl-sft")
    prompt = last["messages"][:-1]
    assert [(m["role"], m.get("name")) for m in prompt] == [
        (m["role"], m.get("name")) for m in last_prompt
    ]
    assert [m["content"] for m in prompt if m.get("name") == "context"] == contexts
    assert last["messages"][-1]["content"] == "Still none."

    *_, tree = await _records(store, "oasst")
    chain: list[dict[str, Any]] = []
    message = tree["prompt"]
    while message["message_id"] != tree["message_tree_id"]:
        chain.append(message)
        [message] = message["replies"]
    chain.append(message)
    assert [(m["role"], m["text"]) for m in chain] == [
        ("prompter", "Who are you?"),
        ("assistant", "A detective."),
        ("prompter", "Any news?"),
        ("assistant", "None yet."),
        ("prompter", "Now?"),
    ]
    assert "Sister: Maya" not in str(tree) and "Something told" not in str(tree)


async def test_every_record_names_its_card_version(store: ConversationStore) -> None:
    await _engine_turns(store)
    version = PersonaRegistry.load().get("Marlowe").version_hash
    for fmt in FORMATS:
        records = await _records(store, fmt)
        assert records, fmt
        assert {record["persona_version"] for record in records} == {version}, fmt


async def test_prompts_stored_before_example_markers_are_left_out_and_counted(
    store: ConversationStore, tmp_path: Path
) -> None:
    """A snapshot of the old layout: unnamed example lines read as real turns; no marker."""
    await _consent(store)
    await _rewritten(store, "new layout", "Kept.", (None, 5))
    corrections = CorrectionStore(store._sessions)
    turn = await add_turn(store, state="held", text="old layout", reply="Old (draft)")
    old = SnapshotData(
        messages=[
            {"role": "system", "content": "You are Marlowe."},
            {"role": "user", "content": "Are you the detective?"},
            {"role": "assistant", "content": "Name's on the door."},
            {"role": "user", "content": "old layout"},
        ],
        persona="Marlowe",
        persona_version="v-old",
        model_name="fake",
        params={"temperature": 0.7},
    )
    async with store._sessions() as session:
        row = old.to_row()
        session.add(row)
        await session.flush()
        from feedback.models import MessageNode

        node = await session.get(MessageNode, turn.candidate_id)
        assert node is not None
        node.prompt_snapshot_id = row.id
        await session.commit()
    outcome = await corrections.rewrite(turn.candidate_id, actor=ALICE_ACTOR, text="Old.", key=None)
    assert outcome.result_id is not None
    await corrections.rate(outcome.result_id, actor=BOB_ACTOR, rating=5, key=None)
    for fmt in FORMATS:
        texts = str(await _records(store, fmt))
        assert "Kept." in texts and "Old." not in texts and "Name's on the door" not in texts
        skipped: dict[str, int] = {}
        await export_to_file(
            store._sessions,
            fmt,
            ExportFilter(),
            tmp_path / "out.jsonl",
            pseudonym_secret=SECRET,
            skipped=skipped,
        )
        assert skipped == {PROMPT_BEFORE_MARKERS: 1}, fmt


@pytest.fixture
async def conflicting_data(store: ConversationStore) -> None:
    await _consent(store)
    await _rewritten(store, "one", "Kept.", (None, 5))
    await _rewritten(store, "two", "Worse.", (5, 2))


def test_export_summary_says_why_turns_were_left_out(
    conflicting_data: None,
    app: typer.Typer,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "kto.jsonl"
    code, stdout, _ = _invoke(app, "export", "--format", "trl-kto", "--out", str(out))
    lines = [" ".join(line.split()) for line in stdout.splitlines()]
    assert code == 0 and "1 user turns gave no trl-kto record:" in lines, stdout
    assert any(line.startswith(f"1 {CONFLICTING_VERDICTS}") for line in lines), stdout
    code, stdout, _ = _invoke(app, "export", "--dry-run")
    assert code == 0 and f"1 turn skipped: {CONFLICTING_VERDICTS}" in stdout
