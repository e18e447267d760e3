"""Dependency outages end to end: the real bot keeps answering what it can and recovers alone.

PostgreSQL is a cluster of the test's own (stopped and started under the bot), the model an
OpenAI-compatible endpoint on loopback that errors or hangs, memory a real ``chroma run`` server
that is killed and restarted. The long versions are ``bench/bench_outages.py``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from bot.discord_transport.outages import (
    DATABASE_UNAVAILABLE,
    DependencyState,
    OutageGaveUpError,
    is_connection_error,
    retry_through_outage,
)
from bot.llm import GenerationError, build_chat_model, generate
from bot.settings import ModelSettings
from feedback.database import create_engine, migrate
from feedback.models import MessageNode
from memory import HashingEmbedder, MemoryService
from personas import PersonaRegistry
from tests.bot_world import World, running_bot
from tests.discord_server.fixtures import discord_server
from tests.outage_services import (
    ChromaServer,
    FakeOpenAIEndpoint,
    PgCluster,
    free_port,
    pg_tools_missing,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from langchain_core.language_models import BaseChatModel
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tests.discord_server.models import Channel
    from tests.discord_server.server import DiscordTestServer

__all__ = ["discord_server"]


async def get_json(url: str) -> tuple[int, dict[str, Any]]:
    """GET ``url``: its status and JSON body."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def nodes(world: World) -> list[MessageNode]:
    """Every stored message node, in id order."""
    async with world.bot.sessions() as session:
        return list((await session.scalars(select(MessageNode).order_by(MessageNode.id))).all())


def say(world: World, channel: Channel, text: str) -> dict[str, Any]:
    """The member says ``text`` in a DM, or to the bot (a mention) in a guild channel."""
    server = world.server
    content = text if channel.type == 1 else f"<@{server.bot_user.id}> {text}"
    return server.send_user_message(channel, world.member, content)


# -- the retry on its own ---------------------------------------------------------------------


def test_connection_errors_are_told_from_query_errors() -> None:
    from sqlalchemy import exc as sa_exc

    refused = ConnectionRefusedError(111, "Connect call failed")
    assert is_connection_error(refused)
    wrapped = sa_exc.DBAPIError("SELECT 1", None, Exception("closed"), connection_invalidated=True)
    assert is_connection_error(wrapped)
    assert is_connection_error(sa_exc.OperationalError("SELECT 1", None, Exception("gone")))
    assert not is_connection_error(sa_exc.IntegrityError("INSERT", None, Exception("dup")))
    assert not is_connection_error(ValueError("bad input"))
    try:
        try:
            raise refused
        except OSError as error:
            raise RuntimeError("while storing the turn") from error
    except RuntimeError as outer:
        assert is_connection_error(outer)


async def test_a_refused_database_connection_is_a_database_error() -> None:
    import asyncpg

    from bot.discord_transport.outages import is_database_error

    with pytest.raises(OSError) as caught:
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{free_port()}/x", timeout=5)
    assert is_connection_error(caught.value) and is_database_error(caught.value)
    assert not is_database_error(ConnectionRefusedError(111, "a Discord request failed"))


async def test_the_retry_waits_out_connection_errors_and_gives_up_after_its_total(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sqlalchemy import exc as sa_exc

    state = DependencyState("database")
    attempts: list[int] = []
    refused = sa_exc.OperationalError("SELECT 1", None, ConnectionRefusedError(111, "refused"))

    async def flaky(attempt: int) -> str:
        attempts.append(attempt)
        if attempt < 3:
            raise refused
        return "done"

    assert await retry_through_outage(flaky, what="one", total_s=30, state=state) == "done"
    assert attempts == [0, 1, 2, 3] and state.state == "ok" and state.outages == 1
    assert state.last_error == "ConnectionRefusedError: [Errno 111] refused"  # no SQL, no values
    outage_lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage_lines) == 1  # once per outage, not per attempt

    async def wrong(_attempt: int) -> None:
        raise ValueError("not a connection problem")

    with pytest.raises(ValueError, match="not a connection"):
        await retry_through_outage(wrong, what="two", total_s=30, state=state)

    async def down(_attempt: int) -> None:
        raise refused

    with pytest.raises(OutageGaveUpError):
        await retry_through_outage(down, what="three", total_s=0.3, state=state)
    assert state.state == "down"


# -- PostgreSQL stopped under the bot ------------------------------------------------------------


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL cluster of this test's own, removed afterwards."""
    missing = pg_tools_missing()
    if missing:
        pytest.skip(f"cannot start a private PostgreSQL cluster: {missing}")
    with PgCluster.running_cluster() as cluster:
        yield cluster


@pytest.fixture
async def pg_engine(pg_cluster: PgCluster) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(pg_cluster.url)
    await migrate(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_a_database_outage_loses_no_message_and_recovers_alone(
    discord_server: DiscordTestServer, pg_cluster: PgCluster, pg_engine: AsyncEngine, tmp_path: Path
) -> None:
    health_port = free_port()
    async with running_bot(
        discord_server,
        pg_engine,
        tmp_path,
        discord={"db_retry_s": 90},
        health={"port": health_port},
    ) as world:
        server, lounge = world.server, world.channel
        dm = server.dm_channel_for(world.member)
        said: dict[int, list[dict[str, Any]]] = {dm.id: [], lounge.id: []}
        for channel in (dm, lounge):
            said[channel.id].append(say(world, channel, f"before the outage in {channel.id}"))
            await server.wait_for_messages(channel, 1)

        await asyncio.to_thread(pg_cluster.stop, "fast")
        for index in range(3):
            for channel in (dm, lounge):
                said[channel.id].append(say(world, channel, f"during the outage {index}"))
            await asyncio.sleep(1)  # the outage lasts a few seconds, with messages throughout
        # One message per channel is retrying; the others wait behind it, in order.
        await server.wait_until(
            lambda: world.bot.health.waiting,
            until=lambda waiting: waiting >= 2,
            what="both channels waiting",
            timeout=30,
        )
        status, report = await get_json(f"http://127.0.0.1:{health_port}/healthz")
        assert status == 503 and report["status"] == "degraded"
        assert report["checks"]["database"]["state"] == "down"
        assert report["checks"]["database"]["waiting_messages"] == 2
        assert len(world.bot_replies(dm)) == 1 and len(world.bot_replies(lounge)) == 1

        await asyncio.to_thread(pg_cluster.start)
        for channel in (dm, lounge):
            await server.wait_for_messages(channel, 4, timeout=60)

        stored = await server.wait_until(
            lambda: nodes(world),
            until=lambda found: (
                sum(n.role == "assistant" and n.state == "sent" for n in found) >= 8
            ),
            what="every reply marked sent",
            timeout=10,
        )

        # Exactly one reply per message, in the order the messages were sent.
        dm_texts = [m["content"] for m in said[dm.id]]
        assert [r["content"] for r in world.bot_replies(dm)] == [
            f"**Marlowe:** You said: {text}" for text in dm_texts
        ]
        lounge_replies = world.bot_replies(lounge)
        assert [r["message_reference"]["message_id"] for r in lounge_replies] == [
            m["id"] for m in said[lounge.id]
        ]
        # The database has every turn once: a user turn per message, one sent reply under each.
        user_turns = [n for n in stored if n.role == "user"]
        all_ids = [m["id"] for ms in said.values() for m in ms]
        assert sorted(n.external_id for n in user_turns) == sorted(all_ids)
        for turn in user_turns:
            answers = [n for n in stored if n.parent_id == turn.id and n.role == "assistant"]
            assert [a.state for a in answers] == ["sent"], (turn.content, answers)

        status, report = await get_json(f"http://127.0.0.1:{health_port}/healthz")
        assert status == 200 and report["checks"]["database"]["state"] == "ok", report
        assert world.bot.health.database.outages == 1


@pytest.mark.postgres
async def test_an_actor_clicking_while_the_database_is_down_is_told_so(
    discord_server: DiscordTestServer, pg_cluster: PgCluster, pg_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with running_bot(discord_server, pg_engine, tmp_path) as world:
        server = world.server
        console = server.add_channel(world.guild, "console")
        role = server.add_role(world.guild, "Actors")
        alice = server.add_user("alice")
        server.add_member(world.guild, alice, roles=[role])
        server.add_member(world.guild, world.owner)
        setup = server.send_slash_command(
            world.channel,
            world.owner,
            "console",
            {"channel": console, "role": role},
            subcommand="setup",
        )
        await server.wait_for_interaction_response(setup)
        say(world, world.channel, "hello there")
        [console_message] = await server.wait_for_messages(console, 1)
        custom_id = next(
            component["custom_id"]
            for row in console_message["components"]
            for component in row["components"]
            if component.get("custom_id", "").startswith("gr:approve:")
        )

        await asyncio.to_thread(pg_cluster.stop, "fast")
        click = server.click_button(console_message, alice, custom_id)
        answer = await server.wait_for_interaction_response(click, timeout=10)
        assert answer.ephemeral and answer.response_data["content"] == DATABASE_UNAVAILABLE

        await asyncio.to_thread(pg_cluster.start)
        again = server.click_button(console_message, alice, custom_id)
        answer = await server.wait_for_interaction_response(again, timeout=10)
        assert answer.response_type == 6  # acknowledged: the approval was recorded


# -- the model endpoint failing -----------------------------------------------------------------


def _openai_model(endpoint: FakeOpenAIEndpoint, monkeypatch: pytest.MonkeyPatch) -> BaseChatModel:
    """The provider as configured for the endpoint, with a 1 s deadline (the engine's too)."""
    monkeypatch.setenv("GREENROOM_TEST_OPENAI_KEY", "sk-test")
    monkeypatch.setenv("GREENROOM_MODEL__TIMEOUT_S", "1")
    return build_chat_model(
        ModelSettings(
            provider="openai",
            name="fake-model",
            base_url=endpoint.base_url,
            api_key_env="GREENROOM_TEST_OPENAI_KEY",
            timeout_s=1.0,
        )
    )


async def test_the_openai_provider_turns_errors_and_hangs_into_generation_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from langchain_core.messages import HumanMessage

    endpoint = FakeOpenAIEndpoint()
    async with endpoint.serving():
        model = _openai_model(endpoint, monkeypatch)
        messages = [HumanMessage(content="hello")]
        result = await generate(model, messages, timeout_s=1.0)
        assert result.text == "Endpoint says: hello"
        for mode, reason in (("error", "failed"), ("hang", "timeout"), ("down", "failed")):
            await endpoint.set_mode(mode)
            with pytest.raises(GenerationError) as caught:
                await generate(model, messages, timeout_s=1.0)
            assert caught.value.reason == reason, mode
        await endpoint.set_mode("ok")
        assert (await generate(model, messages, timeout_s=1.0)).text == "Endpoint says: hello"


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'greenroom.sqlite3'}")
    await migrate(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_a_failing_model_endpoint_gets_fallback_lines_then_recovers(
    discord_server: DiscordTestServer,
    sqlite_engine: AsyncEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = FakeOpenAIEndpoint()
    marlowe = PersonaRegistry.load().get("Marlowe")
    fallbacks = {marlowe.fallback_line(seed=seed) for seed in range(200)}
    async with (
        endpoint.serving(),
        running_bot(
            discord_server,
            sqlite_engine,
            tmp_path,
            model=_openai_model(endpoint, monkeypatch),
        ) as world,
    ):
        dm = world.server.dm_channel_for(world.member)
        say(world, dm, "first")
        [reply] = await world.server.wait_for_messages(dm, 1)
        assert reply["content"] == "**Marlowe:** Endpoint says: first"
        for count, mode in enumerate(("error", "hang", "down"), start=2):
            await endpoint.set_mode(mode)
            say(world, dm, f"while the model is {mode}")
            replies = await world.server.wait_for_messages(dm, count, timeout=15)
            line = replies[-1]["content"].removeprefix("**Marlowe:** ")
            assert line in fallbacks, line
            assert "Endpoint says" not in line
            assert world.bot.health.model.state == "down"
        await endpoint.set_mode("ok")
        say(world, dm, "back again")
        replies = await world.server.wait_for_messages(dm, 5, timeout=15)
        assert replies[-1]["content"] == "**Marlowe:** Endpoint says: back again"
        assert world.bot.health.model.state == "ok"
        candidates = [n for n in await nodes(world) if n.role == "assistant"]
        assert [n.origin for n in candidates] == [
            "model",
            "fallback",
            "fallback",
            "fallback",
            "model",
        ]
        reasons = [
            flag["reason"]
            for n in candidates
            for flag in n.flags
            if flag["kind"] == "generation_failed"
        ]
        assert reasons == ["failed", "timeout", "failed"]


# -- the Chroma server gone ---------------------------------------------------------------------


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[ChromaServer]:
    if ChromaServer.command() is None:
        pytest.skip("chromadb's server command (chroma) is not installed")
    with ChromaServer.running_server(tmp_path / "chroma") as server:
        yield server


async def test_a_dead_chroma_server_costs_memories_not_replies(
    discord_server: DiscordTestServer,
    sqlite_engine: AsyncEngine,
    tmp_path: Path,
    chroma_server: ChromaServer,
) -> None:
    memory = MemoryService.open(
        host=chroma_server.host,
        port=chroma_server.port,
        embedder=HashingEmbedder(),
        timeout_s=3.0,
    )
    health_port = free_port()
    try:
        async with running_bot(
            discord_server, sqlite_engine, tmp_path, memory=memory, health={"port": health_port}
        ) as world:
            dm = world.server.dm_channel_for(world.member)
            user_id = f"discord:{world.member.id}"
            say(world, dm, "My cat is called Biscuit and she loves the rain")
            await world.server.wait_for_messages(dm, 1)
            await world.server.wait_until(  # the fact, which outlives the history window
                lambda: memory.show_user(user_id=user_id),
                until=lambda records: any(r.kind == "user_fact" for r in records),
                what="the first turn's fact remembered",
                timeout=10,
            )

            await asyncio.to_thread(chroma_server.kill)
            say(world, dm, "What is my cat called, Biscuit?")
            replies = await world.server.wait_for_messages(dm, 2, timeout=20)
            assert replies[-1]["content"].startswith("**Marlowe:** You said:")
            candidate = [n for n in await nodes(world) if n.role == "assistant"][-1]
            assert any(flag["kind"] == "memory_unavailable" for flag in candidate.flags)
            status, report = await get_json(f"http://127.0.0.1:{health_port}/healthz")
            assert status == 503 and report["checks"]["memory"]["state"] == "unavailable"

            await asyncio.to_thread(chroma_server.start)
            say(world, dm, "Tell me about my cat Biscuit")
            replies = await world.server.wait_for_messages(dm, 3, timeout=20)
            assert replies[-1]["content"].startswith("**Marlowe:** You said:")
            candidate = [n for n in await nodes(world) if n.role == "assistant"][-1]
            assert not any(flag["kind"] == "memory_unavailable" for flag in candidate.flags)
            snapshot = await world.store.get_snapshot(candidate.prompt_snapshot_id)
            assert snapshot is not None and any("Biscuit" in line for line in snapshot.memories)
            status, report = await get_json(f"http://127.0.0.1:{health_port}/healthz")
            assert status == 200 and report["checks"]["memory"]["state"] == "ok", report
    finally:
        memory.close()
