"""Records built ahead (``turn_build_queue``, :mod:`feedback.exports.ahead`) on SQLite and
PostgreSQL: changes queue their turn, the builder keeps exactly what exports build, a turn that
changes while it is built stays queued, a new key queues everything, and the API runs it."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import uvicorn
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from feedback.api import create_app
from feedback.api import records as api_records
from feedback.corrections import CorrectionStore
from feedback.exports import FORMATS, ExportFilter, RecordBuilder
from feedback.exports import ahead as ahead_module
from feedback.exports import tree as tree_module
from feedback.exports.ahead import (
    AheadBuilder,
    build_queued,
    queue_stale_kinds,
    queued_count,
    watch,
)
from feedback.exports.cache import cache_key
from feedback.models import MessageNode, RecordBuild, TurnBuildQueue, TurnRecords
from tests.factories import ALICE_ACTOR, BOB_ACTOR, add_turn
from tests.test_exports import SECRET, Scenario, _regenerate, build_scenario, set_consent
from tests.test_exports_cache import _export, _refuse_to_build

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncSession

    from feedback.store import ConversationStore

KINDS = {"sft", "openai-dpo", "trl-dpo", "trl-kto", "oasst"}


@pytest.fixture
def corrections(store: ConversationStore) -> CorrectionStore:
    return CorrectionStore(store._sessions)


async def _built_scenario(store: ConversationStore, corrections: CorrectionStore) -> Scenario:
    """The export tests' scenario, with every format built ahead."""
    scenario = await build_scenario(store, corrections)
    await queue_stale_kinds(store._sessions, FORMATS, SECRET)
    await build_queued(store._sessions, FORMATS, pseudonym_secret=SECRET)
    return scenario


async def _fresh(sessions: async_sessionmaker[AsyncSession], out: Path) -> dict[str, bytes]:
    return {fmt: await _export(sessions, fmt, out, keep=False) for fmt in FORMATS}


async def _queue(sessions: async_sessionmaker[AsyncSession]) -> dict[int, int]:
    async with sessions() as session:
        rows = await session.execute(select(TurnBuildQueue.user_turn_id, TurnBuildQueue.revision))
        return dict(rows.all())


async def _all_built_and_served_as_fresh(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """Nothing is queued, and every format's export (kept) equals a fresh build."""
    assert await _queue(sessions) == {}
    fresh = await _fresh(sessions, tmp_path / "fresh.jsonl")
    assert {fmt: await _export(sessions, fmt, tmp_path / "k.jsonl") for fmt in FORMATS} == fresh


async def _revision(sessions: async_sessionmaker[AsyncSession], turn_id: int) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(MessageNode.revision).filter_by(id=turn_id)) or 0)


async def _kept(sessions: async_sessionmaker[AsyncSession]) -> set[tuple[int, str]]:
    async with sessions() as session:
        rows = await session.execute(select(TurnRecords.user_turn_id, TurnRecords.kind))
        return set(rows.all())


class _UnusedHelper:
    """A page helper that must not be asked, whose records are ``large`` or not."""

    def __init__(self, *, large: bool) -> None:
        self.large = large

    def hands_over_large_records(self, _fmt: str) -> bool:
        return self.large

    def reserve(self, _limit: int) -> object:
        raise AssertionError("a page of a format built ahead asked the page helper")


def _refuse_to_read_every_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if an export reads every selected turn instead of the kept rows and the queue."""

    async def refuse(*_args: Any) -> Any:
        raise AssertionError("every turn was read, not the kept rows of a kind built ahead")

    monkeypatch.setattr(tree_module, "_read_turns", refuse)


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait up to 30 s for ``check`` to hold (a builder process works in the background)."""
    for _ in range(300):
        if await check():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{what} within 30 s")


async def test_built_ahead_records_are_what_exports_build_and_are_served_kept(
    store: ConversationStore,
    corrections: CorrectionStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = await build_scenario(store, corrections)
    sessions = store._sessions
    # a turn whose author never consented is queued, built, and selected by no export
    hidden = await add_turn(store, user_id="discord:404", state="sent", text="hi", reply="Hey.")
    await corrections.rate(hidden.candidate_id, actor=ALICE_ACTOR, rating=5, key="h")
    fresh = await _fresh(sessions, tmp_path / "fresh.jsonl")
    fresh_sft_lines = fresh["trl-sft"].count(b"\n")
    queued = await _queue(sessions)
    assert scenario.rated.user_turn_id in queued and hidden.user_turn_id in queued
    # the first run of the builder queues every user turn with a reply, once
    await queue_stale_kinds(sessions, FORMATS, SECRET)
    assert await queue_stale_kinds(sessions, FORMATS, SECRET) == 0
    async with sessions() as session:
        assert set((await session.scalars(select(RecordBuild.kind))).all()) == KINDS

    stats = await build_queued(sessions, FORMATS, pseudonym_secret=SECRET, batch_size=3)
    assert stats.turns == len(queued) and stats.rows > 0 and stats.records > 0
    assert await _queue(sessions) == {}
    kept = await _kept(sessions)
    assert {kind for _turn, kind in kept} == KINDS
    assert (hidden.user_turn_id, "sft") in kept

    _refuse_to_build(monkeypatch)
    _refuse_to_read_every_turn(monkeypatch)
    served = {fmt: await _export(sessions, fmt, tmp_path / "served.jsonl") for fmt in FORMATS}
    assert served == fresh and all(fresh.values())
    assert b"discord:404" not in b"".join(served.values())  # hidden while not consented
    # consent given later needs no rebuild: the kept rows are read with the new rule
    monkeypatch.undo()
    await set_consent(sessions, "discord:404", True)
    fresh = await _fresh(sessions, tmp_path / "fresh.jsonl")
    _refuse_to_build(monkeypatch)
    _refuse_to_read_every_turn(monkeypatch)
    served = {fmt: await _export(sessions, fmt, tmp_path / "served.jsonl") for fmt in FORMATS}
    assert served == fresh and served["trl-sft"].count(b"\n") == fresh_sft_lines + 1


async def test_exports_and_pages_of_kinds_built_ahead_read_kept_rows_and_the_queue(
    store: ConversationStore,
    corrections: CorrectionStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = await _built_scenario(store, corrections)
    sessions = store._sessions
    # changes after the build: queued turns between kept ones, and a new turn at the end
    await corrections.rate(scenario.rated.candidate_id, actor=ALICE_ACTOR, rating=1, key="x1")
    await corrections.rate(scenario.unreviewed.candidate_id, actor=BOB_ACTOR, rating=5, key="x2")
    await add_turn(store, user_id="discord:1", state="sent", text="later", reply="Later.")
    await add_turn(store, persona="Ines", user_id="discord:1", state="sent", text="hi", reply="Oi.")
    assert len(await _queue(sessions)) == 4
    fresh = await _fresh(sessions, tmp_path / "fresh.jsonl")
    fresh_ines = {
        fmt: await _export(sessions, fmt, tmp_path / "f.jsonl", keep=False, persona="Ines")
        for fmt in FORMATS
    }

    _refuse_to_read_every_turn(monkeypatch)
    # exports read a batch of 2 rows at a time: the queued turns fall inside and between them
    for fmt in FORMATS:
        assert await _export(sessions, fmt, tmp_path / "k.jsonl") == fresh[fmt], fmt
        assert (
            await _export(sessions, fmt, tmp_path / "k.jsonl", persona="Ines") == (fresh_ines[fmt])
        ), fmt
    # pages of 2 records, cursor after cursor, give the export's records in its order, served
    # by this process alone (on SQLite the page helper would only hand kept records over, and
    # on PostgreSQL large ones)
    sqlite = sessions.kw["bind"].dialect.name == "sqlite"
    helper: Any = _UnusedHelper(large=not sqlite)
    for fmt in FORMATS:
        lines, cursor = [], None
        while True:
            result = await api_records.page(
                sessions,
                fmt,
                ExportFilter(),
                pseudonym_secret=SECRET,
                after=cursor,
                limit=2,
                helper=helper,
            )
            lines += [orjson.dumps(record) for record in result.records]  # newline included
            await result.release()
            if not result.has_more:
                break
            cursor = api_records.decode_cursor(result.next_cursor or "", fmt)
        assert b"".join(lines) == fresh[fmt], fmt


async def test_a_kept_row_of_an_older_revision_is_not_served(
    store: ConversationStore,
    corrections: CorrectionStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = await _built_scenario(store, corrections)
    sessions = store._sessions
    fresh = await _fresh(sessions, tmp_path / "fresh.jsonl")
    turn_id = scenario.rated.user_turn_id
    revision = await _revision(sessions, turn_id)
    # Rows left from an older revision (the triggers delete them; here they stay), with the
    # turn queued as every changed turn is.
    async with sessions.begin() as session:
        await session.execute(
            update(TurnRecords)
            .where(TurnRecords.user_turn_id == turn_id)
            .values(revision=revision - 1, body=b'{"stale": true}\n')
        )
        session.add(TurnBuildQueue(user_turn_id=turn_id, revision=revision))
    _refuse_to_read_every_turn(monkeypatch)
    for fmt in FORMATS:
        assert await _export(sessions, fmt, tmp_path / "k.jsonl") == fresh[fmt], fmt


async def test_a_builder_of_fewer_formats_stops_the_others_counting_as_built_ahead(
    store: ConversationStore, corrections: CorrectionStore, tmp_path: Path
) -> None:
    scenario = await _built_scenario(store, corrections)
    sessions = store._sessions
    await corrections.rate(scenario.rated.candidate_id, actor=ALICE_ACTOR, rating=1, key="x1")
    # this builder takes the changed turn off the queue with its SFT records only
    await build_queued(sessions, ("trl-sft",), pseudonym_secret=SECRET)
    assert await _queue(sessions) == {}
    async with sessions() as session:
        assert set((await session.scalars(select(RecordBuild.kind))).all()) == {"sft"}
    # so the other formats read every turn again, and miss nothing
    await _all_built_and_served_as_fresh(sessions, tmp_path)


async def test_a_change_queues_its_turn_again_and_only_it_is_rebuilt(
    store: ConversationStore, corrections: CorrectionStore, tmp_path: Path
) -> None:
    scenario = await _built_scenario(store, corrections)
    sessions = store._sessions
    assert await _queue(sessions) == {}

    turn = scenario.unreviewed.user_turn_id
    await corrections.rate(scenario.unreviewed.candidate_id, actor=ALICE_ACTOR, rating=5, key="r")
    await corrections.approve(scenario.unreviewed.candidate_id, actor=BOB_ACTOR, key="a")
    assert await _queue(sessions) == {turn: await _revision(sessions, turn)}
    assert not any(kept_turn == turn for kept_turn, _kind in await _kept(sessions))

    stats = await build_queued(sessions, FORMATS, pseudonym_secret=SECRET)
    assert stats.turns == 1
    await _all_built_and_served_as_fresh(sessions, tmp_path)


async def test_a_turn_changed_while_it_is_built_stays_queued(
    store: ConversationStore,
    corrections: CorrectionStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = await build_scenario(store, corrections)
    sessions = store._sessions
    await queue_stale_kinds(sessions, FORMATS, SECRET)
    changed = scenario.unreviewed.user_turn_id
    read_trees = ahead_module.iter_turn_trees

    async def trees_then_a_change(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for page in read_trees(*args, **kwargs):
            if any(tree.user_turn_id == changed for tree in page):
                # an actor rates the reply after the builder read the tree, before it keeps it
                await corrections.rate(
                    scenario.unreviewed.candidate_id, actor=ALICE_ACTOR, rating=2, key="late"
                )
            yield page

    monkeypatch.setattr(ahead_module, "iter_turn_trees", trees_then_a_change)
    await build_queued(sessions, FORMATS, pseudonym_secret=SECRET)
    assert await _queue(sessions) == {changed: await _revision(sessions, changed)}
    kept = await _kept(sessions)
    assert not any(turn == changed for turn, _kind in kept)
    assert any(turn == scenario.rated.user_turn_id for turn, _kind in kept)

    monkeypatch.setattr(ahead_module, "iter_turn_trees", read_trees)
    assert (await build_queued(sessions, FORMATS, pseudonym_secret=SECRET)).turns == 1
    await _all_built_and_served_as_fresh(sessions, tmp_path)


async def test_a_batch_that_cannot_be_kept_stays_queued_and_is_built_next_time(
    store: ConversationStore,
    corrections: CorrectionStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await build_scenario(store, corrections)
    sessions = store._sessions
    await queue_stale_kinds(sessions, FORMATS, SECRET)
    turns = len(await _queue(sessions))
    keep = ahead_module._Batches.keep
    calls = 0

    async def keep_then_fail(self: Any, rows: Any, queued: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        await keep(self, rows, queued)

    monkeypatch.setattr(ahead_module._Batches, "keep", keep_then_fail)
    with pytest.raises(OperationalError):
        await build_queued(sessions, FORMATS, pseudonym_secret=SECRET, batch_size=2)
    # the first batch was kept; the failed one, and any after it, are still queued
    assert len(await _queue(sessions)) == turns - 2

    # the builder loop logs a failure (its first keep fails too), and the next look builds all
    calls = 1
    stop = asyncio.Event()
    builds: list[int] = []

    def built(stats: Any) -> None:
        builds.append(stats.turns)
        if len(builds) == 1:
            stop.set()

    with caplog.at_level(logging.WARNING, logger="feedback.exports.ahead"):
        await asyncio.wait_for(
            watch(
                sessions,
                FORMATS,
                pseudonym_secret=SECRET,
                stop=stop,
                interval=0.05,
                on_build=built,
            ),
            timeout=30,
        )
    assert "not built ahead this time" in caplog.text
    await _all_built_and_served_as_fresh(sessions, tmp_path)


async def test_a_new_key_or_a_new_format_queues_every_turn_again(
    store: ConversationStore,
    corrections: CorrectionStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await build_scenario(store, corrections)
    sessions = store._sessions
    await queue_stale_kinds(sessions, ("trl-sft",), SECRET)
    turns = len(await _queue(sessions))
    await build_queued(sessions, ("trl-sft",), pseudonym_secret=SECRET)
    assert {kind for _turn, kind in await _kept(sessions)} == {"sft"}
    assert await queue_stale_kinds(sessions, ("openai-sft",), SECRET) == 0  # the same kind
    assert await queue_stale_kinds(sessions, ("trl-sft", "trl-kto"), SECRET) == turns
    await build_queued(sessions, ("trl-sft", "trl-kto"), pseudonym_secret=SECRET)
    assert {kind for _turn, kind in await _kept(sessions)} == {"sft", "trl-kto"}

    other = b"another secret of 32 bytes......"
    assert await queue_stale_kinds(sessions, ("trl-sft", "trl-kto"), other) == turns
    await build_queued(sessions, ("trl-sft", "trl-kto"), pseudonym_secret=other)
    fresh = {
        fmt: await _export(sessions, fmt, tmp_path / "f.jsonl", keep=False, secret=other)
        for fmt in ("trl-sft", "trl-kto")
    }
    _refuse_to_build(monkeypatch)
    for fmt in ("trl-sft", "trl-kto"):
        assert await _export(sessions, fmt, tmp_path / "k.jsonl", secret=other) == fresh[fmt]


async def test_the_api_builder_process_keeps_records_and_stops_with_it(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    await build_scenario(store, corrections)
    sessions = store._sessions
    builder = AheadBuilder.for_sessions(sessions, SECRET, ("trl-sft", "oasst"), interval=0.2)
    assert builder is not None
    await builder.start()
    try:

        async def all_kept() -> bool:
            kinds = {kind for _turn, kind in await _kept(sessions)}
            return kinds == {"sft", "oasst"} and await queued_count(sessions) == 0

        await _eventually(all_kept, "the builder process kept nothing")
        process_id = builder.pid
        assert process_id is not None
        # a change made while it runs is built within a few looks at the queue
        turn = await add_turn(store, user_id="discord:1", state="sent", text="and", reply="So.")

        async def new_turn_kept() -> bool:
            return (turn.user_turn_id, "oasst") in await _kept(sessions)

        await _eventually(new_turn_kept, "a new turn was not built ahead")
    finally:
        await builder.close()
    assert builder.pid is None


def test_no_builder_for_a_database_another_process_cannot_open(tmp_path: Path) -> None:
    memory = async_sessionmaker(create_async_engine("sqlite+aiosqlite:///:memory:"))
    assert AheadBuilder.for_sessions(memory, SECRET, FORMATS) is None
    on_disk = async_sessionmaker(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"))
    assert AheadBuilder.for_sessions(on_disk, SECRET, ()) is None  # nothing to build
    assert AheadBuilder.for_sessions(on_disk, SECRET, FORMATS) is not None


async def test_the_api_runs_the_builder_for_its_lifespan(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    await build_scenario(store, corrections)
    sessions = store._sessions
    secret = SECRET * 4  # the API asks for 16 bytes at least
    app = create_app(
        sessions, pseudonym_secret=secret, helper_min_records=None, build_ahead=("trl-kto",)
    )
    builder = app.state.records_ahead
    # records that are not kept are not built ahead either
    unkept = create_app(sessions, pseudonym_secret=secret, keep_records=False, build_ahead=FORMATS)
    assert unkept.state.records_ahead is None
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:

        async def kept() -> bool:
            return await queued_count(sessions) == 0 and bool(await _kept(sessions))

        await _eventually(kept, "the API's builder kept nothing")
        assert {kind for _turn, kind in await _kept(sessions)} == {"trl-kto"}
        assert builder.pid is not None
    finally:
        server.should_exit = True
        await serving
        listener.close()
    assert builder.pid is None  # stopped with the server


async def test_kept_bodies_are_compressed_with_lz4_on_postgresql(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    await _built_scenario(store, corrections)
    async with store._sessions.begin() as session:
        if session.bind.dialect.name != "postgresql":
            pytest.skip("SQLite does not compress rows")
        turn_id = await session.scalar(select(func.min(TurnRecords.user_turn_id)))
        # over the 2 kB at which PostgreSQL compresses a row's values
        await session.execute(
            update(TurnRecords)
            .where(TurnRecords.user_turn_id == turn_id)
            .values(body=b'{"text": "' + b"rain " * 2000 + b'"}\n')
        )
        methods = await session.scalars(
            select(func.pg_column_compression(TurnRecords.body)).where(
                TurnRecords.user_turn_id == turn_id
            )
        )
        assert set(methods) == {"lz4"}


async def _vacuums(session: AsyncSession) -> tuple[int, int]:
    """PostgreSQL's count of vacuums and analyses of ``turn_records`` so far."""
    row = (
        await session.execute(
            text(
                "SELECT vacuum_count, analyze_count FROM pg_stat_user_tables "
                "WHERE relid = 'turn_records'::regclass"
            )
        )
    ).one()
    return int(row[0]), int(row[1])


async def test_a_large_build_vacuums_the_kept_rows_and_the_queue_on_postgresql(
    store: ConversationStore,
    corrections: CorrectionStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await build_scenario(store, corrections)
    sessions = store._sessions
    postgresql = sessions.kw["bind"].dialect.name == "postgresql"
    before = (0, 0)
    if postgresql:
        async with sessions() as session:
            before = await _vacuums(session)
    await queue_stale_kinds(sessions, FORMATS, SECRET)
    turns = await queued_count(sessions)
    # one turn short of a large build: no vacuum
    monkeypatch.setattr(ahead_module, "VACUUM_AFTER", turns + 1)
    caplog.set_level(logging.INFO, logger=ahead_module.__name__)
    assert (await build_queued(sessions, FORMATS, pseudonym_secret=SECRET)).turns == turns
    assert "vacuumed" not in caplog.text
    if postgresql:
        async with sessions() as session:
            assert await _vacuums(session) == before

    # a large one: its dead rows are vacuumed and the tables analysed, on PostgreSQL only
    await queue_stale_kinds(sessions, FORMATS, SECRET + b"-new")
    monkeypatch.setattr(ahead_module, "VACUUM_AFTER", turns)
    await build_queued(sessions, FORMATS, pseudonym_secret=SECRET + b"-new")
    if not postgresql:
        assert not await ahead_module.vacuum_kept_rows(sessions)
        assert "vacuumed" not in caplog.text
        return
    assert "vacuumed the kept records and the build queue" in caplog.text
    async with sessions() as session:
        vacuums, analyses = await _vacuums(session)
    assert (vacuums, analyses) >= (before[0] + 1, before[1] + 1)
    await _all_built_and_served_as_fresh(sessions, tmp_path)


async def test_a_vacuum_that_fails_is_logged_and_the_build_stands(
    store: ConversationStore,
    corrections: CorrectionStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await build_scenario(store, corrections)
    sessions = store._sessions
    if sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("only PostgreSQL is vacuumed")
    await queue_stale_kinds(sessions, FORMATS, SECRET)
    turns = await queued_count(sessions)
    monkeypatch.setattr(ahead_module, "VACUUM_AFTER", 1)
    monkeypatch.setattr(ahead_module, "_VACUUM", text("VACUUM (ANALYZE) no_such_table"))
    assert (await build_queued(sessions, FORMATS, pseudonym_secret=SECRET)).turns == turns
    assert "were not vacuumed after a large build" in caplog.text
    await _all_built_and_served_as_fresh(sessions, tmp_path)


async def _many_turns_built(store: ConversationStore, corrections: CorrectionStore) -> Scenario:
    """The scenario and twelve more turns, every format built ahead, then three turns queued
    between kept ones (one with two replies) and one new turn at the end: several small
    batches of each kind."""
    scenario = await build_scenario(store, corrections)
    for n in range(12):
        if n % 3:
            await add_turn(store, state="sent", text=f"turn {n}", reply=f"Reply {n}.")
            continue
        # a regeneration an actor picked: preference kinds get these turns too
        turn = await add_turn(store, state="held", text=f"turn {n}", reply=f"Reply {n}.")
        picked = await _regenerate(corrections, turn, f"Again {n}.", f"g{n}")
        await corrections.approve(picked, actor=BOB_ACTOR, key=f"a{n}")
    await queue_stale_kinds(store._sessions, FORMATS, SECRET)
    await build_queued(store._sessions, FORMATS, pseudonym_secret=SECRET)
    await corrections.rate(scenario.rated.candidate_id, actor=ALICE_ACTOR, rating=1, key="x1")
    await corrections.rate(scenario.unreviewed.candidate_id, actor=BOB_ACTOR, rating=5, key="x2")
    await corrections.rate(scenario.rated_pair.candidate_id, actor=BOB_ACTOR, rating=3, key="x3")
    await add_turn(store, state="sent", text="the last", reply="Last.")
    return scenario


async def _trees(
    sessions: async_sessionmaker[AsyncSession], fmt: str, **options: Any
) -> list[tuple[int, bytes | None]]:
    """Each tree read in batches of 2 as ``(turn id, kept records)`` (``None`` if built)."""
    found = []
    pages = tree_module.iter_turn_trees(
        sessions,
        ExportFilter(),
        batch_size=2,
        min_replies=RecordBuilder.min_replies(fmt),
        cache=cache_key(fmt, ExportFilter(), SECRET),
        **options,
    )
    async for page in pages:
        for tree in page:
            kept = tree.records if isinstance(tree, tree_module.KeptTurn) else None
            found.append((tree.user_turn_id, kept))
    return found


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the reads of kept rows, those made two ahead apart."""
    counts = {"next": 0, "two ahead": 0}
    read_kept = tree_module._read_kept

    async def counted(*args: Any, skip: int = 0) -> Any:
        counts["two ahead" if skip else "next"] += 1
        return await read_kept(*args, skip=skip)

    monkeypatch.setattr(tree_module, "_read_kept", counted)
    return counts


async def test_reading_two_batches_ahead_gives_the_same_trees(
    store: ConversationStore, corrections: CorrectionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _many_turns_built(store, corrections)
    sessions = store._sessions
    postgresql = sessions.kw["bind"].dialect.name == "postgresql"
    for fmt in FORMATS:
        one_ahead = await _trees(sessions, fmt)
        assert len(one_ahead) >= 5, fmt  # three batches at least
        assert any(kept is None for _turn, kept in one_ahead), fmt  # queued turns among them
        counts = _count_reads(monkeypatch)
        assert await _trees(sessions, fmt, read_two_ahead=True) == one_ahead, fmt
        if postgresql:  # reads two ahead were made, and used: fewer reads of the next batch
            assert counts["two ahead"] >= 1, fmt
            assert counts["next"] < -(-len(one_ahead) // 2) + 1, (fmt, counts)
        else:  # SQLite reads one batch at a time
            assert counts["two ahead"] == 0, fmt
        # up to a last turn id, and no more reads than the turns asked for need
        last_id = one_ahead[-3][0]
        assert await _trees(sessions, fmt, read_two_ahead=True, last_id=last_id) == [
            tree for tree in one_ahead if tree[0] <= last_id
        ], fmt
        counts["two ahead"] = 0
        first = await _trees(sessions, fmt, read_two_ahead=True, read_ahead_until=4)
        assert first == one_ahead, fmt
        assert counts["two ahead"] <= 1, (fmt, counts)
        monkeypatch.undo()


async def test_a_read_made_two_ahead_that_began_elsewhere_is_read_again(
    store: ConversationStore, corrections: CorrectionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = await _many_turns_built(store, corrections)
    sessions = store._sessions
    if sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("SQLite reads one batch at a time")
    counts = _count_reads(monkeypatch)
    one_ahead = await _trees(sessions, "trl-sft")
    reads = counts["next"]
    monkeypatch.undo()
    read_kept = tree_module._read_kept
    # every read two ahead says it began elsewhere: each batch is read again, from its start
    counts = {"next": 0}

    async def misplaced(*args: Any, skip: int = 0) -> Any:
        batch = await read_kept(*args, skip=skip)
        if skip:
            batch.start = -1
        else:
            counts["next"] += 1
        return batch

    monkeypatch.setattr(tree_module, "_read_kept", misplaced)
    assert await _trees(sessions, "trl-sft", read_two_ahead=True) == one_ahead
    assert counts["next"] == reads

    # a kept turn changes while reads are in flight: each turn still comes once, in order
    changed = {"done": False}

    async def change_first(*args: Any, skip: int = 0) -> Any:
        if skip and not changed["done"]:
            changed["done"] = True
            await corrections.rate(scenario.low.candidate_id, actor=BOB_ACTOR, rating=4, key="c")
        return await read_kept(*args, skip=skip)

    monkeypatch.setattr(tree_module, "_read_kept", change_first)
    turns = [turn for turn, _kept in await _trees(sessions, "trl-sft", read_two_ahead=True)]
    assert changed["done"]
    monkeypatch.undo()
    assert turns == [turn for turn, _kept in await _trees(sessions, "trl-sft")]
