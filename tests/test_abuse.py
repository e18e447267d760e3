"""Abuse and authority: each attempt is refused, changes nothing, and is logged with who it was.

1. A non-actor replays an actor's console button (on the console message, and elsewhere).
2. An actor of one server acts in a server where they are not an actor.
3. A trainer token is used after it was revoked.
4. A user asks to see another user's memories (Discord, and the terminal).
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import func, select

from bot.engine import ConversationEngine
from bot.llm import FakeChatModel
from bot.terminal import TerminalChat
from feedback.api import create_app
from feedback.database import session_factory
from feedback.models import FeedbackEvent, Lease, MessageNode, PromptSnapshot
from feedback.privacy import PrivacyStore
from feedback.store import ConversationStore
from feedback.tokens import create_token, revoke_token
from memory import HashingEmbedder, MemoryService
from personas import PersonaRegistry
from tests.bot_world import World, running_bot
from tests.discord_server.fixtures import discord_server
from tests.factories import decisions_for
from tests.test_api import SECRET, add_corrections
from tests.test_console_discord import _ask, _candidate_id, console_world

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine

    from tests.discord_server.server import DiscordTestServer

__all__ = ["discord_server"]

ITEMS_LOG = "bot.discord_transport.console.items"
OWNER_SECRET = "the owner's safe code is 8812"
MEMBER_FACT = "Mia keeps a pet axolotl"
WEBHOOK = "/webhooks/{webhook_id}/{webhook_token}"


def _warnings(caplog: pytest.LogCaptureFixture, logger: str, *needles: str) -> list[str]:
    """WARNING records of ``logger`` whose message holds every needle."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == logger
        and record.levelno == logging.WARNING
        and all(needle in record.getMessage() for needle in needles)
    ]


async def _state(world: World, candidate_id: int) -> tuple[list[Any], tuple[Any, ...]]:
    """The feedback events and the candidate's decision columns: what a refusal must not touch."""
    async with world.bot.sessions() as session:
        events = list((await session.scalars(select(FeedbackEvent.id))).all())
        node = await session.get(MessageNode, candidate_id)
        assert node is not None
        return events, (node.state, node.decided_by, node.content)


@pytest.fixture
async def world(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> AsyncIterator[World]:
    async with console_world(discord_server, db_engine, tmp_path) as world:
        await world.bot.channels.set_mode(
            f"discord:{world.channel.id}", mode="review", guild_key=None, by="t"
        )
        yield world


# -- 1. a non-actor replays an actor's button ---------------------------------------------------


async def test_a_non_actor_replaying_an_actors_button_is_refused_and_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    server, member, alice = world.server, world.member, world.extras["alice"]
    console_message = await _ask(world, "hold this one")
    candidate = _candidate_id(console_message)
    approved = server.click_button(console_message, alice, f"gr:approve:{candidate}")
    await server.wait_for_interaction_response(approved)
    await server.wait_for_messages(world.channel, 1)
    before = await server.wait_until(  # the delivery is recorded just after the POST returns
        lambda: _state(world, candidate),
        until=lambda state: state[1][0] == "sent",
        what=f"candidate {candidate} marked sent",
    )
    assert len(before[0]) == 1 and before[1][:2] == ("sent", f"discord:{alice.id}")
    caplog.set_level(logging.WARNING)
    for custom_id in (f"gr:approve:{candidate}", f"gr:rewrite:{candidate}"):
        replay = server.click_button(console_message, member, custom_id)
        replay = await server.wait_for_interaction_response(replay)
        assert replay.ephemeral and replay.response_data["content"] == "Only actors can do this."
        assert _warnings(caplog, ITEMS_LOG, repr(custom_id), str(member.id), "not an actor")
    modal = server.submit_modal(
        member, f"gr:rewrite-modal:{candidate}", {"text": "pwned"}, channel=world.channel
    )
    modal = await server.wait_for_interaction_response(modal)
    assert modal.ephemeral and modal.response_data["content"] == "Only actors can do this."
    assert _warnings(caplog, ITEMS_LOG, f"rewrite of {candidate}", str(member.id))
    assert await _state(world, candidate) == before


async def test_a_replayed_button_on_another_message_is_refused_and_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The same custom_id on a message that is not the candidate's console: actor or not."""
    server, alice = world.server, world.extras["alice"]
    console_message = await _ask(world, "and this one")
    candidate = _candidate_id(console_message)
    before = await _state(world, candidate)
    custom_id = f"gr:approve:{candidate}"
    elsewhere = server.build_message(
        world.channel,
        server.bot_user,
        "not a console",
        components=[
            {
                "type": 1,
                "components": [{"type": 2, "style": 1, "label": "x", "custom_id": custom_id}],
            }
        ],
    )
    server.store_message(elsewhere, dispatch=False)
    caplog.set_level(logging.WARNING)
    replay = server.click_button(elsewhere, alice, custom_id)
    replay = await server.wait_for_interaction_response(replay)
    assert replay.ephemeral
    assert replay.response_data["content"] == "This control does not belong to that reply."
    assert _warnings(caplog, ITEMS_LOG, f"candidate {candidate}", str(alice.id), "not its console")
    replay = server.click_button(elsewhere, world.member, custom_id)
    replay = await server.wait_for_interaction_response(replay)
    assert replay.response_data["content"] == "Only actors can do this."
    assert _warnings(caplog, ITEMS_LOG, str(world.member.id), "not an actor")
    assert await _state(world, candidate) == before


# -- 2. an actor of another server ----------------------------------------------------------------


async def test_an_actor_of_another_server_is_refused_and_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    server = world.server
    other = server.add_guild("Elsewhere", world.owner)
    other_role = server.add_role(other, "Actors")
    mallory = server.add_user("mallory")
    server.add_member(other, mallory, roles=[other_role])
    server.add_member(world.guild, mallory)
    await world.bot.desk.guilds.set_console(
        f"discord:{other.id}", channel_id="1", actor_role_id=str(other_role.id), by="t"
    )
    console_message = await _ask(world, "who may decide this?")
    candidate = _candidate_id(console_message)
    before = await _state(world, candidate)
    caplog.set_level(logging.WARNING)
    for custom_id in (f"gr:approve:{candidate}", f"gr:regen:{candidate}"):
        refused = server.click_button(console_message, mallory, custom_id)
        refused = await server.wait_for_interaction_response(refused)
        assert refused.ephemeral and refused.response_data["content"] == "Only actors can do this."
        assert _warnings(
            caplog, ITEMS_LOG, repr(custom_id), str(mallory.id), str(world.guild.id), "not an actor"
        )
    rating = server.select_option(console_message, mallory, f"gr:rate:{candidate}", ["1"])
    rating = await server.wait_for_interaction_response(rating)
    assert rating.response_data["content"] == "Only actors can do this."
    assert await _state(world, candidate) == before


# -- 3. a revoked trainer token -------------------------------------------------------------------


async def test_a_revoked_trainer_token_is_refused_and_logged(
    db_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    sessions = session_factory(db_engine)
    await add_corrections(sessions, 2)
    token = await create_token(sessions, "job-7", "lease")
    await revoke_token(sessions, "job-7")
    app = create_app(sessions, pseudonym_secret=SECRET)
    headers = {"Authorization": f"Bearer {token}"}
    caplog.set_level(logging.WARNING)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        lease = await client.post("/v1/leases", json={"job": "j"}, headers=headers)
        stats = await client.get("/v1/stats", headers=headers)
        for response in (lease, stats):
            assert response.status_code == 401
            assert response.json()["error"]["message"] == "invalid or revoked token"
        async with sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Lease)) == 0
        assert _warnings(caplog, "feedback.tokens", "refused revoked API token 'job-7'")
        assert _warnings(caplog, "feedback.api.auth", "POST /v1/leases", "revoked")
        live = {"Authorization": f"Bearer {await create_token(sessions, 'job-8', 'lease')}"}
        granted = await client.post("/v1/leases", json={"job": "j"}, headers=live)
        assert granted.status_code == 200 and granted.json()["records"]  # there was work to take


# -- 4. another user's memories -------------------------------------------------------------------


@pytest.fixture
def memory(tmp_path: Path) -> Iterator[MemoryService]:
    service = MemoryService.open(path=tmp_path / "chroma", embedder=HashingEmbedder())
    try:
        yield service
    finally:
        service.close()


async def test_memory_show_has_no_way_to_name_another_user(
    discord_server: DiscordTestServer,
    db_engine: AsyncEngine,
    tmp_path: Path,
    memory: MemoryService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_bot(discord_server, db_engine, tmp_path, memory=memory) as world:
        server, member, owner = world.server, world.member, world.owner
        for user, text in ((owner, OWNER_SECRET), (member, MEMBER_FACT)):
            await memory.pin(
                persona="Marlowe", user_id=f"discord:{user.id}", text=text, source="user"
            )
        [definition] = [c for c in server.global_commands if c["name"] == "memory"]
        show = next(o for o in definition["options"] if o["name"] == "show")
        assert not show.get("options")  # the synced command takes no user
        with pytest.raises(ValueError, match="has no option 'user'"):
            server.send_slash_command(
                world.channel, member, "memory", {"user": owner}, subcommand="show"
            )
        start = len(server.requests)
        own = server.send_slash_command(world.channel, member, "memory", subcommand="show")
        await server.wait_for_interaction_response(own)
        listing = await server.wait_for_request(route=WEBHOOK, method="POST", start=start)
        assert MEMBER_FACT in listing.json["content"]
        assert OWNER_SECRET not in listing.json["content"]

        caplog.set_level(logging.WARNING)
        start = len(server.requests)
        crafted = server.send_interaction(
            2,
            {
                "id": definition["id"],
                "name": "memory",
                "type": 1,
                "options": [
                    {
                        "type": 1,
                        "name": "show",
                        "options": [{"type": 6, "name": "user", "value": str(owner.id)}],
                    }
                ],
                "resolved": {"users": {str(owner.id): owner.to_dict()}},
            },
            member,
            world.channel,
        )
        crafted = await server.wait_for_interaction_response(crafted)
        assert crafted.ephemeral
        assert crafted.response_data["content"].startswith("That command came with options")
        assert _warnings(
            caplog,
            "bot.discord_transport.tree",
            "/memory show",
            str(member.id),
            "unknown option 'user'",
        )
        said = [str(r.json) for r in server.requests[start:] if r.json]
        assert not any(OWNER_SECRET in text for text in said)


async def test_the_terminal_has_no_memory_command_and_its_users_are_namespaced(
    db_engine: AsyncEngine, memory: MemoryService
) -> None:
    await memory.pin(persona="Marlowe", user_id="discord:42", text=OWNER_SECRET, source="user")
    sessions = session_factory(db_engine)
    engine = ConversationEngine(
        personas=PersonaRegistry.load(),
        store=ConversationStore(sessions),
        model=FakeChatModel(),
        memory=memory,
    )
    chat = TerminalChat(
        engine,
        decisions=decisions_for(engine)[0],
        persona="Marlowe",
        user="discord:42",  # a terminal user naming themselves after a Discord user
        privacy=PrivacyStore(sessions),
    )
    assert chat.user_id == "terminal:discord:42"
    out, err = io.StringIO(), io.StringIO()
    script = ["/memory show", "/memory show --user discord:42", "what is my safe code?"]
    assert await chat.run_script(script, out, err) == 1
    assert err.getvalue().count("Unknown command /memory.") == 2
    assert OWNER_SECRET not in out.getvalue() + err.getvalue()
    async with sessions() as session:
        prompts = [str(p.messages) for p in (await session.scalars(select(PromptSnapshot))).all()]
    assert len(prompts) == 1 and OWNER_SECRET not in prompts[0]
