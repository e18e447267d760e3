"""``/review`` and gold verdicts end to end: the real discord.py client over the loopback server.

Actors pull finished turns in the console channel and give their verdict in an ephemeral form;
leads mark gold from a console message. Every refusal is checked to record nothing.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import func, select

from feedback.models import GoldItem, Review, ReviewItem
from tests.bot_world import World, restarted, running_bot
from tests.discord_server.fixtures import discord_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine

    from tests.discord_server.models import Channel, User
    from tests.discord_server.server import DiscordTestServer, InteractionRecord

__all__ = ["discord_server"]

ONLY_ACTORS = "Only actors can do this."
ANSWERS = {
    "q0": "4",  # fidelity
    "q1": "3",  # voice
    "q2": "5",  # resonance
    "q3": "4",  # memory
    "q4": "4",  # overall
    "q5": "n",  # unsafe: no
}


@contextlib.asynccontextmanager
async def review_world(
    server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path, **options: Any
) -> AsyncIterator[World]:
    """A console with actors (alice, bob), a lead (lena: actor and lead), someone with the lead
    role only (lou), and every finished turn sampled for review."""
    options.setdefault("reviews", {"share": 1.0, "per_item": 2, "gold_rate": 0.0})
    async with running_bot(server, db_engine, tmp_path, **options) as world:
        console = server.add_channel(world.guild, "console")
        actors = server.add_role(world.guild, "Actors")
        leads = server.add_role(world.guild, "Leads")
        people = {name: server.add_user(name) for name in ("alice", "bob", "lena", "lou")}
        server.add_member(world.guild, people["alice"], roles=[actors])
        server.add_member(world.guild, people["bob"], roles=[actors])
        server.add_member(world.guild, people["lena"], roles=[actors, leads])
        server.add_member(world.guild, people["lou"], roles=[leads])
        server.add_member(world.guild, world.owner)
        setup = server.send_slash_command(
            world.channel,
            world.owner,
            "console",
            {"channel": console, "role": actors, "lead": leads},
            subcommand="setup",
        )
        answer = await server.wait_for_interaction_response(setup)
        assert "Leads (gold verdicts)" in answer.response_data["content"], answer.response_data
        world.extras.update(console=console, **people)
        yield world


@pytest.fixture
async def world(
    discord_server: DiscordTestServer, db_engine: AsyncEngine, tmp_path: Path
) -> AsyncIterator[World]:
    async with review_world(discord_server, db_engine, tmp_path) as world:
        yield world


async def _ask(world: World, text: str) -> dict[str, Any]:
    """A user mentions the bot in the lounge; returns the console message about the reply."""
    server = world.server
    console: Channel = world.extras["console"]
    before = len(world.bot_replies(console))
    server.send_user_message(world.channel, world.member, f"<@{server.bot_user.id}> {text}")
    return (await server.wait_for_messages(console, before + 1, timeout=10))[before]


async def _run_review(
    world: World, user: User, channel: Channel | None = None
) -> InteractionRecord:
    run = world.server.send_slash_command(channel or world.extras["console"], user, "review")
    return await world.server.wait_for_interaction_response(run)


def _custom_ids(message: dict[str, Any]) -> list[str]:
    return [c["custom_id"] for row in message["components"] for c in row["components"]]


def _control(message: dict[str, Any], prefix: str) -> str:
    """The custom_id of the form's control starting ``gr:rv:<prefix>:`` as drawn now."""
    [custom_id] = [c for c in _custom_ids(message) if c.startswith(f"gr:rv:{prefix}:")]
    return custom_id


async def _answer(world: World, user: User, message_id: int, answers: dict[str, str]) -> None:
    """Choose ``answers`` (``q<index>``: value) on the form, paging as needed."""
    server = world.server
    for question, value in answers.items():
        message = server.messages[message_id]
        if not any(c.startswith(f"gr:rv:{question}:") for c in _custom_ids(message)):
            page = int(question[1:]) // 4  # four questions a page
            turn = server.click_button(message, user, _control(message, f"p{page}"))
            assert (await server.wait_for_interaction_response(turn)).response_type == 7
            message = server.messages[message_id]
        chose = server.select_option(message, user, _control(message, question), [value])
        chose = await server.wait_for_interaction_response(chose)
        assert chose.response_type == 7, chose.response_data


async def _verdict(world: World, user: User, message_id: int, action: str) -> InteractionRecord:
    message = world.server.messages[message_id]
    pressed = world.server.click_button(message, user, _control(message, action))
    return await world.server.wait_for_interaction_response(pressed)


async def _count(world: World, table: type) -> int:
    async with world.bot.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(table)) or 0)


async def test_actors_review_blind_in_an_ephemeral_form(world: World) -> None:
    server = world.server
    alice, bob = world.extras["alice"], world.extras["bob"]
    await _ask(world, "how's the night?")
    shown = await _run_review(world, alice)
    assert shown.ephemeral and shown.response_type == 4
    message = server.messages[shown.original_message_id]  # type: ignore[index]
    embed = message["embeds"][0]
    assert embed["title"] == "Review · Marlowe"
    assert "how's the night?" in embed["description"]  # the user's line and the reply
    assert "Marlowe's reply:" in embed["description"]
    words = str(message).lower()
    assert "gold" not in words and "sample" not in words and "flagged" not in words
    assert len(message["components"]) <= 5
    assert all(len(custom_id) <= 100 for custom_id in _custom_ids(message))
    # A verdict with questions left is refused, and nothing is stored.
    early = await _verdict(world, alice, shown.original_message_id, "p1")  # type: ignore[arg-type]
    assert early.response_type == 7
    refused = await _verdict(world, alice, shown.original_message_id, "ok")  # type: ignore[arg-type]
    assert refused.ephemeral and refused.response_data["content"] == (
        "Not recorded: still to answer: Persona fidelity, Voice and tone, Emotional resonance, "
        "Memory consistency, Overall, Unsafe or invalid?."
    )
    assert await _count(world, Review) == 0
    await _answer(world, alice, shown.original_message_id, ANSWERS)  # type: ignore[arg-type]
    done = await _verdict(world, alice, shown.original_message_id, "ok")  # type: ignore[arg-type]
    assert done.response_type == 7 and done.response_data["components"] == []
    assert done.response_data["content"].startswith("Recorded.")
    async with world.bot.sessions() as session:
        [review] = (await session.scalars(select(Review))).all()
    assert (review.actor_id, review.acceptable, review.unsafe, review.rating) == (
        f"discord:{alice.id}",
        True,
        False,
        4,
    )
    assert review.scores == {"fidelity": 4, "voice": 3, "resonance": 5, "memory": 4}
    # Alice has reviewed it: nothing more for her. Bob gets the same reply and disagrees.
    again = await _run_review(world, alice)
    assert "Nothing to review" in again.response_data["content"]
    bobs = await _run_review(world, bob)
    await _answer(world, bob, bobs.original_message_id, ANSWERS)  # type: ignore[arg-type]
    await _verdict(world, bob, bobs.original_message_id, "no")  # type: ignore[arg-type]
    async with world.bot.sessions() as session:
        [item] = (await session.scalars(select(ReviewItem))).all()
    assert (item.status, await _count(world, Review)) == ("disputed", 2)


async def test_only_actors_review_and_only_in_the_console(world: World) -> None:
    alice = world.extras["alice"]
    await _ask(world, "hello")
    for user in (world.member, world.extras["lou"]):  # a member; a lead role without actor's
        refused = await _run_review(world, user)
        assert refused.ephemeral and refused.response_data["content"] == ONLY_ACTORS
    elsewhere = await _run_review(world, alice, world.channel)
    assert "console channel" in elsewhere.response_data["content"]
    # A form that reached someone else (forged) is refused at every click.
    shown = await _run_review(world, alice)
    form = world.server.messages[shown.original_message_id]  # type: ignore[index]
    forged = world.server.select_option(form, world.member, _control(form, "q0"), ["4"])
    forged = await world.server.wait_for_interaction_response(forged)
    assert forged.response_data["content"] == ONLY_ACTORS
    # Bob holds no lease on Alice's item: pressing her form's verdict is refused by the queue.
    await _answer(world, alice, shown.original_message_id, ANSWERS)  # type: ignore[arg-type]
    form = world.server.messages[shown.original_message_id]  # type: ignore[index]
    stolen = world.server.click_button(form, world.extras["bob"], _control(form, "ok"))
    stolen = await world.server.wait_for_interaction_response(stolen)
    assert "not given to you" in stolen.response_data["content"]
    assert await _count(world, Review) == 0


async def test_leads_mark_gold_and_it_is_served_like_any_item(world: World) -> None:
    server = world.server
    console_message = await _ask(world, "tell me a secret")
    gold_id = next(c for c in _custom_ids(console_message) if c.startswith("gr:gold:"))
    for user, said in (
        (world.extras["bob"], "Only leads can mark gold verdicts."),
        (world.extras["lou"], ONLY_ACTORS),
        (world.member, ONLY_ACTORS),
    ):
        refused = server.click_button(console_message, user, gold_id)
        refused = await server.wait_for_interaction_response(refused)
        assert refused.ephemeral and refused.response_data["content"] == said
    lena = world.extras["lena"]
    opened = server.click_button(console_message, lena, gold_id)
    opened = await server.wait_for_interaction_response(opened)
    assert opened.ephemeral
    form_id = opened.original_message_id
    assert server.messages[form_id]["embeds"][0]["title"].startswith("Gold verdict · reply #")  # type: ignore[index]
    no_flag = await _verdict(world, lena, form_id, "p1")  # type: ignore[arg-type]
    assert no_flag.response_type == 7
    no_flag = await _verdict(world, lena, form_id, "ok")  # type: ignore[arg-type]
    assert no_flag.response_data["content"] == "Not recorded: still to answer: Unsafe or invalid?."
    assert await _count(world, GoldItem) == 0
    await _answer(world, lena, form_id, {"q0": "5", "q5": "n"})  # type: ignore[arg-type]
    stored = await _verdict(world, lena, form_id, "ok")  # type: ignore[arg-type]
    assert "Gold verdict stored on reply #" in stored.response_data["content"]
    async with world.bot.sessions() as session:
        [gold] = (await session.scalars(select(GoldItem))).all()
    assert (gold.scores, gold.unsafe, gold.acceptable, gold.created_by) == (
        {"fidelity": 5},
        False,
        True,
        f"discord:{lena.id}",
    )
    # Alice is served it blind: the same form as any review.
    shown = await _run_review(world, world.extras["alice"])
    message = server.messages[shown.original_message_id]  # type: ignore[index]
    assert message["embeds"][0]["title"] == "Review · Marlowe"
    assert "gold" not in str(message).lower()
    # Lena made it: it is never hers to review.
    lenas = await _run_review(world, lena)
    assert "Nothing to review" in lenas.response_data["content"]


async def test_a_form_shown_before_a_restart_still_works_after_it(
    world: World, db_engine: AsyncEngine
) -> None:
    alice = world.extras["alice"]
    await _ask(world, "still raining?")
    shown = await _run_review(world, alice)
    form_id = shown.original_message_id
    await _answer(world, alice, form_id, {"q0": "2", "q1": "2"})  # type: ignore[arg-type]
    async with restarted(world, db_engine) as again:  # no view was stored anywhere
        await _answer(again, alice, form_id, {"q2": "3", "q3": "3", "q4": "2", "q5": "y"})  # type: ignore[arg-type]
        done = await _verdict(again, alice, form_id, "no")  # type: ignore[arg-type]
        assert done.response_data["content"].startswith("Recorded."), done.response_data
        async with again.bot.sessions() as session:
            [review] = (await session.scalars(select(Review))).all()
    assert review.scores == {"fidelity": 2, "voice": 2, "resonance": 3, "memory": 3}
    assert (review.rating, review.unsafe, review.acceptable) == (2, True, False)


def test_the_form_fits_discords_limits_whatever_was_said() -> None:
    from datetime import UTC, datetime

    from bot.discord_transport.console.verdict import PER_PAGE, review_form
    from feedback.reviews import ReviewItemView
    from feedback.rubric import DEFAULT_DIMENSIONS, MAX_DIMENSIONS, Rubric

    said = "word " * 800  # 4,000 characters a message, with a 128-character name
    item = ReviewItemView(
        item_id=9_999_999_999_999_999_999,
        persona="Marlowe",
        context=tuple(("user", "n" * 128, said) for _ in range(6)),
        reply="r" * 2000,
        leased_at=datetime.now(UTC),
        expires_at=datetime.now(UTC),
    )
    extra = [
        {"name": f"extra_{n}", "label": "L" * 45, "anchors": {k: "a" * 100 for k in range(1, 6)}}
        for n in range(MAX_DIMENSIONS - len(DEFAULT_DIMENSIONS))
    ]
    rubric = Rubric.of(DEFAULT_DIMENSIONS).extended(extra)
    embed, view = review_form(item, rubric)
    data = embed.to_dict()
    assert len(data["description"]) <= 4096 and data["description"].endswith("r" * 2000)
    assert len(embed) <= 6000
    controls = [child.item for child in view.children]  # type: ignore[attr-defined]
    assert len(controls) <= PER_PAGE + 2 and {c.row for c in controls} <= set(range(5))
    assert all(len(control.custom_id) <= 100 for control in controls)
    for menu in controls[:PER_PAGE]:
        assert all(len(option.description or "") <= 100 for option in menu.options)
