"""The Greenroom bot end to end: the real discord.py client against the loopback server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from bot.discord_transport.typing import keep_typing
from bot.llm import FakeChatModel
from feedback.models import GuildSetting
from feedback.privacy import PrivacyStore
from memory import HashingEmbedder, MemoryService
from tests.bot_world import World, running_bot
from tests.discord_server.fixtures import discord_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine

    from tests.discord_server.server import DiscordTestServer

__all__ = ["discord_server"]

MESSAGES = "/channels/{channel_id}/messages"
TYPING = "/channels/{channel_id}/typing"


@pytest.fixture
async def world(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> AsyncIterator[World]:
    async with running_bot(discord_server, db_engine, tmp_path) as world:
        yield world


def _posts(world: World) -> list[dict]:
    return [r.json for r in world.server.requests_to("POST", MESSAGES)]


async def test_dm_is_answered_with_the_persona_name_and_no_pings(world: World) -> None:
    dm = world.server.dm_channel_for(world.member)
    world.server.send_user_message(dm, world.member, "hello @everyone <@&123>")
    [reply] = await world.server.wait_for_messages(dm, 1)
    assert reply["content"].startswith("**Marlowe:** You said: hello")
    post = _posts(world)[-1]
    assert post["allowed_mentions"]["parse"] == []
    assert not post["allowed_mentions"].get("replied_user")
    assert not world.server.requests_to("POST", TYPING)  # an instant reply needs no indicator
    assert reply["mention_everyone"] is False


async def test_a_slow_reply_shows_the_typing_indicator(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with running_bot(
        discord_server, db_engine, tmp_path, model=FakeChatModel(chunk_delay_s=0.2)
    ) as world:
        dm = world.server.dm_channel_for(world.member)
        world.server.send_user_message(dm, world.member, "take your time please")
        typing = await world.server.wait_for_request(method="POST", route=TYPING)
        [reply] = await world.server.wait_for_messages(dm, 1)
        assert typing.received_ns < world.server.requests_to("POST", MESSAGES)[-1].received_ns
        assert reply["content"].endswith("take your time please")


async def test_typing_starts_only_when_the_body_outlasts_the_delay() -> None:
    class Channel:
        def __init__(self) -> None:
            self.typed = 0
            self.started = asyncio.Event()

        async def typing(self) -> None:
            self.typed += 1
            self.started.set()

    quick, slow = Channel(), Channel()
    async with keep_typing(quick, delay=0.05):  # type: ignore[arg-type]
        await asyncio.sleep(0)
    async with keep_typing(slow, delay=0.1):  # type: ignore[arg-type]
        await asyncio.wait_for(slow.started.wait(), 5)  # a body that outlasts the delay
    # The loop runs timers in deadline order: quick's, had it been left behind, was due first.
    assert (quick.typed, slow.typed) == (0, 1)


async def test_guild_messages_need_a_mention_a_reply_or_a_binding(world: World) -> None:
    server, channel = world.server, world.channel
    server.send_user_message(channel, world.member, "just chatting")
    bot_user = server.users[server.bot_user.id]
    server.send_user_message(channel, world.member, f"<@{bot_user.id}> hey you")
    [first] = await server.wait_for_messages(channel, 1)
    assert first["content"] == "**Marlowe:** You said: Mia: hey you"
    assert first["message_reference"]["message_id"]
    server.send_user_message(channel, world.member, "and another thing", reply_to=first)
    replies = await server.wait_for_messages(channel, 2)
    assert replies[1]["content"] == "**Marlowe:** You said: Mia: and another thing"
    # A channel's messages are handled in order: "just chatting" was done before the first reply.
    assert len(world.bot_replies(channel)) == 2


async def test_bots_system_messages_and_own_messages_are_ignored(world: World) -> None:
    server = world.server
    other_bot = server.add_user("otherbot", bot=True)
    server.add_member(world.guild, other_bot)
    dm = server.dm_channel_for(world.member)
    mention = f"<@{server.bot_user.id}>"
    server.send_user_message(world.channel, other_bot, f"{mention} hi")
    server.send_user_message(world.channel, world.member, f"{mention} joined", type=7)
    server.send_user_message(dm, world.member, "real one")
    await server.wait_for_messages(dm, 1)
    # Later messages in the same channels: answered only once everything before them was handled
    # (the bot's own reply in the DM included).
    server.send_user_message(world.channel, world.member, f"{mention} marker")
    server.send_user_message(dm, world.member, "marker")
    [marker] = await server.wait_for_messages(world.channel, 1)
    await server.wait_for_messages(dm, 2)
    assert marker["content"] == "**Marlowe:** You said: Mia: marker"
    assert [m["content"] for m in world.bot_replies(dm)] == [
        "**Marlowe:** You said: real one",
        "**Marlowe:** You said: marker",
    ]
    assert len(_posts(world)) == 3


async def test_speakers_share_a_channel_conversation_with_their_names(world: World) -> None:
    server = world.server
    server.add_member(world.guild, world.owner)
    mention = f"<@{server.bot_user.id}>"
    server.send_user_message(world.channel, world.member, f"{mention} I'm Mia")
    await server.wait_for_messages(world.channel, 1)
    server.send_user_message(world.channel, world.owner, f"{mention} and I'm the owner")
    await server.wait_for_messages(world.channel, 2)
    conversation = await world.store.conversation_id(
        "discord", f"channel:{world.channel.id}", "Marlowe"
    )
    history = await server.wait_until(  # the reply is marked sent just after its POST returns
        lambda: world.store.history(conversation, 10),
        until=lambda turns: len(turns) == 4,
        what="both replies stored as sent",
    )
    assert [(t.role, t.author_name) for t in history] == [
        ("user", "Mia"),
        ("assistant", "Marlowe"),
        ("user", "owner"),
        ("assistant", "Marlowe"),
    ]
    dm_a = server.dm_channel_for(world.member)
    server.send_user_message(dm_a, world.member, "private")
    await server.wait_for_messages(dm_a, 1)
    dm_conversation = await world.store.conversation_id(
        "discord", f"dm:{world.member.id}", "Marlowe"
    )
    assert dm_conversation != conversation


async def test_messages_of_one_channel_are_answered_in_order(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with running_bot(
        discord_server, db_engine, tmp_path, model=FakeChatModel(chunk_delay_s=0.005)
    ) as world:
        dm = world.server.dm_channel_for(world.member)
        for i in range(6):
            world.server.send_user_message(dm, world.member, f"message {i}")
        replies = await world.server.wait_for_messages(dm, 6)
        assert [r["content"] for r in replies] == [
            f"**Marlowe:** You said: message {i}" for i in range(6)
        ]


async def test_long_replies_are_split(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    long = " ".join(["Rain falls on the city."] * 200)
    model = FakeChatModel(replies=[long], max_tokens=5000)
    async with running_bot(discord_server, db_engine, tmp_path, model=model) as world:
        dm = world.server.dm_channel_for(world.member)
        world.server.send_user_message(dm, world.member, "tell me everything")
        replies = await world.server.wait_for_messages(dm, 3)
        assert all(len(r["content"]) <= 2000 for r in replies)
        assert replies[0]["content"].startswith("**Marlowe:** Rain")
        text = " ".join(r["content"].removeprefix("**Marlowe:** ") for r in replies)
        assert text.split() == long.split()


async def test_a_bound_channel_answers_everything_and_webhooks_show_the_persona(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with running_bot(
        discord_server, db_engine, tmp_path, discord={"use_webhooks": True}
    ) as world:
        server = world.server
        server.add_member(world.guild, world.owner)
        bind = server.send_slash_command(
            world.channel, world.owner, "persona", {"name": "Juniper"}, subcommand="bind"
        )
        answer = await server.wait_for_interaction_response(bind)
        assert answer.ephemeral and "Juniper" in answer.response_data["content"]
        server.send_user_message(world.channel, world.member, "no mention needed")
        [reply] = await server.wait_for_messages(world.channel, 1)
        assert reply["content"] == "You said: Mia: no mention needed"
        assert reply["author"]["username"] == "Juniper" and reply.get("webhook_id")
        execute = server.requests_to("POST", "/webhooks/{webhook_id}/{webhook_token}")[-1]
        assert execute.json["allowed_mentions"]["parse"] == []
        server.send_user_message(world.channel, world.member, "a reply to Juniper", reply_to=reply)
        assert len(await server.wait_for_messages(world.channel, 2)) == 2


async def test_only_managers_bind_and_errors_are_ephemeral(world: World) -> None:
    server = world.server
    denied = server.send_slash_command(
        world.channel, world.member, "persona", {"name": "Juniper"}, subcommand="bind"
    )
    denied = await server.wait_for_interaction_response(denied)
    assert denied.ephemeral and "Only server managers" in denied.response_data["content"]
    unknown = server.send_slash_command(
        world.channel, world.owner, "persona", {"name": "Nobody"}, subcommand="bind"
    )
    unknown = await server.wait_for_interaction_response(unknown)
    assert unknown.ephemeral and "known: " in unknown.response_data["content"]
    unbind = server.send_slash_command(world.channel, world.owner, "persona", subcommand="unbind")
    unbind = await server.wait_for_interaction_response(unbind)
    assert unbind.ephemeral and "No persona is bound" in unbind.response_data["content"]
    server.set_member_roles(world.guild, world.member, [world.manager_role])
    ok = server.send_slash_command(
        world.channel, world.member, "persona", {"name": "captain vex"}, subcommand="bind"
    )
    ok = await server.wait_for_interaction_response(ok)
    assert "Captain Vex" in ok.response_data["content"]
    assert await world.bot.channels.persona_for(f"discord:{world.channel.id}") == "Captain Vex"
    off = server.send_slash_command(world.channel, world.member, "persona", subcommand="unbind")
    off = await server.wait_for_interaction_response(off)
    assert "Unbound" in off.response_data["content"]


async def test_persona_list_show_and_help(world: World) -> None:
    server = world.server
    listed = server.send_slash_command(world.channel, world.member, "persona", subcommand="list")
    listed = await server.wait_for_interaction_response(listed)
    assert listed.ephemeral
    for name in ("Marlowe", "Juniper", "Captain Vex"):
        assert name in listed.response_data["content"]
    shown = server.send_slash_command(
        world.channel, world.member, "persona", {"name": "juniper"}, subcommand="show"
    )
    shown = await server.wait_for_interaction_response(shown)
    assert shown.response_data["embeds"][0]["title"] == "Juniper"
    helped = await server.wait_for_interaction_response(
        server.send_slash_command(world.channel, world.member, "help")
    )
    assert helped.ephemeral and "/memory forget" in helped.response_data["content"]


async def test_memory_commands_without_memory_say_so(world: World) -> None:
    server = world.server
    shown = await server.wait_for_interaction_response(
        server.send_slash_command(world.channel, world.member, "memory", subcommand="show")
    )
    assert shown.ephemeral and "switched off" in shown.response_data["content"]
    pinned = await server.wait_for_interaction_response(
        server.send_slash_command(world.channel, world.member, "remember", {"text": "x"})
    )
    assert pinned.ephemeral and "switched off" in pinned.response_data["content"]


async def test_forget_erases_the_users_turns(world: World) -> None:
    server = world.server
    dm = server.dm_channel_for(world.member)
    server.send_user_message(dm, world.member, "my secret is 42")
    await server.wait_for_messages(dm, 1)
    forget = server.send_slash_command(dm, world.member, "memory", subcommand="forget")
    await server.wait_for_interaction_response(forget)
    followup = await server.wait_for_request(
        method="POST", route="/webhooks/{webhook_id}/{webhook_token}"
    )
    assert "erased 3 stored items" in followup.json["content"]  # turn, reply, snapshot
    conversation = await world.store.conversation_id("discord", f"dm:{world.member.id}", "Marlowe")
    assert await world.store.history(conversation, 10) == []


async def test_cooldown_gives_one_notice(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with running_bot(
        discord_server,
        db_engine,
        tmp_path,
        discord={"cooldown_messages": 2, "cooldown_seconds": 30},
    ) as world:
        dm = world.server.dm_channel_for(world.member)
        for i in range(6):
            world.server.send_user_message(dm, world.member, f"spam {i}")
        await world.server.wait_for_messages(dm, 3)
        await world.settle()  # a cooled-down message leaves no trace to wait for
        contents = [m["content"] for m in world.bot_replies(dm)]
        assert contents[:2] == ["**Marlowe:** You said: spam 0", "**Marlowe:** You said: spam 1"]
        notices = [c for c in contents if "faster than I can answer" in c]
        assert len(notices) == 1 and len(contents) == 3


@pytest.mark.parametrize(("mode", "expected"), [("reply", 1), ("ignore", 0)])
async def test_attachment_only_messages_by_setting(
    discord_server: DiscordTestServer,
    db_engine: AsyncEngine,
    tmp_path: Path,
    mode: str,
    expected: int,
) -> None:
    async with running_bot(
        discord_server, db_engine, tmp_path, discord={"non_text": mode}
    ) as world:
        dm = world.server.dm_channel_for(world.member)
        world.server.send_user_message(dm, world.member, "", attachments=[("cat.png", b"\x89PNG")])
        world.server.send_user_message(
            dm, world.member, "", sticker_items=[{"id": "1", "name": "wave", "format_type": 1}]
        )
        world.server.send_user_message(dm, world.member, "after")
        replies = await world.server.wait_for_messages(dm, 2 * expected + 1)
        assert replies[-1]["content"].endswith("You said: after")
        if expected:
            assert "only read words" in replies[0]["content"]


async def test_rate_limits_and_server_errors_are_retried_once_delivered(world: World) -> None:
    server = world.server
    dm = server.dm_channel_for(world.member)
    server.inject_fault("POST", MESSAGES, status=429, retry_after=0.05)
    server.send_user_message(dm, world.member, "through a 429")
    [reply] = await server.wait_for_messages(dm, 1)
    assert reply["content"].endswith("through a 429")
    server.inject_fault("POST", MESSAGES, status=502)
    server.send_user_message(dm, world.member, "through a 502")
    replies = await server.wait_for_messages(dm, 2, timeout=10)
    assert replies[1]["content"].endswith("through a 502")
    server.send_user_message(dm, world.member, "marker")  # answered after the 502's retry is done
    replies = await server.wait_for_messages(dm, 3)
    assert [r["content"] for r in replies] == [
        "**Marlowe:** You said: through a 429",
        "**Marlowe:** You said: through a 502",
        "**Marlowe:** You said: marker",
    ]
    assert sum(r.fault for r in server.requests_to("POST", MESSAGES)) == 2


async def test_a_dropped_gateway_resumes_and_keeps_answering(world: World) -> None:
    server = world.server
    dm = server.dm_channel_for(world.member)
    server.send_user_message(dm, world.member, "before")
    await server.wait_for_messages(dm, 1)
    frames_before = len(server.gateway.received())
    await server.drop_gateway()
    server.send_user_message(dm, world.member, "during the drop")
    replies = await server.wait_for_messages(dm, 2, timeout=15)
    assert replies[1]["content"].endswith("during the drop")
    ops = [frame.op for frame in server.gateway.received()[frames_before:]]
    assert 6 in ops and 2 not in ops  # RESUME, no new IDENTIFY


async def test_shutdown_finishes_replies_in_flight(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with running_bot(
        discord_server, db_engine, tmp_path, model=FakeChatModel(chunk_delay_s=0.1)
    ) as world:
        dm = world.server.dm_channel_for(world.member)
        world.server.send_user_message(dm, world.member, "one two three four")
        await world.server.wait_for_request(method="POST", route=TYPING)
        await world.bot.shutdown(grace_s=10)
        assert world.bot.is_closed()
        [reply] = world.bot_replies(dm)
        assert reply["content"].endswith("one two three four")


async def test_greenroom_run_against_the_loopback_server(
    discord_server: DiscordTestServer, tmp_path: Path
) -> None:
    server = discord_server
    user = server.add_user("sam")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    environment.update(
        DISCORD_TOKEN=server.bot_token,
        GREENROOM_DISCORD__API_BASE=server.api_base,
        GREENROOM_MODEL__PROVIDER="fake",
        GREENROOM_MEMORY__ENABLED="false",
        GREENROOM_DATA_DIR=str(tmp_path),
    )
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("greenroom")),
        "run",
        env=environment,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await server.wait_for_identified(timeout=60)
        await server.wait_for_request(
            method="PUT", route="/applications/{application_id}/commands", timeout=30
        )
        dm = server.dm_channel_for(user)
        server.send_user_message(dm, user, "hello from a real process")
        [reply] = await server.wait_for_messages(dm, 1, timeout=30)
        assert reply["content"] == "**Marlowe:** You said: hello from a real process"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert "stopped cleanly" in stderr.decode()
    assert not server.unknown_requests


async def test_an_over_long_message_gets_a_notice_and_nothing_is_stored(world: World) -> None:
    server = world.server
    dm = server.dm_channel_for(world.member)
    # Discord lets Nitro users send up to 4,000 characters; a payload past that is refused too.
    too_long = server.build_message(
        dm, world.member, "y" * 4001, message_id=server.snowflakes.next()
    )
    server.store_message(too_long, in_history=False)
    notice = await server.wait_for_request(method="POST", route=MESSAGES)
    assert "4,001 characters" in notice.json["content"] and "4,000" in notice.json["content"]
    assert notice.json["allowed_mentions"]["parse"] == []
    conversation = await world.store.conversation_id("discord", f"dm:{world.member.id}", "Marlowe")
    assert await world.store.history(conversation, 10) == []


async def test_consent_and_the_server_default(world: World) -> None:
    server = world.server
    said = server.send_slash_command(world.channel, world.member, "consent", {"choice": "on"})
    said = await server.wait_for_interaction_response(said)
    assert said.ephemeral and "may be used" in said.response_data["content"]
    privacy = PrivacyStore(world.bot.sessions)
    assert await privacy.consent_of(f"discord:{world.member.id}") is True
    refused = server.send_slash_command(
        world.channel, world.member, "consent-default", {"choice": "on"}
    )
    refused = await server.wait_for_interaction_response(refused)
    assert refused.ephemeral and "Only server managers" in refused.response_data["content"]
    server.add_member(world.guild, world.owner)
    ok = server.send_slash_command(world.channel, world.owner, "consent-default", {"choice": "on"})
    ok = await server.wait_for_interaction_response(ok)
    assert "consent on" in ok.response_data["content"]
    async with world.bot.sessions() as session:
        setting = await session.get(GuildSetting, f"discord:{world.guild.id}")
    assert setting is not None and setting.consent_default is True


async def test_remember_show_and_forget_with_memory(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    memory = MemoryService.open(path=tmp_path / "chroma", embedder=HashingEmbedder())
    try:
        async with running_bot(discord_server, db_engine, tmp_path, memory=memory) as world:
            server = world.server
            pinned = server.send_slash_command(
                world.channel, world.member, "remember", {"text": "I am allergic to peanuts"}
            )
            pinned = await server.wait_for_interaction_response(pinned)
            assert pinned.ephemeral and "will remember" in pinned.response_data["content"]
            again = server.send_slash_command(
                world.channel, world.member, "remember", {"text": "I am allergic to peanuts"}
            )
            again = await server.wait_for_interaction_response(again)
            assert again.ephemeral and "already" in again.response_data["content"].lower()
            shown = server.send_slash_command(
                world.channel, world.member, "memory", subcommand="show"
            )
            await server.wait_for_interaction_response(shown)
            listing = await server.wait_for_request(
                lambda r: (
                    r.route == "/webhooks/{webhook_id}/{webhook_token}" and "peanuts" in str(r.json)
                )
            )
            assert listing.json["flags"] & 64  # ephemeral
            other = server.send_slash_command(
                world.channel, world.owner, "memory", subcommand="show"
            )
            await server.wait_for_interaction_response(other)
            nothing = await server.wait_for_request(
                lambda r: (
                    r.route == "/webhooks/{webhook_id}/{webhook_token}"
                    and "anything about you" in str(r.json)
                )
            )
            assert "peanuts" not in str(nothing.json)
            forget = server.send_slash_command(
                world.channel, world.member, "memory", subcommand="forget"
            )
            await server.wait_for_interaction_response(forget)
            await server.wait_for_request(
                lambda r: (
                    r.route == "/webhooks/{webhook_id}/{webhook_token}" and "erased" in str(r.json)
                )
            )
            assert await memory.show_user(user_id=f"discord:{world.member.id}") == []
    finally:
        memory.close()


async def test_a_typing_user_has_their_memory_loaded_before_their_message(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    """DMs and bound channels load the typing user's memory of the persona, once in a while;
    unbound channels do not (only a mention would be answered there)."""
    server = discord_server
    memory = MemoryService.open(path=tmp_path / "chroma", embedder=HashingEmbedder())
    loads: asyncio.Queue[tuple[list[tuple[str, str]], int]] = asyncio.Queue()
    preload = memory.preload

    async def recorded(scopes: Any, *, limit: int) -> int:
        scopes = list(scopes)
        loaded = await preload(scopes, limit=limit)
        loads.put_nowait((scopes, loaded))
        return loaded

    memory.preload = recorded  # type: ignore[method-assign]
    try:
        async with running_bot(server, db_engine, tmp_path, memory=memory) as world:
            member, owner = world.member, world.owner
            for user, persona in ((member, "Marlowe"), (owner, "Juniper")):
                await memory.pin(
                    persona=persona,
                    user_id=f"discord:{user.id}",
                    text="My sister is Maya",
                    source="user",
                )
            server.user_starts_typing(world.channel, owner)  # unbound: no warm-up
            server.user_starts_typing(server.dm_channel_for(member), member)
            loaded = await asyncio.wait_for(loads.get(), 10)
            assert loaded == ([("Marlowe", f"discord:{member.id}")], 1)
            server.user_starts_typing(server.dm_channel_for(member), member)  # warmed lately
            await world.bot.channels.bind(
                f"discord:{world.channel.id}", persona="Juniper", guild_key=None, by="test"
            )
            server.user_starts_typing(world.channel, owner)
            loaded = await asyncio.wait_for(loads.get(), 10)
            assert loaded == ([("Juniper", f"discord:{owner.id}")], 1)
            await world.settle()  # a typing signal that loads nothing leaves no trace
            assert loads.empty()  # the unbound channel and the second DM signal loaded nothing
    finally:
        memory.close()
