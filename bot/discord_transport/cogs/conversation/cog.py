"""The conversation cog: turns Discord messages into engine turns and delivers the replies.

Messages of one channel are handled one at a time, in arrival order (a lock per channel taken
before anything else awaits); different channels run concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.discord_transport.typing import keep_typing
from bot.engine import IncomingMessage, Refusal

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot

__all__ = ["Conversation", "channel_key", "conversation_scope"]

_log = logging.getLogger(__name__)

_ANSWERED_TYPES = (discord.MessageType.default, discord.MessageType.reply)


def channel_key(channel: discord.abc.Messageable) -> str:
    """The key channel settings are stored under: ``discord:<channel id>``."""
    return f"discord:{channel.id}"  # type: ignore[attr-defined]


def conversation_scope(message: discord.Message) -> str:
    """A DM is one conversation per user; a guild channel one per channel (and persona)."""
    if message.guild is None:
        return f"dm:{message.author.id}"
    return f"channel:{message.channel.id}"


class Conversation(commands.Cog):
    """Listens to messages and answers the ones addressed to a persona."""

    def __init__(self, bot: GreenroomBot) -> None:
        self.bot = bot
        self.voice = bot.voice
        limits = bot.settings.discord
        self.cooldown = commands.CooldownMapping.from_cooldown(
            limits.cooldown_messages, limits.cooldown_seconds, commands.BucketType.user
        )
        self._noticed_until: dict[int, float] = {}
        self._channel_locks: weakref.WeakValueDictionary[int, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def _is_addressed_by_shape(self, message: discord.Message) -> bool:
        """A DM, a mention of the bot, or a reply to one of its messages."""
        me = self.bot.user
        if message.guild is None:
            return True
        if me is not None and me in message.mentions:
            return True
        reference = message.reference
        resolved = reference.resolved if reference is not None else None
        if isinstance(resolved, discord.Message):
            return resolved.author == me or (
                resolved.webhook_id is not None and resolved.webhook_id in self.voice.webhook_ids
            )
        return False

    def _should_ignore(self, message: discord.Message) -> bool:
        return (
            not self.bot.accepting
            or message.author.bot
            or message.author == self.bot.user
            or message.webhook_id is not None
            or message.type not in _ANSWERED_TYPES
        )

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if self._should_ignore(message):
            return
        lock = self._channel_locks.get(message.channel.id)
        if lock is None:
            lock = self._channel_locks[message.channel.id] = asyncio.Lock()
        with self.bot.tracking():
            try:
                async with lock:
                    await self._handle(message)
            except Exception:
                _log.exception("failed to answer message %s", message.id)

    async def _handle(self, message: discord.Message) -> None:
        if isinstance(message.channel, discord.Thread) and await self.bot.desk.speak_as_persona(
            message
        ):
            return
        bound = await self.bot.channels.persona_for(channel_key(message.channel))
        if bound is None and not self._is_addressed_by_shape(message):
            return
        if self._cooling_down(message):
            return
        persona_name = bound or self.bot.settings.default_persona
        text = self._text_of(message)
        if not text.strip():
            await self._non_text(message, persona_name)
            return
        incoming = IncomingMessage(
            transport="discord",
            scope=conversation_scope(message),
            user_id=f"discord:{message.author.id}",
            user_name=message.author.display_name,
            text=text,
            persona=persona_name,
            external_id=str(message.id),
            guild_key=f"discord:{message.guild.id}" if message.guild else None,
        )
        if await self._taken_over(incoming):
            return
        async with keep_typing(message.channel):
            result = await self.bot.engine.respond(incoming)
        if isinstance(result, Refusal):
            if result.reason != "empty":
                reference = message if message.guild is not None else None
                await self.voice.notice(message.channel, result.notice, reference=reference)
            return
        await self.bot.desk.route(message, result)

    async def _taken_over(self, incoming: IncomingMessage) -> bool:
        """In takeover mode the model is silent: store the turn and show it to the actor."""
        store = self.bot.engine.store
        persona = self.bot.engine.personas.get(incoming.persona).name
        conversation_id = await store.conversation_id(incoming.transport, incoming.scope, persona)
        claim = await self.bot.desk.corrections.claim_holder(conversation_id)
        if claim is None or not claim.takeover:
            return False
        stored = await self.bot.engine.record_user_turn(incoming)
        if isinstance(stored, int):
            await self.bot.desk.mirror_to_thread(conversation_id, incoming.user_name, incoming.text)
        return True

    def _text_of(self, message: discord.Message) -> str:
        """The message as the persona should read it: mentions as names, its own removed."""
        text = message.clean_content
        me = self.bot.user
        if me is not None and message.guild is not None:
            member = message.guild.me
            for name in {me.name, me.display_name, member.display_name if member else None}:
                if name:
                    text = re.sub(rf"@{re.escape(name)}\b", "", text)
        return text.strip()

    def _cooling_down(self, message: discord.Message) -> bool:
        """True when the user is over the limit; the first time in a window, say so once."""
        bucket = self.cooldown.get_bucket(message)
        if bucket is None:
            return False
        retry_after = bucket.update_rate_limit()
        if not retry_after:
            return False
        now = time.monotonic()
        if self._noticed_until.get(message.author.id, 0.0) < now:
            self._noticed_until[message.author.id] = now + retry_after
            task = asyncio.create_task(
                self.voice.notice(
                    message.channel,
                    f"You're sending messages faster than I can answer; I'll pick up again in "
                    f"{retry_after:.0f} seconds.",
                    reference=message if message.guild is not None else None,
                )
            )
            self.bot.in_flight.add(task)
            task.add_done_callback(self.bot.in_flight.discard)
        return True

    async def _non_text(self, message: discord.Message, persona_name: str) -> None:
        if not (message.attachments or message.stickers):
            return
        if self.bot.settings.discord.non_text == "ignore":
            return
        persona = self.bot.engine.personas.get(persona_name)
        await self.voice.send(
            message.channel,
            persona.name,
            persona.non_text_line(),
            reference=message if message.guild is not None else None,
            avatar_url=persona.greenroom.avatar_url,
        )
