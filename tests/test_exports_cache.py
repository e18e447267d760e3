"""Kept export records (``turn_records``) on SQLite and PostgreSQL: served as built, dropped by
every change to what they were built from, never kept stale, erased with the user."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from sqlalchemy import delete, func, select, text, update

from feedback.api.records import page
from feedback.corrections import CorrectionStore
from feedback.exports import FORMATS, ExportFilter, RecordBuilder, export_to_file
from feedback.exports import cache as cache_module
from feedback.exports.cache import RecordFill, build_key, cache_key
from feedback.models import (
    Conversation,
    FeedbackEvent,
    MessageNode,
    PromptSnapshot,
    TurnRecords,
)
from tests.factories import ALICE_ACTOR, BOB_ACTOR, add_turn, snapshot_for
from tests.test_exports import SECRET, Scenario, build_scenario, set_consent

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from feedback.store import ConversationStore


@pytest.fixture
def corrections(store: ConversationStore) -> CorrectionStore:
    return CorrectionStore(store._sessions)


async def _write(store: ConversationStore, statement: Any) -> None:
    """One statement in its own transaction, as a change from outside the stores would be."""
    async with store._sessions() as session:
        await session.execute(statement)
        await session.commit()


async def _export(
    sessions: async_sessionmaker[AsyncSession],
    fmt: str,
    out: Path,
    *,
    keep: bool = True,
    secret: bytes = SECRET,
    **filters: Any,
) -> bytes:
    await export_to_file(
        sessions,
        fmt,
        ExportFilter(**filters),
        out,
        pseudonym_secret=secret,
        batch_size=2,
        parallel_min_turns=10**9,
        keep_records=keep,
    )
    return await asyncio.to_thread(out.read_bytes)


async def _kept(sessions: async_sessionmaker[AsyncSession], **where: Any) -> list[TurnRecords]:
    async with sessions() as session:
        query = select(TurnRecords).filter_by(**where).order_by(TurnRecords.user_turn_id)
        return list((await session.scalars(query)).all())


def _refuse_to_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any) -> list[Any]:
        raise AssertionError("a turn with kept records was built again")

    monkeypatch.setattr(RecordBuilder, "records", refuse)


async def test_kept_records_are_the_built_ones_and_are_served_without_building(
    store: ConversationStore,
    corrections: CorrectionStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = await build_scenario(store, corrections)
    sessions = store._sessions
    fresh = {fmt: await _export(sessions, fmt, tmp_path / "f.jsonl", keep=False) for fmt in FORMATS}
    assert await _kept(sessions) == []  # an export without keeping keeps nothing
    first = {fmt: await _export(sessions, fmt, tmp_path / "a.jsonl") for fmt in FORMATS}
    assert first == fresh and all(fresh.values())
    # one row per turn the export read, records or not; both SFT formats share theirs
    rows = await _kept(sessions, kind="sft")
    assert len(rows) == 6 and sum(row.body.count(b"\n") for row in rows) == len(
        fresh["trl-sft"].splitlines()
    )
    assert [
        row.body.count(b"\n")
        for row in rows
        if row.user_turn_id == scenario.unreviewed.user_turn_id
    ] == [0]
    assert {row.kind for row in await _kept(sessions)} == {
        "sft", "openai-dpo", "trl-dpo", "trl-kto", "oasst"
    }  # fmt: skip

    _refuse_to_build(monkeypatch)
    again = {fmt: await _export(sessions, fmt, tmp_path / "b.jsonl") for fmt in FORMATS}
    assert again == fresh
    # a turn-selecting filter still reads kept rows
    since = await _export(sessions, "trl-sft", tmp_path / "c.jsonl", persona="Marlowe")
    assert since == fresh["trl-sft"]


async def test_api_pages_keep_records_and_serve_them_as_built(
    store: ConversationStore, corrections: CorrectionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await build_scenario(store, corrections)
    sessions = store._sessions

    async def body(fmt: str, *, keep: bool) -> bytes:
        result = await page(
            sessions,
            fmt,
            ExportFilter(),
            pseudonym_secret=SECRET,
            after=None,
            limit=100,
            keep_records=keep,
        )
        data = orjson.dumps({"records": result.records, "next": result.next_cursor})
        await result.release()  # keeps what the page built
        return data

    fresh = {fmt: await body(fmt, keep=False) for fmt in FORMATS}
    built = {fmt: await body(fmt, keep=True) for fmt in FORMATS}
    # the same JSON; records that are kept also carry the newline of their kept line
    assert {fmt: orjson.loads(data) for fmt, data in built.items()} == {
        fmt: orjson.loads(data) for fmt, data in fresh.items()
    }
    assert all(b"}\n]" in data for data in built.values())
    assert len(await _kept(sessions, kind="oasst")) == 6
    _refuse_to_build(monkeypatch)
    assert {fmt: await body(fmt, keep=True) for fmt in FORMATS} == built  # the same bytes


async def _rate(
    store: ConversationStore, corrections: CorrectionStore, s: Scenario
) -> int | set[int]:
    await corrections.rate(s.unreviewed.candidate_id, actor=ALICE_ACTOR, rating=5, key="c1")
    return s.unreviewed.user_turn_id


async def _approve(
    store: ConversationStore, corrections: CorrectionStore, s: Scenario
) -> int | set[int]:
    await corrections.approve(s.unreviewed.candidate_id, actor=BOB_ACTOR, key="c2")
    return s.unreviewed.user_turn_id


async def _rewrite(
    store: ConversationStore, corrections: CorrectionStore, s: Scenario
) -> int | set[int]:
    outcome = await corrections.rewrite(
        s.low.candidate_id, actor=ALICE_ACTOR, text="Goodnight, then.", key="c3"
    )
    assert outcome.result_id is not None
    return s.low.user_turn_id


async def _regenerate(
    store: ConversationStore, corrections: CorrectionStore, s: Scenario
) -> int | set[int]:
    outcome = await corrections.regenerate(
        s.rated.candidate_id,
        actor=ALICE_ACTOR,
        text="I am the one who stays.",
        snapshot=snapshot_for("Marlowe", [{"role": "user", "content": "who are you"}]),
        flags=[],
        hold_until=datetime.now(UTC) + timedelta(minutes=5),
        key="c4",
    )
    assert outcome.result_id is not None
    return s.rated.user_turn_id


async def _new_candidate(
    store: ConversationStore, corrections: CorrectionStore, s: Scenario
) -> int | set[int]:
    await store.add_candidate(
        conversation_id=s.rated.conversation_id,
        user_turn_id=s.rated.user_turn_id,
        persona="Marlowe",
        text="Someone else entirely.",
        origin="model",
        snapshot=snapshot_for("Marlowe", [{"role": "user", "content": "who are you"}]),
        state="candidate",
    )
    return s.rated.user_turn_id


async def _mark_sent(
    store: ConversationStore, corrections: CorrectionStore, s: Scenario
) -> int | set[int]:
    await store.mark_sent(s.rewrite_id, "m1-edited")  # same state, new ids: not in records
    dropped = update(MessageNode).where(MessageNode.id == s.rewritten.candidate_id)
    await _write(store, dropped.values(state="dropped"))
    return s.rewritten.user_turn_id


async def _delete_event(
    store: ConversationStore, corrections: CorrectionStore, s: Scenario
) -> int | set[int]:
    await _write(
        store, delete(FeedbackEvent).where(FeedbackEvent.candidate_id == s.low.candidate_id)
    )
    return s.low.user_turn_id


async def _edit_snapshot(
    store: ConversationStore, corrections: CorrectionStore, s: Scenario
) -> int | set[int]:
    node = await store.get_node(s.rated.candidate_id)
    assert node is not None and node.prompt_snapshot_id is not None
    snapshot = update(PromptSnapshot).where(PromptSnapshot.id == node.prompt_snapshot_id)
    await _write(store, snapshot.values(messages=[{"role": "system", "content": "Someone new."}]))
    return s.rated.user_turn_id


async def _edit_turn(
    store: ConversationStore, corrections: CorrectionStore, s: Scenario
) -> int | set[int]:
    turn = update(MessageNode).where(MessageNode.id == s.rated.user_turn_id)
    await _write(store, turn.values(author_name="Ann Other"))
    return s.rated.user_turn_id


async def _rename_persona(
    store: ConversationStore, corrections: CorrectionStore, s: Scenario
) -> int | set[int]:
    conversation = update(Conversation).where(Conversation.id == s.rated.conversation_id)
    await _write(store, conversation.values(persona="Marlowe II"))
    # every turn of the conversation shows its persona
    return {
        s.rewritten.user_turn_id,
        s.regenerated.user_turn_id,
        s.rated.user_turn_id,
        s.rated_pair.user_turn_id,
        s.unreviewed.user_turn_id,
        s.low.user_turn_id,
    }


CHANGES = {
    "rate": _rate,
    "approve": _approve,
    "rewrite": _rewrite,
    "regenerate": _regenerate,
    "new candidate": _new_candidate,
    "reply state": _mark_sent,
    "event deleted": _delete_event,
    "snapshot edited": _edit_snapshot,
    "turn edited": _edit_turn,
    "persona renamed": _rename_persona,
}


@pytest.mark.parametrize("change", list(CHANGES))
async def test_every_change_drops_the_turns_kept_records(
    store: ConversationStore, corrections: CorrectionStore, tmp_path: Path, change: str
) -> None:
    scenario = await build_scenario(store, corrections)
    sessions = store._sessions
    for fmt in FORMATS:
        await _export(sessions, fmt, tmp_path / "warm.jsonl")
    before = {row.user_turn_id for row in await _kept(sessions)}
    changed = await CHANGES[change](store, corrections, scenario)
    changed = {changed} if isinstance(changed, int) else changed
    after = {row.user_turn_id for row in await _kept(sessions)}
    assert changed <= before and after == before - changed
    for fmt in FORMATS:
        kept = await _export(sessions, fmt, tmp_path / "kept.jsonl")
        assert kept == await _export(sessions, fmt, tmp_path / "fresh.jsonl", keep=False), fmt


async def test_erasure_leaves_no_kept_record_with_the_users_words(
    store: ConversationStore, corrections: CorrectionStore, tmp_path: Path
) -> None:
    sessions = store._sessions
    await set_consent(sessions, "discord:7", True)
    await set_consent(sessions, "discord:8", True)
    scope = "channel:300"
    gone = await add_turn(store, user_id="discord:7", scope=scope, text="my code is tulip-42")
    await corrections.approve(gone.candidate_id, actor=ALICE_ACTOR, key="e1")
    stays = await add_turn(store, user_id="discord:8", user_name="bo", scope=scope, text="hi")
    await corrections.approve(stays.candidate_id, actor=ALICE_ACTOR, key="e2")
    for fmt in FORMATS:
        await _export(sessions, fmt, tmp_path / "warm.jsonl")
    assert any(b"tulip-42" in row.body for row in await _kept(sessions, kind="oasst"))

    await store.delete_data_for_user(requester="test", user_id="discord:7")
    rows = await _kept(sessions)
    assert all(b"tulip-42" not in row.body for row in rows)
    # the remaining turn quoted the erased words in its prompt: its rows went with the scrub
    assert stays.user_turn_id not in {row.user_turn_id for row in rows}
    exported = await _export(sessions, "oasst", tmp_path / "after.jsonl")
    assert b"tulip-42" not in exported and exported


async def test_records_built_before_a_change_are_not_kept(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    scenario = await build_scenario(store, corrections)
    sessions = store._sessions
    key = cache_key("trl-kto", ExportFilter(), SECRET)
    assert key is not None
    async with sessions() as session:
        turn = await session.get(MessageNode, scenario.low.user_turn_id)
        assert turn is not None
        revision = turn.revision
    fill = RecordFill(sessions, key)
    fill.add(scenario.low.user_turn_id, revision, [b'{"stale":true}\n'])
    await corrections.rate(scenario.low.candidate_id, actor=BOB_ACTOR, rating=5, key="s1")
    assert await fill.save() == 1  # offered, and refused by the revision check
    assert await _kept(sessions) == []

    fill.add(scenario.low.user_turn_id, revision + 99, [b"{}\n"])  # a revision never reached
    await fill.save()
    assert await _kept(sessions) == []


async def test_a_save_waits_for_a_concurrent_change_and_then_keeps_nothing(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    """PostgreSQL: the save locks the turn row, so a change in flight orders it."""
    scenario = await build_scenario(store, corrections)
    sessions = store._sessions
    if sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: a save and a change cannot overlap")
    key = cache_key("trl-kto", ExportFilter(), SECRET)
    assert key is not None
    async with sessions() as session:
        turn = await session.get(MessageNode, scenario.low.user_turn_id)
        assert turn is not None
        revision = turn.revision
    async with sessions() as change:
        await change.execute(
            update(MessageNode)
            .where(MessageNode.id == scenario.low.candidate_id)
            .values(content="Changed while a save ran.")
        )
        fill = RecordFill(sessions, key)
        fill.add(scenario.low.user_turn_id, revision, [b'{"stale":true}\n'])
        saving = asyncio.ensure_future(fill.save())
        await asyncio.sleep(0.3)
        assert not saving.done()  # waits on the changed turn's row lock
        await change.commit()
    await saving
    assert await _kept(sessions) == []


async def test_another_secret_or_code_reads_no_old_rows(
    store: ConversationStore,
    corrections: CorrectionStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await build_scenario(store, corrections)
    sessions = store._sessions
    await _export(sessions, "oasst", tmp_path / "a.jsonl")
    other = await _export(sessions, "oasst", tmp_path / "b.jsonl", secret=b"another")
    assert other == await _export(
        sessions, "oasst", tmp_path / "c.jsonl", secret=b"another", keep=False
    )
    assert {row.build_key for row in await _kept(sessions)} == {build_key(b"another")}
    assert build_key(b"another") != build_key(SECRET)

    monkeypatch.setattr(cache_module, "_code_fingerprint", lambda: b"changed code")
    build_key.cache_clear()
    try:
        assert build_key(b"another") not in {row.build_key for row in await _kept(sessions)}
    finally:
        build_key.cache_clear()


async def test_filters_that_change_records_keep_nothing(
    store: ConversationStore, corrections: CorrectionStore, tmp_path: Path
) -> None:
    await build_scenario(store, corrections)
    sessions = store._sessions
    await _export(sessions, "trl-sft", tmp_path / "a.jsonl", min_rating=5)
    await _export(sessions, "trl-sft", tmp_path / "b.jsonl", tags=("funny",))
    assert await _kept(sessions) == []
    assert cache_key("trl-sft", ExportFilter(min_rating=3), SECRET) is None


async def test_a_failed_save_is_logged_once_and_the_export_goes_on(
    store: ConversationStore,
    corrections: CorrectionStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await build_scenario(store, corrections)
    sessions = store._sessions
    fresh = await _export(sessions, "trl-kto", tmp_path / "a.jsonl", keep=False)
    broken = text("INSERT INTO no_such_table VALUES (1)")
    monkeypatch.setattr(cache_module, "_SAVE_SQLITE", broken)
    monkeypatch.setattr(cache_module, "_SAVE_POSTGRESQL", broken)
    with caplog.at_level(logging.WARNING, logger="feedback.exports.cache"):
        assert await _export(sessions, "trl-kto", tmp_path / "b.jsonl") == fresh
    assert len([r for r in caplog.records if "not kept" in r.getMessage()]) == 1
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(TurnRecords)) == 0
