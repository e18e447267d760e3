"""Large API pages built with the helper process: the same bytes as one process builds, and a
helper that dies, is busy, or cannot share the database never costs a page."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from feedback.api import create_app
from feedback.api import helper as helper_module
from feedback.api.helper import PageHelper
from feedback.database import session_factory
from feedback.exports import FORMATS, ExportFilter, iter_turn_trees
from feedback.exports.tree import nth_turn_id
from feedback.tokens import create_token
from tests.factories import add_turn, stores
from tests.test_api import SECRET, add_corrections, bearer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker


class Apis:
    """One database served twice: with a helper for pages of 2 records or more, and alone."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], token: str) -> None:
        self.sessions = sessions
        self.headers = bearer(token)
        self.shared = create_app(sessions, pseudonym_secret=SECRET, helper_min_records=2)
        self.alone = create_app(sessions, pseudonym_secret=SECRET, helper_min_records=None)

    @property
    def helper(self) -> PageHelper:
        helper = self.shared.state.page_helper
        assert isinstance(helper, PageHelper)
        return helper

    async def pages(self, app: FastAPI, fmt: str, limit: int) -> list[bytes]:
        """Every page's body, from the start until ``has_more`` is false."""
        bodies: list[bytes] = []
        params: dict[str, Any] = {"format": fmt, "limit": limit}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            while True:
                response = await client.get("/v1/corrections", params=params, headers=self.headers)
                assert response.status_code == 200, response.text
                bodies.append(response.content)
                body = response.json()
                if not body["has_more"]:
                    return bodies
                params["cursor"] = body["next_cursor"]


@pytest.fixture
async def apis(db_engine: AsyncEngine) -> AsyncIterator[Apis]:
    sessions = session_factory(db_engine)
    apis = Apis(sessions, await create_token(sessions, "reader", "read"))
    await add_corrections(sessions, 30)
    conversations, _ = stores(sessions)
    for n in range(6):  # a user who never consented: turns that give no record
        await add_turn(conversations, user_id="discord:77", text=f"secret {n}", reply="hm")
    await add_corrections(sessions, 10)
    async with apis.shared.router.lifespan_context(apis.shared):
        assert apis.helper.pid is not None  # started and ready with the app
        yield apis


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])
async def test_helper_pages_are_the_pages_one_process_builds(
    apis: Apis, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = PageHelper.turns

    async def turns(self: PageHelper, *args: Any) -> Any:
        shared = await original(self, *args)
        calls.append(len(shared))
        return shared

    monkeypatch.setattr(PageHelper, "turns", turns)
    for fmt in FORMATS:
        calls.clear()
        for limit in (3, 7, 100):
            alone = await apis.pages(apis.alone, fmt, limit)
            shared = await apis.pages(apis.shared, fmt, limit)
            assert shared == alone, (fmt, limit)
            assert len(alone) > 1 or limit == 100
        assert calls and any(calls), fmt  # the helper built part of the pages


@pytest.mark.parametrize("span", [0.01, 1.0, 1000.0])
async def test_a_wrong_guess_of_the_helpers_share_changes_no_page(apis: Apis, span: float) -> None:
    expected = {fmt: await apis.pages(apis.alone, fmt, 6) for fmt in ("trl-dpo", "oasst")}
    for fmt, pages in expected.items():
        await apis.pages(apis.shared, fmt, 6)  # learns a span, then is told a wrong one
        apis.helper._spans[fmt] = span
        assert apis.helper.estimated_share_end(fmt, 10, 6) == 10 + max(1, math.ceil(3 * span))
        assert await apis.pages(apis.shared, fmt, 6) == pages


async def test_a_page_from_the_start_guesses_the_share_from_the_last_start(
    apis: Apis, monkeypatch: pytest.MonkeyPatch
) -> None:
    fmt = "trl-dpo"
    expected = await apis.pages(apis.alone, fmt, 6)
    assert apis.helper.estimated_share_end(fmt, None, 6) is None  # no share yet
    assert await apis.pages(apis.shared, fmt, 6) == expected  # asks the database once
    first = await nth_turn_id(apis.sessions, ExportFilter(), after_id=None, n=1, min_replies=2)
    assert first is not None
    span = apis.helper._spans[fmt]
    assert apis.helper.estimated_share_end(fmt, None, 6) == first - 1 + max(1, math.ceil(3 * span))

    async def no_count(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a page from the start asked the database for its split")

    monkeypatch.setattr("feedback.api.records.nth_turn_id", no_count)
    assert await apis.pages(apis.shared, fmt, 6) == expected


async def test_a_share_that_reaches_the_end_learns_the_span_of_its_turns(apis: Apis) -> None:
    fmt = "trl-sft"
    reservation = apis.helper.reserve(6)
    assert reservation is not None
    # The last page's share: asked up to far past the last turn.
    turns = await apis.helper.turns(reservation, fmt, ExportFilter(), None, 10**9, 100)
    records = sum(len(records) for _, records in turns)
    assert apis.helper._spans[fmt] == (turns[-1][0] - turns[0][0] + 1) / records
    size = sum(len(record) for _, records_ in turns for record in records_)
    assert apis.helper._record_bytes[fmt] == size / records
    assert not apis.helper.hands_over_large_records(fmt)  # these SFT records are short
    apis.helper._record_bytes[fmt] = helper_module.LARGE_RECORD_BYTES
    assert apis.helper.hands_over_large_records(fmt)
    guess = apis.helper.estimated_share_end(fmt, turns[0][0] - 1, 2 * records)
    assert guess is not None and guess <= turns[-1][0] + 1  # not sent past the data


async def test_a_hung_helper_is_dropped_and_the_page_built_alone(
    apis: Apis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    expected = await apis.pages(apis.alone, "openai-sft", 10)
    first = apis.helper.pid
    assert first is not None
    os.kill(first, signal.SIGSTOP)  # alive, but answers nothing
    monkeypatch.setattr(helper_module, "ANSWER_SECONDS", 0.5)
    with caplog.at_level(logging.WARNING, logger="feedback.api.records"):
        assert await apis.pages(apis.shared, "openai-sft", 10) == expected
    assert "the page helper did not answer in 0.5 s" in caplog.text
    assert apis.helper.pid != first
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)  # killed, not left behind


async def test_a_helper_that_dies_costs_no_page_and_is_replaced(
    apis: Apis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = await apis.pages(apis.alone, "trl-sft", 8)
    first = apis.helper.pid
    original = PageHelper.turns

    async def dies_on_the_way(self: PageHelper, *args: Any) -> Any:
        process = self._process
        assert process is not None
        process.kill()  # while the page's request is on its way
        return await original(self, *args)

    monkeypatch.setattr(PageHelper, "turns", dies_on_the_way)
    with caplog.at_level(logging.WARNING, logger="feedback.api.records"):
        assert await apis.pages(apis.shared, "trl-sft", 8) == expected
    assert "building the page in one process: the page helper stopped" in caplog.text
    monkeypatch.setattr(PageHelper, "turns", original)
    await apis.helper.start()  # the replacement started in the background
    assert apis.helper.pid not in (None, first)
    calls: list[int] = []

    async def counted(self: PageHelper, *args: Any) -> Any:
        calls.append(1)
        return await original(self, *args)

    monkeypatch.setattr(PageHelper, "turns", counted)
    assert await apis.pages(apis.shared, "trl-sft", 8) == expected
    assert calls


async def test_a_busy_helper_leaves_concurrent_pages_to_one_process(apis: Apis) -> None:
    expected = await apis.pages(apis.alone, "oasst", 9)
    results = await asyncio.gather(*(apis.pages(apis.shared, "oasst", 9) for _ in range(3)))
    assert all(result == expected for result in results)


async def test_the_helper_stops_with_the_app(db_engine: AsyncEngine) -> None:
    sessions = session_factory(db_engine)
    app = create_app(sessions, pseudonym_secret=SECRET, helper_min_records=2)
    helper = app.state.page_helper
    async with app.router.lifespan_context(app):
        process = helper._process
        assert process is not None and process.returncode is None
    assert process.returncode == 0  # its input closed: it stopped by itself
    assert helper.pid is None


async def test_pages_are_built_alone_while_the_helper_starts(db_engine: AsyncEngine) -> None:
    sessions = session_factory(db_engine)
    await add_corrections(sessions, 6)
    apis = Apis(sessions, await create_token(sessions, "reader", "read"))
    try:
        assert apis.helper.pid is None
        expected = await apis.pages(apis.alone, "trl-kto", 4)
        assert await apis.pages(apis.shared, "trl-kto", 4) == expected
        await apis.helper.start()  # the first large page started it in the background
        assert apis.helper.pid is not None
    finally:
        await apis.helper.close()


async def test_a_helper_that_cannot_start_is_retried_later(
    db_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sessions = session_factory(db_engine)
    app = create_app(sessions, pseudonym_secret=SECRET, helper_min_records=2)
    helper = app.state.page_helper
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with caplog.at_level(logging.WARNING, logger="feedback.api.helper"):
        await helper.start()
    assert helper.pid is None
    assert "the page helper did not start" in caplog.text
    assert helper.reserve(10) is None and helper._starting is None  # not before the retry time


async def test_no_helper_for_an_in_memory_database() -> None:
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    try:
        app = create_app(session_factory(engine), pseudonym_secret=SECRET)
        assert app.state.page_helper is None
    finally:
        await engine.dispose()


@pytest.mark.parametrize("min_replies", [1, 2])
async def test_nth_turn_id_counts_the_turns_an_export_reads(apis: Apis, min_replies: int) -> None:
    flt = ExportFilter()
    ids = [
        tree.user_turn_id
        async for trees in iter_turn_trees(apis.sessions, flt, min_replies=min_replies)
        for tree in trees
    ]
    assert 10 < len(ids) < 46  # consent and, for two replies, rewrites leave turns out
    for after in (None, ids[0], ids[5] - 1):
        ahead = [turn for turn in ids if after is None or turn > after]
        for n in (1, 2, 7, len(ahead)):
            found = await nth_turn_id(
                apis.sessions, flt, after_id=after, n=n, min_replies=min_replies
            )
            assert found == ahead[n - 1]
        too_far = await nth_turn_id(
            apis.sessions, flt, after_id=after, n=len(ahead) + 1, min_replies=min_replies
        )
        assert too_far is None


async def test_ctrl_c_leaves_the_helper_to_its_api(apis: Apis) -> None:
    pid = apis.helper.pid
    assert pid is not None
    os.kill(pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    await asyncio.sleep(0.5)
    assert apis.helper.pid == pid
    expected = await apis.pages(apis.alone, "trl-sft", 9)
    assert await apis.pages(apis.shared, "trl-sft", 9) == expected
