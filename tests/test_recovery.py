"""Nothing a user said is lost to a restart: catch-up after READY and idempotent redelivery.

The bot is stopped, the world moves on (messages arrive, a turn is half-stored), and a fresh bot
on the same database connects. What was missed is answered exactly once; what was answered is
not answered again. The crash harness (``tests/test_crash.py``) does the same with SIGKILL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.engine import IncomingMessage, Reply
from feedback.models import MessageNode
from tests.bot_world import World, restarted, running_bot
from tests.discord_server.fixtures import discord_server

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine

    from tests.discord_server.server import DiscordTestServer

__all__ = ["discord_server"]

MESSAGES = "/channels/{channel_id}/messages"


async def _bind(world: World, persona: str = "Marlowe") -> None:
    await world.bot.channels.bind(
        f"discord:{world.channel.id}", persona=persona, guild_key=None, by="test"
    )


def _incoming(world: World, message: dict) -> IncomingMessage:
    return IncomingMessage(
        transport="discord",
        scope=f"channel:{world.channel.id}",
        user_id=f"discord:{world.member.id}",
        user_name="Mia",
        text=message["content"],
        persona="Marlowe",
        external_id=message["id"],
        guild_key=f"discord:{world.guild.id}",
    )


async def test_messages_sent_while_the_bot_was_down_are_answered_once_in_order(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with running_bot(discord_server, db_engine, tmp_path) as world:
        await _bind(world)
        world.server.send_user_message(world.channel, world.member, "before the crash")
        await world.server.wait_for_messages(world.channel, 1)
        dm = world.server.dm_channel_for(world.member)
        world.server.send_user_message(dm, world.member, "a DM before")
        await world.server.wait_for_messages(dm, 1)

        async def while_down() -> None:
            for text in ("first while down", "second while down"):
                world.server.send_user_message(world.channel, world.member, text)
            world.server.send_user_message(dm, world.member, "a DM while down")

        async with restarted(world, db_engine, before_start=while_down):
            replies = await world.server.wait_for_messages(world.channel, 3)
            [_, dm_reply] = await world.server.wait_for_messages(dm, 2)
            await world.settle()  # what the restart started (catch-up) is done
            replies = world.bot_replies(world.channel)
            assert [r["content"] for r in replies] == [
                "**Marlowe:** You said: Mia: before the crash",
                "**Marlowe:** You said: Mia: first while down",
                "**Marlowe:** You said: Mia: second while down",
            ]
            assert dm_reply["content"] == "**Marlowe:** You said: a DM while down"
            assert len(world.bot_replies(dm)) == 2


async def test_a_turn_stored_without_a_reply_is_answered_after_restart(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with running_bot(discord_server, db_engine, tmp_path) as world:
        await _bind(world)
        message: dict = {}

        async def half_stored() -> None:
            # The process died after storing the user turn, before generating.
            message.update(world.server.send_user_message(world.channel, world.member, "ping"))
            incoming = _incoming(world, message)
            conversation_id = await world.store.conversation_id(
                "discord", incoming.scope, "Marlowe", guild_key=incoming.guild_key
            )
            await world.store.add_user_turn(
                conversation_id=conversation_id,
                parent_id=None,
                user_id=incoming.user_id,
                user_name="Mia",
                text="ping",
                external_id=message["id"],
            )

        async with restarted(world, db_engine, before_start=half_stored):
            [reply] = await world.server.wait_for_messages(world.channel, 1)
            await world.settle()  # what the restart started (catch-up) is done
            assert reply["content"] == "**Marlowe:** You said: Mia: ping"
            assert len(world.bot_replies(world.channel)) == 1
            async with world.bot.sessions() as session:
                from sqlalchemy import select

                nodes = (await session.scalars(select(MessageNode).order_by(MessageNode.id))).all()
            assert [(n.role, n.state) for n in nodes] == [
                ("user", "answered"),
                ("assistant", "sent"),
            ]
            assert nodes[1].external_id == reply["id"]


async def test_a_stored_reply_that_already_went_out_is_not_sent_again(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with running_bot(discord_server, db_engine, tmp_path) as world:
        await _bind(world)
        stored: dict = {}

        async def sent_but_not_marked() -> None:
            # The process died after Discord accepted the reply, before marking it sent.
            message = world.server.send_user_message(world.channel, world.member, "hello")
            result = await world.bot.engine.respond(_incoming(world, message))
            assert isinstance(result, Reply)
            stored["candidate"] = result.candidate_id
            sent = world.server.build_message(
                world.channel,
                world.server.bot_user,
                "**Marlowe:** " + result.text,
                nonce=f"gr{result.candidate_id}p0",
            )
            world.server.store_message(sent, dispatch=False)
            stored["sent"] = sent

        async with restarted(world, db_engine, before_start=sent_but_not_marked):
            await world.server.wait_until(
                lambda: world.server.requests_to("POST", MESSAGES),
                what="the stored reply sent again with its nonce",
                timeout=10,
            )
            await world.settle()
            [reply] = world.bot_replies(world.channel)
            assert reply["id"] == stored["sent"]["id"]
            node = await world.store.get_node(stored["candidate"])
            assert node is not None
            assert (node.state, node.external_id) == ("sent", reply["id"])


async def test_a_stored_reply_that_never_went_out_is_sent_once(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with running_bot(discord_server, db_engine, tmp_path) as world:
        await _bind(world)
        stored: dict = {}

        async def stored_not_sent() -> None:
            message = world.server.send_user_message(world.channel, world.member, "are you there")
            result = await world.bot.engine.respond(_incoming(world, message))
            assert isinstance(result, Reply)
            stored["candidate"] = result.candidate_id

        async with restarted(world, db_engine, before_start=stored_not_sent):
            [reply] = await world.server.wait_for_messages(world.channel, 1)
            await world.settle()  # what the restart started (catch-up) is done
            assert len(world.bot_replies(world.channel)) == 1
            assert reply["content"] == "**Marlowe:** You said: Mia: are you there"
            node = await world.store.get_node(stored["candidate"])
            assert node is not None and node.state == "sent"
            # Only one candidate: the stored one was delivered, not generated again.
            answers = await world.store.answers_to(node.parent_id or 0)
            assert [a.id for a in answers] == [stored["candidate"]]


async def test_catch_up_can_be_turned_off(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with running_bot(
        discord_server, db_engine, tmp_path, discord={"catch_up_minutes": 0}
    ) as world:
        await _bind(world)

        async def while_down() -> None:
            world.server.send_user_message(world.channel, world.member, "missed")

        async with restarted(world, db_engine, before_start=while_down):
            await world.settle()  # what the restart started (catch-up) is done
            assert world.bot_replies(world.channel) == []


async def test_catch_up_reads_only_after_what_was_answered(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with running_bot(discord_server, db_engine, tmp_path) as world:
        await _bind(world)
        answered = []
        for text in ("one", "two", "three"):
            answered.append(world.server.send_user_message(world.channel, world.member, text))
            await world.server.wait_for_messages(world.channel, len(answered))
        conversation = await world.store.conversation_id(
            "discord",
            f"channel:{world.channel.id}",
            "Marlowe",
            guild_key=f"discord:{world.guild.id}",
        )
        await world.server.wait_until(  # marked sent, not only posted
            lambda: world.store.history(conversation, 10),
            until=lambda turns: len(turns) == 6,
            what="the three replies stored as sent",
        )
        missed: dict = {}

        async def while_down() -> None:
            missed.update(world.server.send_user_message(world.channel, world.member, "four"))

        async with restarted(world, db_engine, before_start=while_down):
            await world.server.wait_for_messages(world.channel, 4)
            await world.settle()  # what the restart started (catch-up) is done
            reads = [
                r
                for r in world.server.requests_to("GET", MESSAGES)
                if r.params["channel_id"] == str(world.channel.id)
            ]
            assert reads, "the channel was not read back"
            # It starts after the last answered message, not at the window's start.
            assert int(reads[-1].query["after"]) >= int(answered[-1]["id"])
            assert int(reads[-1].query["after"]) < int(missed["id"])
            assert len(world.bot_replies(world.channel)) == 4
