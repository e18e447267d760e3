"""Personas look like themselves in Discord: a PNG card's picture is its webhook's avatar."""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING

from PIL import Image

from personas import CharacterCard, PersonaRegistry, load_card, write_card_png
from personas.card_io import AVATAR_PIXELS, avatar_png
from tests.bot_world import running_bot
from tests.discord_server.fixtures import discord_server

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine

    from tests.discord_server.server import DiscordTestServer

__all__ = ["discord_server"]


def test_every_bundled_persona_has_a_picture() -> None:
    for persona in PersonaRegistry.load():
        assert persona.avatar is not None, persona.name
        with Image.open(io.BytesIO(persona.avatar)) as image:
            assert image.size == (AVATAR_PIXELS, AVATAR_PIXELS)
            assert not image.text  # the card's JSON does not ride along in the avatar


def test_the_avatar_is_the_cards_picture_cropped_square(tmp_path: Path) -> None:
    picture = Image.new("RGB", (400, 600), (200, 30, 30))
    picture.paste((20, 20, 200), (0, 0, 400, 100))  # a blue band the centre crop drops
    write_card_png(CharacterCard.new("Ada"), tmp_path / "ada.png", image=picture)
    content = (tmp_path / "ada.png").read_bytes()
    with Image.open(io.BytesIO(avatar_png(content) or b"")) as avatar:
        assert avatar.size == (AVATAR_PIXELS, AVATAR_PIXELS)
        assert avatar.convert("RGB").getpixel((0, 0)) == (200, 30, 30)
    assert load_card(tmp_path / "ada.png").data.name == "Ada"
    assert avatar_png(b"\x89PNG\r\n\x1a\nnot really") is None


async def test_a_png_persona_speaks_through_a_webhook_with_its_picture(
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
        await server.wait_for_interaction_response(bind)
        server.send_user_message(world.channel, world.member, "hello there")
        [reply] = await server.wait_for_messages(world.channel, 1)
        picture = world.bot.engine.personas.get("Juniper").avatar
        assert picture is not None
        [webhook] = [
            hook for hook in server.webhooks.values() if hook.id == int(reply["webhook_id"])
        ]
        assert webhook.name == "Juniper" and webhook.avatar_image == picture
        assert reply["author"]["username"] == "Juniper"
        assert reply["author"]["avatar"] == hashlib.md5(picture).hexdigest()
        execute = server.requests_to("POST", "/webhooks/{webhook_id}/{webhook_token}")[-1]
        assert "avatar_url" not in execute.json or execute.json["avatar_url"] is None
        # the persona's webhook is made once and reused
        server.send_user_message(world.channel, world.member, "again")
        await server.wait_for_messages(world.channel, 2)
        assert len(server.requests_to("POST", "/channels/{channel_id}/webhooks")) == 1
