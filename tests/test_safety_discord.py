"""Urgent replies no actor can review: never sent raw, over the real discord.py client."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from feedback.models import FeedbackEvent, MessageNode
from tests.bot_world import World, running_bot
from tests.discord_server.fixtures import discord_server
from tests.test_console_discord import console_world

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine

    from tests.discord_server.server import DiscordTestServer

__all__ = ["discord_server"]

RESOURCES = {"help_resources": ["Call or text 988 (US).", "Samaritans: 116 123 (UK)."]}


@pytest.fixture
async def world(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> AsyncIterator[World]:
    async with running_bot(discord_server, db_engine, tmp_path, safety=RESOURCES) as world:
        yield world


async def _assistant_nodes(world: World) -> list[MessageNode]:
    async with world.bot.sessions() as session:
        query = select(MessageNode).where(MessageNode.role == "assistant")
        return list((await session.scalars(query.order_by(MessageNode.id))).all())


async def _once_marked_sent(world: World, count: int) -> list[MessageNode]:
    """The assistant nodes, once ``count`` of them are marked sent (delivery commits after
    the message reaches Discord)."""
    return await world.server.wait_until(
        lambda: _assistant_nodes(world),
        what=f"{count} replies marked sent",
        until=lambda nodes: sum(node.state == "sent" for node in nodes) >= count,
        describe=lambda nodes: str([node.state for node in nodes]),
    )


async def test_an_urgent_dm_with_no_console_gets_the_safety_line_not_the_model(
    world: World,
) -> None:
    dm = world.server.dm_channel_for(world.member)
    world.server.send_user_message(dm, world.member, "I want to end my life")
    [reply] = await world.server.wait_for_messages(dm, 1)
    assert reply["content"].startswith("**Marlowe:** Hey. I'm glad you said it out loud")
    assert "988" in reply["content"] and "116 123" in reply["content"]
    assert "You said" not in reply["content"]
    withheld, sent = await _once_marked_sent(world, 1)
    assert (withheld.origin, withheld.state) == ("model", "withheld")
    assert withheld.content == "You said: I want to end my life"
    assert (sent.origin, sent.state, sent.parent_id) == (
        "safety_fallback",
        "sent",
        withheld.parent_id,
    )
    assert sent.flags[0]["withheld"] == withheld.id
    async with world.bot.sessions() as session:
        events = (await session.scalars(select(FeedbackEvent))).all()
    assert [(e.kind, e.candidate_id, e.result_id) for e in events] == [
        ("safety_fallback", withheld.id, sent.id)
    ]


async def test_crisis_words_are_urgent_too(world: World) -> None:
    dm = world.server.dm_channel_for(world.member)
    world.server.send_user_message(dm, world.member, "he threatened me and I'm being followed")
    [reply] = await world.server.wait_for_messages(dm, 1)
    assert "988" in reply["content"] and "You said" not in reply["content"]


async def test_an_urgent_hold_that_runs_out_sends_the_safety_line(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    """A console exists but no actor answers in time: even with ``on_timeout = send`` the raw
    reply stays withheld."""
    async with console_world(
        discord_server,
        db_engine,
        tmp_path,
        console={"hold_seconds": 1.0, "on_timeout": "send"},
        safety=RESOURCES,
    ) as world:
        server = world.server
        server.send_user_message(
            world.channel, world.member, f"<@{server.bot_user.id}> I want to kill myself"
        )
        [reply] = await server.wait_for_messages(world.channel, 1, timeout=10)
        assert "988" in reply["content"] and "You said" not in reply["content"]
        withheld = (await _assistant_nodes(world))[0]
        assert withheld.state == "withheld"


async def test_console_setup_explains_how_dms_get_a_console(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with running_bot(discord_server, db_engine, tmp_path) as world:
        server = world.server
        server.add_member(world.guild, world.owner)
        console = server.add_channel(world.guild, "console")
        role = server.add_role(world.guild, "Actors")
        setup = server.send_slash_command(
            world.channel,
            world.owner,
            "console",
            {"channel": console, "role": role},
            subcommand="setup",
        )
        answer = (await server.wait_for_interaction_response(setup)).response_data["content"]
        assert f"console.staff_guild_id = {world.guild.id}" in answer
        assert "GREENROOM_CONSOLE__STAFF_GUILD_ID" in answer
