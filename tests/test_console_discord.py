"""The live actor console end to end over the loopback Discord server."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import discord
import pytest
from sqlalchemy import select

from bot.discord_transport.console.scoring import ScoreMoreButton, score_modal
from bot.llm import FakeChatModel
from feedback.models import FeedbackEvent, MessageNode
from feedback.rubric import Rubric
from tests.bot_world import World, running_bot
from tests.discord_server.fixtures import discord_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine

    from tests.discord_server.models import Channel, User
    from tests.discord_server.server import DiscordTestServer

__all__ = ["discord_server"]

MESSAGES = "/channels/{channel_id}/messages"
MESSAGE = "/channels/{channel_id}/messages/{message_id}"


@contextlib.asynccontextmanager
async def console_world(
    server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path, **options: Any
) -> AsyncIterator[World]:
    """A bot with a console channel, an actor role and two actors, set up by the owner."""
    async with running_bot(server, db_engine, tmp_path, **options) as world:
        console = server.add_channel(world.guild, "console")
        role = server.add_role(world.guild, "Actors")
        alice = server.add_user("alice")
        bob = server.add_user("bob")
        server.add_member(world.guild, alice, roles=[role])
        server.add_member(world.guild, bob, roles=[role])
        server.add_member(world.guild, world.owner)
        setup = server.send_slash_command(
            world.channel,
            world.owner,
            "console",
            {"channel": console, "role": role},
            subcommand="setup",
        )
        answer = await server.wait_for_interaction_response(setup)
        assert "Console:" in answer.response_data["content"], answer.response_data
        world.extras.update(console=console, role=role, alice=alice, bob=bob)
        yield world


async def _events(world: World) -> list[FeedbackEvent]:
    async with world.bot.sessions() as session:
        return list((await session.scalars(select(FeedbackEvent).order_by(FeedbackEvent.id))).all())


async def _node(world: World, node_id: int) -> MessageNode:
    async with world.bot.sessions() as session:
        node = await session.get(MessageNode, node_id)
    assert node is not None
    return node


def _candidate_id(console_message: dict[str, Any]) -> int:
    for row in console_message["components"]:
        for component in row["components"]:
            if component.get("custom_id", "").startswith("gr:approve:"):
                return int(component["custom_id"].rsplit(":", 1)[1])
    raise AssertionError("no approve button")


async def _ask(world: World, text: str, author: User | None = None) -> dict[str, Any]:
    """A user mentions the bot in the lounge; returns the console message about it."""
    server = world.server
    console: Channel = world.extras["console"]
    before = len(world.bot_replies(console))
    server.send_user_message(
        world.channel, author or world.member, f"<@{server.bot_user.id}> {text}"
    )
    messages = await server.wait_for_messages(console, before + 1, timeout=10)
    return messages[before]


@pytest.fixture
async def world(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> AsyncIterator[World]:
    async with console_world(discord_server, db_engine, tmp_path) as world:
        yield world


async def test_setup_needs_a_manager(world: World) -> None:
    refused = world.server.send_slash_command(
        world.channel,
        world.member,
        "console",
        {"channel": world.extras["console"], "role": world.extras["role"]},
        subcommand="setup",
    )
    refused = await world.server.wait_for_interaction_response(refused)
    assert refused.ephemeral and "Only server managers" in refused.response_data["content"]


async def test_auto_mode_sends_at_once_and_mirrors_to_the_console(world: World) -> None:
    console_message = await _ask(world, "how's the night?")
    [reply] = world.bot_replies(world.channel)
    assert reply["content"].endswith("how's the night?")
    embed = console_message["embeds"][0]
    assert embed["title"].startswith("Marlowe")
    assert "how's the night?" in embed["description"]
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert fields["Mode"] == "auto" and f"<#{world.channel.id}>" in fields["Conversation"]
    assert "how's the night?" in fields["User said"]
    custom_ids = [
        c["custom_id"] for row in console_message["components"] for c in row["components"]
    ]
    assert all(len(custom_id) <= 100 for custom_id in custom_ids)
    candidate = _candidate_id(console_message)
    approve = world.server.click_button(
        console_message, world.extras["alice"], f"gr:approve:{candidate}"
    )
    answered = await world.server.wait_for_interaction_response(approve)
    assert answered.response_type == 6
    [event] = await _events(world)
    assert (event.kind, event.actor_id, event.candidate_id) == (
        "approve",
        f"discord:{world.extras['alice'].id}",
        candidate,
    )
    assert event.prompt_snapshot_id is not None and event.persona_version


async def test_rewrite_in_auto_mode_edits_the_sent_message_in_place(world: World) -> None:
    console_message = await _ask(world, "say something")
    candidate = _candidate_id(console_message)
    [reply] = world.bot_replies(world.channel)
    alice = world.extras["alice"]
    opened = world.server.click_button(console_message, alice, f"gr:rewrite:{candidate}")
    opened = await world.server.wait_for_interaction_response(opened)
    assert opened.response_type == 9
    modal_text = opened.response_data["components"][0]
    assert "say something" in str(modal_text)
    too_long = world.server.submit_modal(
        alice, f"gr:rewrite-modal:{candidate}", {"text": "x" * 2001}
    )
    too_long = await world.server.wait_for_interaction_response(too_long)
    assert too_long.ephemeral and "2,000" in too_long.response_data["content"]
    empty = world.server.submit_modal(alice, f"gr:rewrite-modal:{candidate}", {"text": "  "})
    empty = await world.server.wait_for_interaction_response(empty)
    assert empty.ephemeral and "empty" in empty.response_data["content"]
    assert await _events(world) == []
    submitted = world.server.submit_modal(
        alice, f"gr:rewrite-modal:{candidate}", {"text": "Rain again, kid. Always rain."}
    )
    await world.server.wait_for_interaction_response(submitted)
    edit = await world.server.wait_for_request(method="PATCH", route=MESSAGE)
    assert edit.params["message_id"] == reply["id"]
    assert edit.json["content"] == "**Marlowe:** Rain again, kid. Always rain."
    assert edit.json["allowed_mentions"]["parse"] == []
    [event] = await _events(world)
    assert (
        event.kind == "rewrite"
        and event.edit_distance
        and event.original_text.endswith("say something")
    )
    conversation = await world.store.conversation_id(
        "discord", f"channel:{world.channel.id}", "Marlowe"
    )
    await world.server.wait_until(  # the rewrite is marked sent just after its edit returns
        lambda: world.store.history(conversation, 10),
        until=lambda turns: turns and turns[-1].content == "Rain again, kid. Always rain.",
        what="the rewrite stored as the reply sent",
    )
    assert len(world.bot_replies(world.channel)) == 1


async def test_review_mode_holds_until_an_actor_approves(world: World) -> None:
    server = world.server
    mode = server.send_slash_command(
        world.channel, world.owner, "console", {"mode": "review"}, subcommand="mode"
    )
    await server.wait_for_interaction_response(mode)
    console_message = await _ask(world, "are you there?")
    # The console message is posted after the reply was held or sent: nothing was sent.
    assert world.bot_replies(world.channel) == []
    fields = {f["name"]: f["value"] for f in console_message["embeds"][0]["fields"]}
    assert fields["Mode"] == "review" and fields["Status"].startswith("held until")
    candidate = _candidate_id(console_message)
    approve = server.click_button(console_message, world.extras["bob"], f"gr:approve:{candidate}")
    await server.wait_for_interaction_response(approve)
    [reply] = await server.wait_for_messages(world.channel, 1)
    assert reply["content"].endswith("are you there?")
    node = await server.wait_until(  # the delivery is recorded just after the POST returns
        lambda: _node(world, candidate),
        until=lambda node: node.state == "sent",
        what=f"candidate {candidate} marked sent",
    )
    assert node.external_id == reply["id"]
    late = server.click_button(console_message, world.extras["alice"], f"gr:approve:{candidate}")
    late = await server.wait_for_interaction_response(late)
    assert (
        late.ephemeral
        and late.response_data["content"]
        == f"Already approved by discord:{world.extras['bob'].id}."
    )
    assert len(await _events(world)) == 1


@pytest.mark.parametrize(("on_timeout", "expected"), [("send", "You said"), ("drop", "")])
async def test_the_hold_runs_out(
    discord_server: DiscordTestServer,
    db_engine: AsyncEngine,
    tmp_path: Path,
    on_timeout: str,
    expected: str,
) -> None:
    async with console_world(
        discord_server, db_engine, tmp_path, console={"hold_seconds": 1, "on_timeout": on_timeout}
    ) as world:
        await world.bot.channels.set_mode(
            f"discord:{world.channel.id}", mode="review", guild_key=None, by="t"
        )
        console_message = await _ask(world, "hello?")
        [reply] = await world.server.wait_for_messages(world.channel, 1, timeout=10)
        if expected:
            assert expected in reply["content"]
        else:
            marlowe = world.bot.engine.personas.get("Marlowe")
            assert reply["content"].removeprefix("**Marlowe:** ") in {
                marlowe.holding_line(seed=i) for i in range(10)
            }
        [event] = await _events(world)
        assert event.kind == f"timeout_{on_timeout}"
        candidate = _candidate_id(console_message)
        late = world.server.click_button(
            console_message, world.extras["alice"], f"gr:approve:{candidate}"
        )
        late = await world.server.wait_for_interaction_response(late)
        assert "hold ran out" in late.response_data["content"]


async def test_risky_messages_are_held_even_in_auto_and_self_harm_is_urgent(world: World) -> None:
    console_message = await _ask(world, "I want to kill myself")
    embed = console_message["embeds"][0]
    assert embed["title"].startswith("🚨 URGENT")
    assert "self-harm" in {f["name"]: f["value"] for f in embed["fields"]}["Flags"]
    # The console message is posted after the reply was held or sent: nothing was sent.
    assert world.bot_replies(world.channel) == []
    grief = await _ask(world, "my dad passed away last night")
    assert not grief["embeds"][0]["title"].startswith("🚨")
    assert "grief" in str(grief["embeds"][0]["fields"])


async def test_only_actors_may_act_and_nothing_is_recorded(world: World) -> None:
    console_message = await _ask(world, "hi")
    candidate = _candidate_id(console_message)
    server = world.server
    for custom_id in (
        f"gr:approve:{candidate}",
        f"gr:rewrite:{candidate}",
        f"gr:regen:{candidate}",
    ):
        refused = server.click_button(console_message, world.member, custom_id)
        refused = await server.wait_for_interaction_response(refused)
        assert refused.ephemeral and refused.response_data["content"] == "Only actors can do this."
    rating = server.select_option(console_message, world.member, f"gr:rate:{candidate}", ["5"])
    rating = await server.wait_for_interaction_response(rating)
    assert rating.response_data["content"] == "Only actors can do this."
    assert await _events(world) == []


async def test_an_actor_of_another_server_is_refused(world: World) -> None:
    server = world.server
    other = server.add_guild("Elsewhere", world.owner)
    other_role = server.add_role(other, "Actors")
    mallory = server.add_user("mallory")
    server.add_member(other, mallory, roles=[other_role])
    server.add_member(world.guild, mallory)
    await world.bot.desk.guilds.set_console(
        f"discord:{other.id}", channel_id="1", actor_role_id=str(other_role.id), by="t"
    )
    console_message = await _ask(world, "hi")
    candidate = _candidate_id(console_message)
    refused = server.click_button(console_message, mallory, f"gr:approve:{candidate}")
    refused = await server.wait_for_interaction_response(refused)
    assert refused.response_data["content"] == "Only actors can do this."
    assert await _events(world) == []


async def test_double_clicks_and_redelivered_clicks_record_once(world: World) -> None:
    server = world.server
    await world.bot.channels.set_mode(
        f"discord:{world.channel.id}", mode="review", guild_key=None, by="t"
    )
    console_message = await _ask(world, "race")
    candidate = _candidate_id(console_message)
    first = server.click_button(console_message, world.extras["alice"], f"gr:approve:{candidate}")
    second = server.click_button(console_message, world.extras["bob"], f"gr:approve:{candidate}")
    server.gateway.dispatch("INTERACTION_CREATE", first.payload)  # the same click, delivered twice
    first = await server.wait_for_interaction_response(first)
    second = await server.wait_for_interaction_response(second)
    await server.wait_for_messages(world.channel, 1)
    await world.settle()  # the losing clicks may still be running; nothing marks their end
    assert len(world.bot_replies(world.channel)) == 1
    assert [e.kind for e in await _events(world)] == ["approve"]
    # Whichever click the bot handled first wins; the other actor is told it was decided.
    loser = first if first.ephemeral else second
    winner = second if loser is first else first
    assert not winner.ephemeral
    assert loser.ephemeral and "Already approved" in loser.response_data["content"]


async def test_regenerate_rate_and_tags(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    model = FakeChatModel(replies=["First take.", "Second take."])
    async with console_world(discord_server, db_engine, tmp_path, model=model) as world:
        server = world.server
        await world.bot.channels.set_mode(
            f"discord:{world.channel.id}", mode="review", guild_key=None, by="t"
        )
        console_message = await _ask(world, "go")
        candidate = _candidate_id(console_message)
        alice = world.extras["alice"]
        regen = server.click_button(console_message, alice, f"gr:regen:{candidate}")
        await server.wait_for_interaction_response(regen)
        edited = await server.wait_for_request(method="PATCH", route=MESSAGE)
        assert edited.json["embeds"][0]["description"] == "Second take."
        fresh = _candidate_id(server.messages[int(console_message["id"])])
        assert fresh != candidate
        assert (await _node(world, candidate)).state == "rejected"
        updated = server.messages[int(console_message["id"])]
        rate = server.select_option(updated, alice, f"gr:rate:{fresh}", ["4"])
        assert (await server.wait_for_interaction_response(rate)).response_data[
            "content"
        ] == "Rated 4/5."
        tags = server.select_option(updated, alice, f"gr:tags:{fresh}", ["funny", "good-timing"])
        await server.wait_for_interaction_response(tags)
        approve = server.click_button(updated, world.extras["bob"], f"gr:approve:{fresh}")
        await server.wait_for_interaction_response(approve)
        [reply] = await server.wait_for_messages(world.channel, 1)
        assert reply["content"] == "**Marlowe:** Second take."
        events = await _events(world)
        assert [e.kind for e in events] == ["regenerate", "rate", "rate", "approve"]
        assert events[1].rating == 4 and events[2].tags == ["good-timing", "funny"]


async def test_take_over_speak_as_the_persona_and_release(world: World) -> None:
    server = world.server
    alice, bob = world.extras["alice"], world.extras["bob"]
    console_message = await _ask(world, "anyone real here?")
    conversation = (await _node(world, _candidate_id(console_message))).conversation_id
    take = server.click_button(console_message, alice, f"gr:takeover:{conversation}")
    await server.wait_for_interaction_response(take)
    created = await server.wait_for_request(
        method="POST", route="/channels/{channel_id}/messages/{message_id}/threads"
    )
    thread_id = int(created.response["id"])
    followup = await server.wait_for_request(
        lambda r: (
            r.route == "/webhooks/{webhook_id}/{webhook_token}" and "You are Marlowe" in str(r.json)
        )
    )
    assert f"<#{thread_id}>" in followup.json["content"]
    shown = await server.wait_for_request(
        lambda r: (
            r.method == "PATCH"
            and r.params.get("message_id") == console_message["id"]
            and "taken over by alice" in str(r.json)
        )
    )
    assert shown.json["embeds"][0]["fields"][-1]["name"] == "Actor"
    steal = server.click_button(console_message, bob, f"gr:takeover:{conversation}")
    steal = await server.wait_for_interaction_response(steal)
    assert "alice holds this conversation" in steal.response_data["content"]
    sent_before = len(world.bot_replies(world.channel))
    server.send_user_message(world.channel, world.member, f"<@{server.bot_user.id}> hello??")
    mirrored = await server.wait_for_messages(thread_id, 2)
    assert "hello??" in mirrored[-1]["content"]
    # Mirroring is what a taken-over message gets instead of a reply: the model stayed silent.
    assert len(world.bot_replies(world.channel)) == sent_before
    thread = server.channels[thread_id]
    server.send_user_message(thread, alice, "It's me, kid. What do you need?")
    replies = await server.wait_for_messages(world.channel, sent_before + 1)
    assert len(replies) == sent_before + 1
    assert replies[-1]["content"] == "**Marlowe:** It's me, kid. What do you need?"
    server.send_user_message(thread, bob, "me too")
    refusal = await server.wait_for_request(
        lambda r: (
            r.route == MESSAGES
            and r.json
            and "holds this conversation" in str(r.json.get("content"))
        )
    )
    assert "alice" in refusal.json["content"]
    release = server.click_button(console_message, alice, f"gr:release:{conversation}")
    await server.wait_for_interaction_response(release)
    server.send_user_message(world.channel, world.member, f"<@{server.bot_user.id}> model again?")
    replies = await server.wait_for_messages(world.channel, sent_before + 2)
    assert replies[-1]["content"].endswith("model again?")
    kinds = [e.kind for e in await _events(world)]
    assert kinds == ["takeover", "takeover_message", "release"]


async def test_controls_and_holds_survive_a_restart(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with console_world(
        discord_server, db_engine, tmp_path, console={"hold_seconds": 6}
    ) as world:
        await world.bot.channels.set_mode(
            f"discord:{world.channel.id}", mode="review", guild_key=None, by="t"
        )
        first = await _ask(world, "first")
        second = await _ask(world, "second", author=world.owner)
        extras = dict(world.extras)
        lounge = world.channel
    # A new bot process: same database, same server; no views were stored anywhere.
    async with running_bot(
        discord_server, db_engine, tmp_path / "again", console={"hold_seconds": 1}
    ) as again:
        server = discord_server
        approve = server.click_button(first, extras["alice"], f"gr:approve:{_candidate_id(first)}")
        await server.wait_for_interaction_response(approve)
        replies = await server.wait_for_messages(lounge, 2, timeout=90)
        contents = sorted(r["content"] for r in replies)
        assert contents[0].endswith("first") and contents[1].endswith("second")
        kinds = sorted(e.kind for e in await _events(again))
        assert kinds in (["approve", "timeout_send"], ["approve", "approve"])
        assert _candidate_id(second)


async def test_a_forged_control_id_is_ignored(world: World) -> None:
    console_message = await _ask(world, "hi")
    server = world.server
    forged = dict(console_message)
    forged["components"] = [
        {
            "type": 1,
            "components": [
                {"type": 2, "style": 1, "label": "x", "custom_id": "gr:approve:notanumber"}
            ],
        }
    ]
    server.messages[int(console_message["id"])] = forged
    server.click_button(forged, world.extras["alice"], "gr:approve:notanumber")
    await world.settle()  # a click that matches no control starts nothing to wait for
    assert await _events(world) == []


async def test_a_missing_console_falls_back_to_auto_and_tells_the_owner(world: World) -> None:
    server = world.server
    await world.bot.desk.guilds.set_console(
        f"discord:{world.guild.id}",
        channel_id="123456789",
        actor_role_id=str(world.extras["role"].id),
        by="t",
    )
    await world.bot.channels.set_mode(
        f"discord:{world.channel.id}", mode="review", guild_key=None, by="t"
    )
    for text in ("one", "two"):
        server.send_user_message(world.channel, world.member, f"<@{server.bot_user.id}> {text}")
    replies = await server.wait_for_messages(world.channel, 2)
    assert replies[0]["content"].endswith("one")
    owner_dm = server.dm_channel_for(world.owner)
    warnings = await server.wait_for_messages(owner_dm, 1)
    assert "unusable" in warnings[0]["content"]
    # Each message looks for its console before its reply goes out: "two" looked already.
    assert len(world.bot_replies(owner_dm)) == 1


# -- rubric scores ------------------------------------------------------------------------------


def _modal_selects(opened: Any) -> dict[str, dict[str, Any]]:
    """The selects of an opened modal, by custom_id (each inside a label)."""
    labels = opened.response_data["components"]
    assert all(label["type"] == 18 for label in labels)
    return {label["component"]["custom_id"]: label for label in labels}


def _score_events(events: list[FeedbackEvent]) -> list[FeedbackEvent]:
    return [event for event in events if event.kind == "score"]


async def test_an_actor_scores_a_reply_in_a_modal_of_anchored_selects(world: World) -> None:
    server, alice = world.server, world.extras["alice"]
    console_message = await _ask(world, "rough night")
    candidate = _candidate_id(console_message)
    rows = {
        c["custom_id"]: index
        for index, row in enumerate(console_message["components"])
        for c in row["components"]
    }
    assert rows[f"gr:score:{candidate}"] == 3
    opened = server.click_button(console_message, alice, f"gr:score:{candidate}")
    opened = await server.wait_for_interaction_response(opened)
    assert opened.response_type == 9
    version = world.bot.decisions.rubric.version
    modal_id = f"gr:score-modal:{candidate}:{version}:"
    assert opened.response_data["custom_id"] == modal_id
    assert opened.response_data["title"] == "Score Marlowe's reply"
    selects = _modal_selects(opened)
    assert list(selects) == ["unsafe", "fidelity", "voice", "resonance", "memory"]
    assert selects["unsafe"]["component"]["required"] is True
    assert selects["fidelity"]["label"] == "Persona fidelity"
    fidelity = selects["fidelity"]["component"]
    assert fidelity["required"] is False and fidelity["min_values"] == 0
    anchors = world.bot.decisions.rubric["fidelity"].anchors
    assert [(o["value"], o["description"]) for o in fidelity["options"]] == [
        (str(score), text) for score, text in anchors.items()
    ]
    submitted = server.submit_modal(
        alice, modal_id, {"unsafe": ["no"], "fidelity": ["4"], "resonance": ["5"]}
    )
    answered = await server.wait_for_interaction_response(submitted)
    assert answered.ephemeral
    assert answered.response_data["content"] == ("Scored: fidelity 4/5, resonance 5/5; not unsafe.")
    [event] = _score_events(await _events(world))
    assert (event.actor_id, event.candidate_id) == (f"discord:{alice.id}", candidate)
    assert event.scores == {"fidelity": 4, "resonance": 5}
    assert (event.unsafe, event.rubric_version, event.rating) == (False, version, None)
    # The same submission delivered twice is stored once.
    server.gateway.dispatch("INTERACTION_CREATE", submitted.payload)
    await world.settle()
    assert len(_score_events(await _events(world))) == 1


async def test_scores_are_refused_naming_what_is_wrong_and_nothing_is_stored(
    world: World,
) -> None:
    server, alice = world.server, world.extras["alice"]
    console_message = await _ask(world, "hi")
    candidate = _candidate_id(console_message)
    refused = server.click_button(console_message, world.member, f"gr:score:{candidate}")
    refused = await server.wait_for_interaction_response(refused)
    assert refused.ephemeral and refused.response_data["content"] == "Only actors can do this."
    opened = server.click_button(console_message, alice, f"gr:score:{candidate}")
    await server.wait_for_interaction_response(opened)
    version = world.bot.decisions.rubric.version

    def submission(user: Any, custom_id: str, picked: dict[str, list[str]]) -> dict[str, Any]:
        # What a modified client could send: any values, for any custom_id.
        return {
            "custom_id": custom_id,
            "components": [
                {"type": 18, "id": n, "component": {"type": 3, "custom_id": k, "values": v}}
                for n, (k, v) in enumerate(picked.items())
            ],
        }

    cases = [
        (
            alice,
            f"gr:score-modal:{candidate}:{version}:",
            {"fidelity": ["4"]},
            "unsafe flag is missing",
        ),
        (
            alice,
            f"gr:score-modal:{candidate}:{version}:",
            {"unsafe": ["maybe"]},
            "unsafe flag is missing",
        ),
        (
            alice,
            f"gr:score-modal:{candidate}:{version}:",
            {"unsafe": ["no"], "fidelity": ["9"]},
            "Not scored: fidelity=9: a score is a whole number from 1 to 5.",
        ),
        (
            alice,
            f"gr:score-modal:{candidate}:{version}:",
            {"unsafe": ["no"]},
            "Not scored: score at least one dimension",
        ),
        (
            alice,
            f"gr:score-modal:{candidate}:000000000000:",
            {"unsafe": ["no"], "fidelity": ["4"]},
            "The rubric changed since this form was opened",
        ),
        (
            alice,
            f"gr:score-modal:{candidate + 999}:{version}:",
            {"unsafe": ["no"], "fidelity": ["4"]},
            "This reply no longer exists",
        ),
        (
            world.member,
            f"gr:score-modal:{candidate}:{version}:",
            {"unsafe": ["no"], "fidelity": ["4"]},
            "Only actors can do this.",
        ),
    ]
    for user, custom_id, picked, message in cases:
        sent = server.send_interaction(
            5, submission(user, custom_id, picked), user, world.extras["console"]
        )
        answer = await server.wait_for_interaction_response(sent)
        assert answer.ephemeral and message in answer.response_data["content"], (picked, answer)
    assert _score_events(await _events(world)) == []


async def test_a_rubric_too_big_for_one_modal_continues_and_stores_once_at_the_end(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    anchors = {1: "awful", 2: "poor", 3: "fine", 4: "good", 5: "superb"}
    dimensions = [
        {"name": f"d{n}", "label": f"Dimension {n}", "anchors": anchors} for n in range(6)
    ]
    async with console_world(
        discord_server, db_engine, tmp_path, rubric={"dimensions": dimensions}
    ) as world:
        server, alice = world.server, world.extras["alice"]
        console_message = await _ask(world, "long rubric")
        candidate = _candidate_id(console_message)
        version = world.bot.decisions.rubric.version
        opened = server.click_button(console_message, alice, f"gr:score:{candidate}")
        opened = await server.wait_for_interaction_response(opened)
        assert opened.response_data["title"] == "Score Marlowe's reply (1/2)"
        assert list(_modal_selects(opened)) == ["unsafe", "d0", "d1", "d2", "d3"]
        first = server.submit_modal(
            alice,
            f"gr:score-modal:{candidate}:{version}:",
            {"unsafe": ["yes"], "d0": ["2"], "d2": ["5"]},
        )
        first = await server.wait_for_interaction_response(first)
        assert first.ephemeral and "4 of 6 dimensions seen" in first.response_data["content"]
        assert _score_events(await _events(world)) == []  # nothing half-stored
        more_id = f"gr:score-more:{candidate}:{version}:y2-5-"
        [row] = first.response_data["components"]
        assert row["components"][0]["custom_id"] == more_id
        assert row["components"][0]["label"] == "Score the other 2 dimensions"
        answer = server.messages[first.original_message_id]
        refused = server.click_button(answer, world.member, more_id)
        refused = await server.wait_for_interaction_response(refused)
        assert refused.response_data["content"] == "Only actors can do this."
        second = server.click_button(answer, alice, more_id)
        second = await server.wait_for_interaction_response(second)
        assert second.response_data["title"] == "Score Marlowe's reply (2/2)"
        assert list(_modal_selects(second)) == ["d4", "d5"]
        last = server.submit_modal(
            alice, f"gr:score-modal:{candidate}:{version}:y2-5-", {"d5": ["1"]}
        )
        last = await server.wait_for_interaction_response(last)
        assert last.response_data["content"] == "Scored: d0 2/5, d2 5/5, d5 1/5; marked unsafe."
        [event] = _score_events(await _events(world))
        assert event.scores == {"d0": 2, "d2": 5, "d5": 1}
        assert event.unsafe is True and event.rubric_version == version


def test_every_score_modal_fits_discords_limits() -> None:
    """The largest rubric splits into modals of at most 5 components, and every custom_id
    fits in 100 characters; discord.py itself refuses a sixth component."""
    anchors = {n: "x" * 100 for n in range(1, 6)}
    rubric = Rubric.of(
        [{"name": f"{'d' * 22}{n:02d}", "label": "L" * 45, "anchors": anchors} for n in range(16)]
    )
    chosen, modals = "", []
    while True:
        modal = score_modal(10**18, "P" * 64, rubric, chosen)
        modals.append(modal)
        assert len(modal.children) <= 5 and len(modal.title) <= 45
        assert len(modal.custom_id) <= 100
        picked = [c for c in modal.children if c.component.custom_id != "unsafe"]  # type: ignore[attr-defined]
        chosen = (chosen or "n") + "3" * len(picked)
        if len(chosen) - 1 == len(rubric.dimensions):
            break
    assert [len(m.children) for m in modals] == [5, 5, 5, 2]
    assert len(ScoreMoreButton(10**18, rubric.version, chosen, "x").item.custom_id) <= 100
    with pytest.raises(ValueError, match="maximum number of children"):
        modals[0].add_item(discord.ui.TextInput(label="sixth"))
