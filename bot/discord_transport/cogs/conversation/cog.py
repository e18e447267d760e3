"""The conversation cog: turns Discord messages into engine turns and delivers the replies.

Messages of one channel are handled one at a time, in arrival order (a lock per channel taken
before anything else awaits); different channels run concurrently.

Nothing a user sent is lost to a crash or a disconnection: after every READY the cog reads back
each channel's recent messages (``discord.catch_up_minutes``) and runs them through the same
path. The engine is idempotent on the Discord message id, so a message already answered is
skipped, a stored turn without a reply is answered, and a reply stored but maybe not sent is sent
with its nonce (Discord returns the first copy instead of posting a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.discord_transport.outages import OutageGaveUpError, retry_through_outage
from bot.discord_transport.typing import keep_typing
from bot.engine import AlreadyHandled, IncomingMessage, Refusal, TakenOver
from bot.faults import crash_point
from bot.locks import KeyedLocks

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
        self._channel_locks: KeyedLocks[int] = KeyedLocks()
        self._catching_up: asyncio.Task[object] | None = None

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
        crash_point("turn.received")
        lock = self._channel_locks[message.channel.id]
        with self.bot.tracking():
            async with lock:
                await self._answer(message)

    @commands.Cog.listener()
    async def on_raw_typing(self, payload: discord.RawTypingEvent) -> None:
        """A user started typing where a persona answers them (a DM, or a channel bound to a
        persona): warm what it remembers of them, so their message's recall is not a cold one.
        Raw, so a DM channel not yet cached counts too; failures only lose the head start."""
        me = self.bot.user
        user = payload.user
        if not self.bot.accepting or me is None or payload.user_id == me.id:
            return
        if user is not None and user.bot:
            return
        try:
            bound = await self.bot.channels.persona_for(f"discord:{payload.channel_id}")
        except Exception as error:  # a database outage: the message itself will wait for it
            _log.debug("no memory warm-up for a typing user: %s", error)
            return
        if bound is None and payload.guild_id is not None:
            return  # an unbound server channel: only a mention would be answered
        await self.bot.engine.warm_memory(
            persona_name=bound or self.bot.settings.default_persona,
            user_id=f"discord:{payload.user_id}",
        )

    async def _answer(self, message: discord.Message, *, redelivery: bool = False) -> None:
        """Handle one message under its channel's lock; never raises.

        A database outage holds this channel's queue (order kept) and retries; a retry is a
        redelivery, which the engine answers idempotently. If the outage outlasts
        ``discord.db_retry_s``, the user is asked to send the message again.
        """
        try:
            await retry_through_outage(
                lambda attempt: self._handle(message, redelivery=redelivery or attempt > 0),
                what=f"message {message.id}",
                total_s=self.bot.settings.discord.db_retry_s,
                state=self.bot.health.database,
                health=self.bot.health,
            )
        except OutageGaveUpError:  # the retry logged it as an error
            with contextlib.suppress(discord.HTTPException):
                await self.voice.notice(
                    message.channel,
                    "I couldn't answer that just now (my database is unreachable). "
                    "Please send it again in a few minutes.",
                    reference=message if message.guild is not None else None,
                )
        except Exception:
            _log.exception("failed to answer message %s", message.id)

    async def _handle(self, message: discord.Message, *, redelivery: bool = False) -> None:
        """Answer one message; ``redelivery`` when it may have been seen before a restart."""
        if isinstance(message.channel, discord.Thread) and await self.bot.desk.speak_as_persona(
            message
        ):
            return
        bound = await self.bot.channels.persona_for(channel_key(message.channel))
        if bound is None and not self._is_addressed_by_shape(message):
            return
        if not redelivery and self._cooling_down(message):
            return
        persona_name = bound or self.bot.settings.default_persona
        text = self._text_of(message)
        if not text.strip():
            if not redelivery:  # a courtesy line, not stored: never said twice
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
            redelivery=redelivery,
        )
        async with keep_typing(message.channel):
            result = await self.bot.engine.respond(incoming)
        self.bot.health.observe_reply(result)
        if isinstance(result, TakenOver):
            await self._taken_over(incoming, result.conversation_id)
            return
        if isinstance(result, AlreadyHandled):
            return
        if isinstance(result, Refusal):
            if redelivery:  # its notice may have gone out before the restart; say nothing
                return
            if result.reason != "empty":
                reference = message if message.guild is not None else None
                await self.voice.notice(message.channel, result.notice, reference=reference)
            return
        await self.bot.desk.route(message, result)

    async def _taken_over(self, incoming: IncomingMessage, conversation_id: int) -> None:
        """In takeover mode the model is silent: store the turn and show it to the actor."""
        async with self.bot.desk.thread_locks[conversation_id]:  # not mirrored twice
            stored = await self.bot.engine.record_user_turn(incoming)
            if isinstance(stored, int):
                await self.bot.desk.mirror_to_thread(
                    conversation_id, incoming.user_name, incoming.text
                )

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
        )

    # -- catch-up after READY -----------------------------------------------------------------

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        """Read back what was said while the bot was away (every READY: a restart or a new
        session; a RESUME replays missed events itself)."""
        minutes = self.bot.settings.discord.catch_up_minutes
        if minutes <= 0:
            return
        if self._catching_up is not None and not self._catching_up.done():
            return
        self._catching_up = asyncio.current_task()
        with self.bot.tracking():
            try:
                count = await self.catch_up(timedelta(minutes=minutes))
            except Exception:
                _log.exception("catch-up after READY failed")
                return
        _log.info("catch-up after READY: read back %d messages", count)

    async def catch_up(self, window: timedelta) -> int:
        """Run the messages of the last ``window`` through the normal path, channel by channel
        (in order, holding the channel's lock); returns how many messages were read back.

        A channel is read from just before its oldest turn still open (stored, reply not sent)
        or after its newest stored turn, so answered messages are not read again; a channel
        with nothing stored in the window is read whole.
        """
        since = datetime.now(UTC) - window
        window_start = discord.utils.time_snowflake(since)
        marks = await self.bot.engine.store.catch_up_marks("discord", since)
        starts = {
            int(scope.partition(":")[2]): max(window_start, int(mark))
            for scope, mark in marks.items()
            if mark is not None and scope.partition(":")[2].isdigit()
        }
        channels = await self._catch_up_channels(marks, window_start, starts)
        limit = asyncio.Semaphore(4)

        async def one(channel: discord.abc.Messageable, after: int) -> int:
            async with limit:
                return await self._catch_up_channel(channel, after)

        counts = await asyncio.gather(*(one(channel, after) for channel, after in channels))
        return sum(counts)

    async def _catch_up_channels(
        self, marks: dict[str, str | None], window_start: int, starts: dict[int, int]
    ) -> list[tuple[discord.abc.Messageable, int]]:
        """Guild text channels and threads with messages after their start, and the DMs of
        conversations active in the window (a DM from a user the bot never talked to before is
        not listed to bots by Discord), each with the id to read after."""
        found: dict[int, tuple[discord.abc.Messageable, int]] = {}
        for guild in self.bot.guilds:
            me = guild.me
            for channel in [*guild.text_channels, *guild.threads]:
                if me is None or not channel.permissions_for(me).read_message_history:
                    continue
                after = starts.get(channel.id, window_start)
                last = channel.last_message_id
                if last is not None and last > after:
                    found[channel.id] = (channel, after)
        for scope in marks:
            kind, _, ident = scope.partition(":")
            if kind != "dm" or not ident.isdigit():
                continue
            try:
                user = self.bot.get_user(int(ident)) or await self.bot.fetch_user(int(ident))
                dm = user.dm_channel or await user.create_dm()
            except discord.HTTPException:
                _log.warning("catch-up: cannot open the DM of user %s", ident)
                continue
            found[dm.id] = (dm, starts.get(int(ident), window_start))
        return list(found.values())

    async def _catch_up_channel(self, channel: discord.abc.Messageable, after: int) -> int:
        read = 0
        lock = self._channel_locks[channel.id]  # type: ignore[attr-defined]
        try:
            async with lock:
                async for message in channel.history(
                    after=discord.Object(after), oldest_first=True, limit=None
                ):
                    read += 1
                    if not self._should_ignore(message):
                        await self._answer(message, redelivery=True)
        except discord.HTTPException as error:
            _log.warning("catch-up: cannot read channel %s: %s", channel.id, error)  # type: ignore[attr-defined]
        return read
