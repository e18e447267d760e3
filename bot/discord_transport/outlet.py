"""How replies reach Discord users: the decision service's outlet for ``discord`` conversations.

A conversation's scope names its channel (``channel:<id>``) or its user's DM (``dm:<user id>``).
New messages carry the node's id as their nonce (``gr<node id>``), so sending the same reply
again after a crash returns Discord's first copy; a webhook send takes no nonce, so a recovering
delivery looks for its copy in the channel first.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import discord

from bot.discord_transport.typing import keep_typing

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from bot.decisions import ConversationRef, Delivery
    from bot.discord_transport.delivery import PersonaVoice

__all__ = ["DiscordOutlet"]

_log = logging.getLogger(__name__)


class DiscordOutlet:
    """Sends, edits and holds replies in Discord as their persona."""

    def __init__(self, client: discord.Client, voice: PersonaVoice) -> None:
        self.client = client
        self.voice = voice

    async def channel_of(self, conversation: ConversationRef) -> discord.abc.Messageable | None:
        """The user-facing channel of a conversation (from the cache where possible)."""
        kind, _, ident = conversation.scope.partition(":")
        client = self.client
        try:
            if kind == "dm":
                user = client.get_user(int(ident)) or await client.fetch_user(int(ident))
                return user.dm_channel or await user.create_dm()
            channel = client.get_channel(int(ident)) or await client.fetch_channel(int(ident))
        except (discord.HTTPException, ValueError):
            _log.warning("conversation %s has no reachable channel", conversation.id)
            return None
        return channel if isinstance(channel, discord.abc.Messageable) else None

    async def deliver(self, delivery: Delivery) -> str | None:
        """Post the reply (answering the user's message in a server), or edit the messages it
        inherited; returns the ids of the messages that carry it."""
        target = await self.channel_of(delivery.conversation)
        if target is None:
            return None
        if delivery.edit_ids:
            ids = [int(part) for part in delivery.edit_ids]
            kept = await self.voice.edit(target, delivery.persona, ids, delivery.text)
            return " ".join(str(i) for i in kept)
        after = int(delivery.after_id) if delivery.after_id else None
        reference = (
            target.get_partial_message(after)
            if after is not None
            and delivery.answers_user
            and isinstance(target, discord.TextChannel | discord.Thread)
            else None
        )
        sent = await self.voice.send(
            target,
            delivery.persona,
            delivery.text,
            reference=reference,
            nonce=f"gr{delivery.node_id}",
            after=after if delivery.recovering else None,
        )
        return " ".join(str(message.id) for message in sent)

    async def say(self, conversation: ConversationRef, persona: str, text: str) -> None:
        """A line from the persona that answers nothing (the holding line)."""
        target = await self.channel_of(conversation)
        if target is not None:
            await self.voice.send(target, persona, text)

    @contextlib.asynccontextmanager
    async def waiting(self, conversation: ConversationRef) -> AsyncIterator[None]:
        """The typing indicator while a reply is held."""
        channel = await self.channel_of(conversation)
        if channel is None:
            yield
            return
        async with keep_typing(channel):
            yield
