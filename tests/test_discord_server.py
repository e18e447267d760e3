"""The fake Discord server against the real, unmodified discord.py 2.7 client.

A small echo bot defined here (not the Greenroom bot) logs in over HTTP, connects over the
websocket gateway on loopback, and the tests assert on what the server recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
import discord.utils
import pytest
from discord import app_commands
from discord.ext import commands

from tests.discord_server import ChannelType, DiscordTestServer, Opcode, point_discord_py_at
from tests.discord_server.fixtures import discord_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.discord_server import Channel, Guild, User

__all__ = ("discord_server",)

MESSAGES = "/channels/{channel_id}/messages"
CALLBACK = "/interactions/{interaction_id}/{interaction_token}/callback"


class PanelView(discord.ui.View):
    """A persistent view: no timeout and fixed custom_ids, so it survives restarts."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Approve", custom_id="panel:approve")
    async def approve(
        self, interaction: discord.Interaction, button: discord.ui.Button[Any]
    ) -> None:
        await interaction.response.send_message("approved", ephemeral=True)

    @discord.ui.select(
        custom_id="panel:pick",
        options=[
            discord.SelectOption(label="A", value="a"),
            discord.SelectOption(label="B", value="b"),
        ],
    )
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select[Any]) -> None:
        await interaction.response.edit_message(content=f"picked {','.join(select.values)}")


class FeedbackModal(discord.ui.Modal, title="Feedback"):
    text: discord.ui.TextInput[Any] = discord.ui.TextInput(label="Text", custom_id="feedback:text")

    def __init__(self) -> None:
        super().__init__(custom_id="feedback")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"thanks for {self.text.value}")


class EchoBot(commands.Bot):
    """Echoes messages and answers a few commands, views and a modal."""

    def __init__(self) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        intents.members = True
        super().__init__(command_prefix="?", intents=intents, guild_ready_timeout=0.05)
        self.seen: list[discord.Message] = []
        self.tree.add_command(app_commands.Command(name="ping", description="Ping", callback=_ping))
        self.tree.add_command(app_commands.Command(name="slow", description="Slow", callback=_slow))
        self.tree.add_command(
            app_commands.Command(name="feedback", description="Feedback", callback=_feedback)
        )

    async def setup_hook(self) -> None:
        self.add_view(PanelView())

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Skip discord.py's 5 s pause before a re-IDENTIFY; the test server has no limit."""

    async def on_message(self, message: discord.Message) -> None:
        if message.author == self.user or message.webhook_id is not None:
            return  # its own echoes and webhook posts (its personas) come back as MESSAGE_CREATE
        self.seen.append(message)
        if message.content == "!edit":
            draft = await message.channel.send("draft")
            await draft.edit(content="final")
        elif message.content == "!dm":
            await message.author.send("psst")
        elif message.content == "!panel":
            await message.channel.send("panel", view=PanelView())
        elif message.content == "!file":
            await message.channel.send("see file", file=discord.File(io.BytesIO(b"abc"), "a.txt"))
        elif message.content == "!thread":
            thread = await message.create_thread(name="chat")
            await thread.send("in thread")
        elif message.content == "!history":
            earlier = [m async for m in message.channel.history(limit=10)]
            await message.channel.send(f"history {len(earlier)}")
        elif message.content == "!webhook":
            assert isinstance(message.channel, discord.TextChannel)
            webhook = await message.channel.create_webhook(name="persona")
            await webhook.send(
                "in character", username="Ada", avatar_url="http://a/b.png", wait=True
            )
        else:
            await message.reply(
                f"echo: {message.content}", allowed_mentions=discord.AllowedMentions.none()
            )


async def _ping(interaction: discord.Interaction, text: str) -> None:
    await interaction.response.send_message(f"pong {text}", ephemeral=True)


async def _slow(interaction: discord.Interaction) -> None:
    await interaction.response.defer(thinking=True)
    await interaction.edit_original_response(content="almost")
    await interaction.followup.send("done")


async def _feedback(interaction: discord.Interaction) -> None:
    await interaction.response.send_modal(FeedbackModal())


@dataclass
class World:
    server: DiscordTestServer
    guild: Guild
    channel: Channel
    alice: User


@pytest.fixture
def world(discord_server: DiscordTestServer) -> World:
    guild = discord_server.add_guild("Stage")
    channel = discord_server.add_channel(guild, "general")
    alice = discord_server.add_user("alice")
    discord_server.add_member(guild, alice)
    return World(discord_server, guild, channel, alice)


@contextlib.asynccontextmanager
async def running(client: discord.Client, server: DiscordTestServer) -> AsyncIterator[None]:
    """Run a discord.py client against the server until the block ends."""
    task = asyncio.create_task(client.start(server.bot_token))
    try:
        await asyncio.wait_for(client.wait_until_ready(), timeout=10)
        yield
    finally:
        await client.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def bot(world: World) -> AsyncIterator[EchoBot]:
    client = EchoBot()
    async with running(client, world.server):
        yield client


# -- login, READY, messages ---------------------------------------------------------------


async def test_login_and_ready_fill_the_guild_cache(world: World, bot: EchoBot) -> None:
    server = world.server
    assert bot.user is not None and bot.user.id == server.bot_user.id
    guild = bot.get_guild(world.guild.id)
    assert guild is not None and guild.name == "Stage"
    assert guild.get_channel(world.channel.id) is not None
    assert {m.name for m in guild.members} == {"Stage-owner", "Greenroom", "alice"}
    me = server.requests_to("GET", "/users/@me")
    assert me and me[0].headers["Authorization"] == f"Bot {server.bot_token}"
    assert server.requests_to("GET", "/oauth2/applications/@me")
    identify = server.gateway.received(Opcode.IDENTIFY)
    assert len(identify) == 1 and identify[0].data["intents"] == bot.intents.value
    assert server.gateway.connections[0].encoder.compress == "zstd-stream"
    assert server.unknown_requests == []


async def test_reply_is_recorded_with_allowed_mentions(world: World, bot: EchoBot) -> None:
    server = world.server
    sent = server.send_user_message(world.channel, world.alice, f"hi {world.alice.mention}")
    [reply] = await server.wait_for_messages(world.channel, 1)
    assert reply["content"] == f"echo: hi {world.alice.mention}"
    assert reply["message_reference"]["message_id"] == sent["id"]
    assert reply["mentions"] == []  # AllowedMentions.none() stops every ping
    [request] = server.requests_to("POST", MESSAGES)
    assert request.json["allowed_mentions"] == {"parse": []}
    assert bot.seen[0].content == f"hi {world.alice.mention}"
    assert bot.seen[0].mentions[0].id == world.alice.id
    # The bot saw its own reply echoed back and ignored it: one message from alice only.
    assert [m.author.id for m in bot.seen] == [world.alice.id]


async def test_edit_updates_the_stored_message(world: World, bot: EchoBot) -> None:
    server = world.server
    server.send_user_message(world.channel, world.alice, "!edit")
    await server.wait_for_request(method="PATCH", route=MESSAGES + "/{message_id}")
    [message] = server.channel_history(world.channel, include_user_messages=False)
    assert message["content"] == "final"
    assert message["edited_timestamp"] is not None


async def test_dm_through_user_send(world: World, bot: EchoBot) -> None:
    server = world.server
    server.send_user_message(world.channel, world.alice, "!dm")
    dm = server.dm_channel_for(world.alice)
    [message] = await server.wait_for_messages(dm, 1)
    assert message["content"] == "psst"
    [opened] = server.requests_to("POST", "/users/@me/channels")
    assert opened.json == {"recipient_id": world.alice.id}
    # A DM from the user reaches on_message as a DM.
    server.send_user_message(dm, world.alice, "hello in private")
    await server.wait_for_messages(dm, 2)
    assert isinstance(bot.seen[-1].channel, discord.DMChannel)


async def test_first_dm_from_a_user_is_answered(world: World, bot: EchoBot) -> None:
    server = world.server
    bob = server.add_user("bob")
    dm = server.dm_channel_for(bob)
    server.send_user_message(dm, bob, "hello bot")
    [reply] = await server.wait_for_messages(dm, 1)
    assert reply["content"] == "echo: hello bot"
    assert "guild_id" not in reply


async def test_file_upload_thread_and_history(world: World, bot: EchoBot) -> None:
    server = world.server
    server.send_user_message(world.channel, world.alice, "!file")
    [with_file] = await server.wait_for_messages(world.channel, 1)
    [upload] = server.requests_to("POST", MESSAGES)
    assert upload.files == [("files[0]", "a.txt", 3)]
    url = with_file["attachments"][0]["url"]
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert await response.read() == b"abc"
    server.send_user_message(world.channel, world.alice, "!thread")
    thread_id = (
        await server.wait_for_request(method="POST", route=MESSAGES + "/{message_id}/threads")
    ).response["id"]
    [in_thread] = await server.wait_for_messages(int(thread_id), 1)
    assert in_thread["content"] == "in thread"
    server.send_user_message(world.channel, world.alice, "!history")
    messages = await server.wait_for_messages(world.channel, 2)
    assert messages[-1]["content"] == "history 4"  # !file, its reply, !thread, !history


async def test_channel_webhook_with_persona_name(world: World, bot: EchoBot) -> None:
    server = world.server
    server.send_user_message(world.channel, world.alice, "!webhook")
    [message] = await server.wait_for_messages(world.channel, 1)
    assert message["author"]["username"] == "Ada"
    assert message["webhook_id"] == str(next(iter(server.webhooks)))
    [execute] = server.requests_to("POST", "/webhooks/{webhook_id}/{webhook_token}")
    assert execute.query["wait"] == "1"
    assert execute.json["avatar_url"] == "http://a/b.png"


# -- interactions --------------------------------------------------------------------------


async def test_slash_command_is_synced_delivered_and_answered(world: World, bot: EchoBot) -> None:
    server = world.server
    await bot.tree.sync()
    assert {c["name"] for c in server.global_commands} == {"ping", "slow", "feedback"}
    interaction = server.send_slash_command(world.channel, world.alice, "ping", {"text": "there"})
    answered = await server.wait_for_interaction_response(interaction)
    assert answered.response_type == 4
    assert answered.response_data is not None
    assert answered.response_data["content"] == "pong there"
    assert answered.response_data["flags"] == 64
    assert answered.response_request is not None
    assert answered.response_request.query["with_response"] == "1"
    # Ephemeral answers never appear in the channel's history.
    assert server.channel_history(world.channel, include_user_messages=False) == []


async def test_deferred_command_edits_original_and_follows_up(world: World, bot: EchoBot) -> None:
    server = world.server
    await bot.tree.sync()
    interaction = server.send_slash_command(world.channel, world.alice, "slow")
    answered = await server.wait_for_interaction_response(interaction)
    assert answered.response_type == 5
    messages = await server.wait_for_messages(world.channel, 2)
    assert [m["content"] for m in messages] == ["almost", "done"]
    assert messages[0]["flags"] == 0  # the loading flag is cleared by the edit
    assert server.requests_to(
        "PATCH", "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}"
    )


async def test_persistent_button_and_select(world: World, bot: EchoBot) -> None:
    server = world.server
    server.send_user_message(world.channel, world.alice, "!panel")
    [panel] = await server.wait_for_messages(world.channel, 1)
    click = server.click_button(panel, world.alice, "panel:approve")
    answered = await server.wait_for_interaction_response(click)
    assert answered.response_type == 4 and answered.ephemeral
    pick = server.select_option(panel, world.alice, "panel:pick", ["b"])
    updated = await server.wait_for_interaction_response(pick)
    assert updated.response_type == 7
    assert server.messages[int(panel["id"])]["content"] == "picked b"


async def test_modal_opens_and_submits(world: World, bot: EchoBot) -> None:
    server = world.server
    await bot.tree.sync()
    opened = await server.wait_for_interaction_response(
        server.send_slash_command(world.channel, world.alice, "feedback")
    )
    assert opened.response_type == 9
    assert opened.response_data is not None and opened.response_data["title"] == "Feedback"
    submitted = server.submit_modal(world.alice, "feedback", {"feedback:text": "the show"})
    answered = await server.wait_for_interaction_response(submitted)
    assert answered.response_data is not None
    assert answered.response_data["content"] == "thanks for the show"


async def test_second_callback_is_rejected(world: World, bot: EchoBot) -> None:
    server = world.server
    await bot.tree.sync()
    interaction = server.send_slash_command(world.channel, world.alice, "ping", {"text": "x"})
    await server.wait_for_interaction_response(interaction)
    async with aiohttp.ClientSession() as session:
        url = f"{server.api_base}/interactions/{interaction.id}/{interaction.token}/callback"
        async with session.post(url, json={"type": 4, "data": {"content": "again"}}) as response:
            assert response.status == 400
            assert (await response.json())["code"] == 40060


# -- faults --------------------------------------------------------------------------------


async def test_429_is_waited_out_and_the_message_arrives_once(world: World, bot: EchoBot) -> None:
    server = world.server
    server.inject_fault("POST", MESSAGES, status=429, retry_after=0.05)
    server.send_user_message(world.channel, world.alice, "hello")
    await server.wait_for_messages(world.channel, 1)
    assert [r.status for r in server.requests_to("POST", MESSAGES)] == [429, 200]
    assert len(server.channel_history(world.channel, include_user_messages=False)) == 1


async def test_global_429_is_waited_out(world: World, bot: EchoBot) -> None:
    server = world.server
    server.inject_fault("POST", MESSAGES, status=429, retry_after=0.05, global_=True)
    server.send_user_message(world.channel, world.alice, "hello")
    await server.wait_for_messages(world.channel, 1)
    first, second = server.requests_to("POST", MESSAGES)
    assert first.response["global"] is True and second.status == 200


async def test_500_is_retried_by_discord_py(world: World, bot: EchoBot) -> None:
    server = world.server
    server.inject_fault("POST", MESSAGES, status=500)
    server.send_user_message(world.channel, world.alice, "hello")
    await server.wait_for_messages(world.channel, 1, timeout=10)
    assert [r.status for r in server.requests_to("POST", MESSAGES)] == [500, 200]


async def test_503_is_not_retried(world: World, bot: EchoBot) -> None:
    # discord.py retries 500, 502, 504 and 524 only; 503 raises DiscordServerError.
    server = world.server
    server.inject_fault("GET", "/channels/{channel_id}", status=503)
    with pytest.raises(discord.DiscordServerError):
        await bot.fetch_channel(world.channel.id)


async def test_dropped_gateway_resumes_and_replays_missed_events(
    world: World, bot: EchoBot
) -> None:
    server = world.server
    await server.drop_gateway()
    # Sent while the bot is disconnected: buffered and replayed on RESUME.
    server.send_user_message(world.channel, world.alice, "while you were away")
    resume = await server.wait_for_gateway(Opcode.RESUME)
    assert resume.data["session_id"] in server.gateway.sessions
    await server.wait_for_messages(world.channel, 1)
    server.send_user_message(world.channel, world.alice, "after")
    replies = await server.wait_for_messages(world.channel, 2)
    assert [r["content"] for r in replies] == ["echo: while you were away", "echo: after"]
    assert len(server.gateway.received(Opcode.IDENTIFY)) == 1
    resumed_on = server.gateway.connections[-1].path
    assert resumed_on == "/resume-gateway/"


@pytest.mark.parametrize("code", [None, 4000])
async def test_drop_with_or_without_close_code_resumes(
    world: World, bot: EchoBot, code: int | None
) -> None:
    server = world.server
    mark = len(server.gateway.frames)
    await server.drop_gateway(code)
    await server.wait_for_gateway(Opcode.RESUME, start=mark)
    server.send_user_message(world.channel, world.alice, "still there?")
    await server.wait_for_messages(world.channel, 1)
    assert len(server.gateway.received(Opcode.IDENTIFY)) == 1


async def test_reconnect_opcode_leads_to_resume(world: World, bot: EchoBot) -> None:
    server = world.server
    await server.request_reconnect()
    await server.wait_for_gateway(Opcode.RESUME)
    assert len(server.gateway.received(Opcode.IDENTIFY)) == 1


async def test_heartbeats_are_acknowledged(world: World, bot: EchoBot) -> None:
    server = world.server
    await server.wait_until(
        lambda: len(server.gateway.received(Opcode.HEARTBEAT)) >= 2, what="two heartbeats"
    )
    acks = [
        f for f in server.gateway.frames if f.direction == "sent" and f.op == Opcode.HEARTBEAT_ACK
    ]
    assert len(acks) >= 2
    assert bot.latency < 5


async def test_world_changes_reach_the_client_cache(world: World, bot: EchoBot) -> None:
    server = world.server
    role = server.add_role(world.guild, "actor")
    updated = asyncio.ensure_future(bot.wait_for("member_update", timeout=5))
    server.set_member_roles(world.guild, world.alice, [role])
    _, after = await updated
    assert [r.name for r in after.roles] == ["@everyone", "actor"]
    joined = asyncio.ensure_future(bot.wait_for("guild_join", timeout=5))
    server.add_guild("Second stage")
    guild = await joined
    assert guild.name == "Second stage" and guild.me is not None


async def test_late_callback_fails_like_discord(world: World, bot: EchoBot) -> None:
    server = world.server
    await bot.tree.sync()
    server.interaction_deadline = 0.0  # every callback is now too late
    interaction = server.send_slash_command(world.channel, world.alice, "ping", {"text": "x"})
    request = await server.wait_for_request(method="POST", route=CALLBACK)
    assert request.status == 404 and request.response["code"] == 10062
    assert not server.interactions[interaction.id].responded


async def test_invalid_session_makes_the_client_identify_again(world: World, bot: EchoBot) -> None:
    server = world.server
    mark = len(server.gateway.frames)
    await server.invalidate_session(resumable=False)
    await server.wait_for_gateway(Opcode.IDENTIFY, start=mark)
    await server.wait_for_identified()
    server.send_user_message(world.channel, world.alice, "new session")
    [reply] = await server.wait_for_messages(world.channel, 1)
    assert reply["content"] == "echo: new session"


class _ZlibStreamContext:
    """discord.py's own zlib-stream decompressor, used when zstandard is not importable."""

    COMPRESSION_TYPE = "zlib-stream"

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.context = zlib.decompressobj()

    def decompress(self, data: bytes, /) -> str | None:
        self.buffer.extend(data)
        if len(data) < 4 or data[-4:] != b"\x00\x00\xff\xff":
            return None
        message = self.context.decompress(self.buffer)
        self.buffer = bytearray()
        return message.decode("utf-8")


async def test_zlib_stream_compression(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # discord.py picks the class at import time from whether zstandard imports.
    monkeypatch.setattr(discord.utils, "_ActiveDecompressionContext", _ZlibStreamContext)
    server = world.server
    client = EchoBot()
    async with running(client, server):
        assert server.gateway.connections[0].encoder.compress == "zlib-stream"
        server.send_user_message(world.channel, world.alice, "zipped")
        [reply] = await server.wait_for_messages(world.channel, 1)
        assert reply["content"] == "echo: zipped"


# -- the server on its own: limits and bad input ------------------------------------------


async def test_unknown_route_and_bad_token(world: World) -> None:
    server = world.server
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bot {server.bot_token}"}
        async with session.get(f"{server.api_base}/stickers/1", headers=headers) as response:
            assert response.status == 404
            assert await response.json() == {"message": "404: Not Found", "code": 0}
        async with session.get(
            f"{server.api_base}/users/@me", headers={"Authorization": "Bot x"}
        ) as response:
            assert response.status == 401
    assert [r.path for r in server.unknown_requests] == ["/stickers/1"]


async def test_message_limits_are_enforced(world: World) -> None:
    server = world.server
    url = f"{server.api_base}/channels/{world.channel.id}/messages"
    headers = {"Authorization": f"Bot {server.bot_token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(url, json={"content": "x" * 2001}) as response:
            body = await response.json()
            assert response.status == 400 and body["code"] == 50035
            assert "content" in body["errors"]
        async with session.post(url, json={"content": ""}) as response:
            assert (await response.json())["code"] == 50006
        async with session.get(url, params={"limit": "101"}) as response:
            assert response.status == 400


async def test_history_pages_like_discord(world: World) -> None:
    server = world.server
    sent = [server.send_user_message(world.channel, world.alice, str(i)) for i in range(5)]
    url = f"{server.api_base}/channels/{world.channel.id}/messages"
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bot {server.bot_token}"}
    ) as session:
        async with session.get(url, params={"limit": "2"}) as response:
            assert [m["content"] for m in await response.json()] == ["4", "3"]
        async with session.get(url, params={"after": sent[1]["id"], "limit": "2"}) as response:
            assert [m["content"] for m in await response.json()] == ["3", "2"]
        async with session.get(url, params={"before": sent[1]["id"]}) as response:
            assert [m["content"] for m in await response.json()] == ["0"]


async def test_test_actions_reject_bad_input(discord_server: DiscordTestServer) -> None:
    server = discord_server
    guild = server.add_guild("Stage")
    channel = server.add_channel(guild, "general")
    stranger = server.add_user("stranger")
    with pytest.raises(ValueError, match="not a member"):
        server.send_user_message(channel, stranger, "hi")
    server.add_member(guild, stranger)
    with pytest.raises(ValueError, match="2000"):
        server.send_user_message(channel, stranger, "x" * 2001)
    with pytest.raises(ValueError, match="no slash command /ping"):
        server.send_slash_command(channel, stranger, "ping")
    message = server.send_user_message(channel, stranger, "plain")
    with pytest.raises(ValueError, match="no component"):
        server.click_button(message, stranger, "nope")
    with pytest.raises(ValueError, match="never opened a modal"):
        server.submit_modal(stranger, "feedback", {"a": "b"})
    with pytest.raises(ValueError, match="unknown route template"):
        server.inject_fault("POST", "/channels/{id}/messages")
    with pytest.raises(ValueError, match="DM"):
        server.add_channel(guild, "dm", type=ChannelType.DM)


async def test_point_discord_py_at_restores_the_defaults() -> None:
    import discord.gateway
    import discord.http

    base = discord.http.Route.BASE
    gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with DiscordTestServer() as server:
        with point_discord_py_at(server):
            assert server.api_base == discord.http.Route.BASE
            assert str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == server.gateway_url
    assert base == discord.http.Route.BASE
    assert gateway == discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY


async def test_auto_sharded_client_uses_gateway_bot(world: World) -> None:
    server = world.server
    client = discord.AutoShardedClient(intents=discord.Intents.default(), guild_ready_timeout=0.05)
    async with running(client, server):
        assert client.get_guild(world.guild.id) is not None
    [gateway_bot] = server.requests_to("GET", "/gateway/bot")
    assert gateway_bot.response["url"] + "/" == server.gateway_url
    assert server.gateway.received(Opcode.IDENTIFY)[0].data["shard"] == [0, 1]


async def test_route_rate_limit_is_respected_by_discord_py(world: World, bot: EchoBot) -> None:
    # discord.py reads X-RateLimit-Remaining/Reset-After and waits instead of hitting 429.
    server = world.server
    server.set_rate_limit("POST", MESSAGES, limit=2, per=0.3)
    for text in ("one", "two", "three"):
        server.send_user_message(world.channel, world.alice, text)
    await server.wait_for_messages(world.channel, 3)
    statuses = [r.status for r in server.requests_to("POST", MESSAGES)]
    assert statuses.count(200) == 3


async def test_a_wait_that_runs_out_says_what_it_waited_for_and_what_it_saw(
    world: World, bot: EchoBot
) -> None:
    server = world.server
    server.send_user_message(world.channel, world.alice, "one")
    await server.wait_for_messages(world.channel, 1)
    with pytest.raises(TimeoutError) as raised:
        await server.wait_for_messages(world.channel, 2, timeout=0.1)
    message = str(raised.value)
    assert f"waiting for 2 message(s) in channel {world.channel.id}" in message
    assert "saw 1, the last ['echo: one']" in message and "POST /channels/" in message


async def test_a_wait_reads_state_outside_the_server_again_until_it_holds(
    world: World, bot: EchoBot
) -> None:
    outside: list[int] = []

    async def probe() -> list[int]:
        outside.append(len(outside))  # changes on every look; the server sees none of it
        return outside

    seen = await world.server.wait_until(
        probe, until=lambda values: len(values) >= 3, what="three looks"
    )
    assert seen == [0, 1, 2]
    with pytest.raises(TimeoutError, match=r"waiting for nothing; saw \[0, 1, 2, 3"):
        await world.server.wait_until(probe, until=lambda _: False, what="nothing", timeout=0.1)


async def test_a_heartbeat_asked_for_proves_every_dispatch_was_read(
    world: World, bot: EchoBot
) -> None:
    server = world.server
    for text in ("a", "b", "c"):
        server.send_user_message(world.channel, world.alice, text)
    [session] = server.gateway.sessions.values()
    sent = session.sequence
    mark = len(server.gateway.frames)
    await server.wait_for_dispatches_read()
    answers = [
        frame.data
        for frame in server.gateway.frames[mark:]
        if frame.direction == "received" and frame.op == Opcode.HEARTBEAT
    ]
    assert answers and answers[-1] >= sent  # the client's own count agrees
    assert bot.ws.sequence >= sent
