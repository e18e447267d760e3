"""The actor console's back office: routing candidates, holding them, delivering decisions.

Every candidate goes through :meth:`ConsoleDesk.route`. In ``auto`` mode it is sent at once and
mirrored to the console; in ``review`` mode, or when it is risky, it is held for an actor up to
``console.hold_seconds`` (the user sees the typing indicator), then sent as-is or replaced by a
holding line. Actors' decisions come back through :meth:`ConsoleDesk.deliver`. After a restart,
:meth:`ConsoleDesk.resume` restarts the holds and delivers what was decided but not yet sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import discord

from bot.discord_transport.console.render import console_embed, console_view
from bot.discord_transport.typing import keep_typing
from bot.faults import crash_point
from bot.llm import GenerationError
from bot.locks import KeyedLocks
from feedback.channels import GuildSettingsStore
from feedback.corrections import Actor, CorrectionStore, InvalidAction

if TYPE_CHECKING:
    from bot.discord_transport.client import GreenroomBot
    from bot.engine import Reply
    from feedback.corrections import ActionOutcome
    from feedback.models import Conversation, MessageNode

__all__ = ["ConsoleDesk"]

_log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class ConsoleDesk:
    """Owned by the bot (``bot.desk``); used by the conversation cog and the console items."""

    def __init__(self, bot: GreenroomBot) -> None:
        self.bot = bot
        console = bot.settings.console
        self.corrections = CorrectionStore(
            bot.sessions, claim_ttl=timedelta(minutes=console.claim_minutes)
        )
        self.guilds = GuildSettingsStore(bot.sessions)
        self._decided: dict[int, asyncio.Event] = {}
        self._holds: set[asyncio.Task[None]] = set()
        self._warned_guilds: set[int] = set()
        #: Per conversation: a silent turn's store-and-mirror and a new thread's catch-up of the
        #: turns before it take turns, so each line shows in the thread exactly once.
        self.thread_locks: KeyedLocks[int] = KeyedLocks()

    # -- where things go -------------------------------------------------------------------

    async def console_channel(self, guild_id: int | None) -> discord.TextChannel | None:
        """The console for a conversation in ``guild_id`` (DMs: the staff server's)."""
        guild_id = guild_id or self.bot.settings.console.staff_guild_id
        if guild_id is None:
            return None
        setting = await self.guilds.get(f"discord:{guild_id}")
        if setting is None or setting.console_channel_id is None:
            return None
        channel = self.bot.get_channel(int(setting.console_channel_id))
        if not isinstance(channel, discord.TextChannel):
            await self._warn_managers(guild_id, "the console channel no longer exists")
            return None
        if not channel.permissions_for(channel.guild.me).send_messages:
            await self._warn_managers(guild_id, f"I cannot post in {channel.mention}")
            return None
        return channel

    async def is_actor(self, interaction: discord.Interaction) -> bool:
        """Whether the user holds this server's actor role right now (from the interaction)."""
        if interaction.guild_id is None or not isinstance(interaction.user, discord.Member):
            return False
        setting = await self.guilds.get(f"discord:{interaction.guild_id}")
        if setting is None or setting.actor_role_id is None:
            return False
        return any(str(role.id) == setting.actor_role_id for role in interaction.user.roles)

    async def is_actor_member(self, member: discord.Member) -> bool:
        """Whether a guild member holds that guild's actor role."""
        setting = await self.guilds.get(f"discord:{member.guild.id}")
        if setting is None or setting.actor_role_id is None:
            return False
        return any(str(role.id) == setting.actor_role_id for role in member.roles)

    async def _warn_managers(self, guild_id: int, problem: str) -> None:
        """Tell the server's owner once that the console is down and replies go out directly."""
        if guild_id in self._warned_guilds:
            return
        self._warned_guilds.add(guild_id)
        _log.warning("console of guild %s unusable: %s; falling back to auto", guild_id, problem)
        guild = self.bot.get_guild(guild_id)
        if guild is None or guild.owner_id is None:
            return
        with contextlib.suppress(discord.HTTPException):
            owner = guild.owner or await self.bot.fetch_user(guild.owner_id)
            await owner.send(
                f"Greenroom's actor console in **{guild.name}** is unusable ({problem}). "
                "Replies now go out without review; fix it with `/console setup`.",
                allowed_mentions=discord.AllowedMentions.none(),
            )

    async def mode_for(self, channel: discord.abc.Messageable, persona: str) -> str:
        """``auto`` or ``review``: the channel's setting wins over the persona's card."""
        mode = await self.bot.channels.mode_for(f"discord:{channel.id}")  # type: ignore[attr-defined]
        return mode or self.bot.engine.personas.get(persona).greenroom.mode

    # -- routing ---------------------------------------------------------------------------

    async def route(self, message: discord.Message, reply: Reply) -> None:
        """Send now or hold, and mirror the candidate to the console.

        The send carries the candidate's id as its nonce, so delivering the same candidate again
        after a crash (it was stored, maybe sent, but not marked sent) does not post it twice.
        """
        voice = self.bot.voice
        mode = await self.mode_for(message.channel, reply.persona)
        console = await self.console_channel(message.guild.id if message.guild else None)
        reference = message if message.guild is not None else None
        avatar = self.bot.engine.personas.get(reply.persona).greenroom.avatar_url
        if console is None or (mode == "auto" and not reply.risk.hold):
            sent = await voice.send(
                message.channel,
                reply.persona,
                reply.text,
                reference=reference,
                avatar_url=avatar,
                nonce=f"gr{reply.candidate_id}",
                after=message.id if reply.redelivered else None,
            )
            crash_point("turn.after_send")
            await self.bot.engine.mark_sent(reply, external_id=" ".join(str(m.id) for m in sent))
            crash_point("turn.after_mark_sent")
            if console is not None:
                await self.post(console, reply.candidate_id, mode=mode)
            return
        until = _now() + timedelta(seconds=self.bot.settings.console.hold_seconds)
        await self.corrections.hold(reply.candidate_id, until)
        await self.post(console, reply.candidate_id, mode=mode)
        # The hold runs beside the channel's queue: other messages are not kept waiting.
        self.start_hold(reply.candidate_id, until, message.channel)

    async def post(self, console: discord.TextChannel, candidate_id: int, *, mode: str) -> None:
        """Post the candidate's console message and remember where it is."""
        embed = await self.render(candidate_id, mode=mode)
        sent = await console.send(
            embed=embed,
            view=console_view(candidate_id, await self._conversation_id(candidate_id)),
            allowed_mentions=discord.AllowedMentions.none(),
        )
        await self.corrections.set_console_ref(candidate_id, f"{console.id}/{sent.id}")

    async def _conversation_id(self, candidate_id: int) -> int:
        node = await self.bot.engine.store.get_node(candidate_id)
        return node.conversation_id if node is not None else 0

    async def render(self, candidate_id: int, *, mode: str | None = None) -> discord.Embed:
        """The console embed for a candidate, from what the database says now."""
        store = self.bot.engine.store
        node = await store.get_node(candidate_id)
        if node is None:
            return discord.Embed(title="Deleted", description="This conversation was erased.")
        conversation = await store.get_conversation(node.conversation_id)
        said = await store.recent_user_lines(node.conversation_id, node.parent_id or node.id, 3)
        snapshot = (
            await store.get_snapshot(node.prompt_snapshot_id) if node.prompt_snapshot_id else None
        )
        claim = await self.corrections.claim_holder(node.conversation_id)
        return console_embed(
            node,
            conversation=conversation,
            user_lines=said,
            memories=list(snapshot.memories) if snapshot else [],
            mode=mode,
            claim=claim,
        )

    # -- holds ------------------------------------------------------------------------------

    async def _hold(
        self, candidate_id: int, until: datetime, channel: discord.abc.Messageable | None
    ) -> None:
        """Wait for an actor until ``until`` (typing shown), then apply the timeout setting."""
        decided = self._decided.setdefault(candidate_id, asyncio.Event())
        remaining = max(0.0, (until - _now()).total_seconds())
        try:
            if channel is not None:
                async with keep_typing(channel):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(decided.wait(), remaining)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(decided.wait(), remaining)
            if decided.is_set():
                return
            send = self.bot.settings.console.on_timeout == "send"
            outcome = await self.corrections.expire_hold(candidate_id, send=send)
            if outcome.status != "done":
                return
            if send:
                await self.deliver(outcome)
            else:
                await self._holding_line(candidate_id)
            await self.refresh(candidate_id)
        finally:
            self._decided.pop(candidate_id, None)

    def start_hold(
        self, candidate_id: int, until: datetime, channel: discord.abc.Messageable | None = None
    ) -> None:
        """Hold a candidate in the background (a new one, a regenerated one, a resumed one)."""
        self._decided.setdefault(candidate_id, asyncio.Event())
        task = asyncio.create_task(self._hold_for(candidate_id, until, channel))
        self._holds.add(task)
        task.add_done_callback(self._holds.discard)

    async def _hold_for(
        self, candidate_id: int, until: datetime, channel: discord.abc.Messageable | None
    ) -> None:
        if channel is None:
            node = await self.bot.engine.store.get_node(candidate_id)
            conversation = (
                await self.bot.engine.store.get_conversation(node.conversation_id) if node else None
            )
            channel = await self._target(conversation) if conversation else None
        try:
            await self._hold(candidate_id, until, channel)
        except Exception:
            _log.exception("hold of candidate %s failed", candidate_id)

    def decided(self, candidate_id: int) -> None:
        """An actor decided: stop the hold's typing and timer."""
        event = self._decided.get(candidate_id)
        if event is not None:
            event.set()

    async def _holding_line(self, candidate_id: int) -> None:
        node = await self.bot.engine.store.get_node(candidate_id)
        if node is None:
            return
        conversation = await self.bot.engine.store.get_conversation(node.conversation_id)
        target = await self._target(conversation) if conversation else None
        if target is None:
            return
        persona = self.bot.engine.personas.get(node.author_name)
        await self.bot.voice.send(target, persona.name, persona.holding_line(seed=node.id))

    async def resume(self) -> None:
        """After a restart: finish acknowledged regenerations, deliver what was decided but not
        sent, and restart every hold."""
        for pending in await self.corrections.pending_regenerations():
            try:
                await self.regenerate(
                    pending.candidate_id,
                    actor=Actor(pending.actor_id, pending.actor_name),
                    key=pending.key,
                )
            except Exception:
                _log.exception("could not finish regeneration %s after restart", pending.key)
        for node in await self.corrections.undelivered():
            try:
                await self.deliver_node(node, recovering=True)
            except Exception:
                _log.exception("could not deliver node %s after restart", node.id)
        held = await self.corrections.held_candidates()
        for candidate in held:
            if candidate.console_ref is None:  # held, then the process died before the post
                await self._post_after_restart(candidate)
            if candidate.id not in self._decided:
                self.start_hold(candidate.id, candidate.hold_until)
        _log.info("resumed %d held candidates", len(held))

    async def _post_after_restart(self, candidate: MessageNode) -> None:
        conversation = await self.bot.engine.store.get_conversation(candidate.conversation_id)
        if conversation is None:
            return
        guild_id = int(conversation.guild_key.partition(":")[2]) if conversation.guild_key else None
        console = await self.console_channel(guild_id)
        if console is None:
            return
        try:
            await self.post(console, candidate.id, mode="review")
        except discord.HTTPException:
            _log.exception("could not post held candidate %s after restart", candidate.id)

    # -- regeneration -----------------------------------------------------------------------

    async def regenerate(self, candidate_id: int, *, actor: Actor, key: str) -> ActionOutcome:
        """Generate a new candidate for a stored request, record it (the request ends in the
        same commit) and show it on the console message; a held candidate's hold moves to it.

        Raises :class:`~bot.llm.GenerationError` or :class:`LookupError` after dropping the
        request, so the caller can tell the actor.
        """
        store = self.bot.engine.store
        node = await store.get_node(candidate_id)
        try:
            if node is None:
                raise LookupError("this reply no longer exists")
            text, snapshot, flags = await self.bot.engine.regenerate(candidate_id)
        except (GenerationError, LookupError):
            await self.corrections.drop_pending(key)
            raise
        held = node.state == "held"
        until = _now() + timedelta(seconds=self.bot.settings.console.hold_seconds) if held else None
        outcome = await self.corrections.regenerate(
            candidate_id,
            actor=actor,
            text=text,
            snapshot=snapshot,
            flags=flags,
            hold_until=until,
            key=key,
        )
        if outcome.status == "refused":
            await self.corrections.drop_pending(key)
        if outcome.status == "done" and outcome.result_id is not None:
            if until is not None:
                self.decided(candidate_id)
                self.start_hold(outcome.result_id, until)
            await self._show_candidate(node, outcome.result_id)
        return outcome

    async def _show_candidate(self, old: MessageNode, candidate_id: int) -> None:
        """Turn the console message of ``old`` into the console of ``candidate_id``."""
        message = self._console_message(old.console_ref)
        if message is None:
            return
        with contextlib.suppress(discord.HTTPException):
            await message.edit(
                embed=await self.render(candidate_id),
                view=console_view(candidate_id, old.conversation_id),
            )

    def _console_message(self, console_ref: str | None) -> discord.PartialMessage | None:
        """The console message a ``channel id/message id`` reference names, if reachable."""
        if not console_ref:
            return None
        channel_id, _, message_id = console_ref.partition("/")
        channel = self.bot.get_channel(int(channel_id))
        if not isinstance(channel, discord.TextChannel):
            return None
        return channel.get_partial_message(int(message_id))

    # -- delivery ---------------------------------------------------------------------------

    async def _target(self, conversation: Conversation) -> discord.abc.Messageable | None:
        """The user-facing channel of a conversation."""
        kind, _, ident = conversation.scope.partition(":")
        try:
            if kind == "dm":
                user = self.bot.get_user(int(ident)) or await self.bot.fetch_user(int(ident))
                return user.dm_channel or await user.create_dm()
            channel = self.bot.get_channel(int(ident)) or await self.bot.fetch_channel(int(ident))
        except (discord.HTTPException, ValueError):
            _log.warning("conversation %s has no reachable channel", conversation.id)
            return None
        return channel if isinstance(channel, discord.abc.Messageable) else None

    async def deliver(self, outcome: ActionOutcome) -> None:
        """Send (or edit in place) the node an action decided to deliver."""
        if outcome.result_id is None:
            return
        node = await self.bot.engine.store.get_node(outcome.result_id)
        if node is None or node.state != "approved":
            return
        await self.deliver_node(node, replaces=outcome.replaces)

    async def deliver_node(
        self, node: MessageNode, *, replaces: int | None = None, recovering: bool = False
    ) -> None:
        """Deliver one ``approved`` node: edit the messages it inherited, or post new ones.

        New messages carry the node's id as their nonce; ``recovering`` (after a restart) also
        looks for a webhook copy already in the channel, since webhooks take no nonce.
        """
        conversation = await self.bot.engine.store.get_conversation(node.conversation_id)
        target = await self._target(conversation) if conversation else None
        if target is None:
            return
        persona = self.bot.engine.personas.get(node.author_name)
        avatar = persona.greenroom.avatar_url
        crash_point("deliver.before_send")
        if node.external_id:
            ids = [int(part) for part in node.external_id.split()]
            kept = await self.bot.voice.edit(
                target, persona.name, ids, node.content, avatar_url=avatar
            )
            external = " ".join(str(i) for i in kept)
        else:
            parent = (
                await self.bot.engine.store.get_node(node.parent_id) if node.parent_id else None
            )
            # The parent's last Discord message: the user's message, or the last part of the
            # persona's previous reply (a takeover line can follow it).
            after = int(parent.external_id.split()[-1]) if parent and parent.external_id else None
            reference = (
                target.get_partial_message(after)
                if after is not None
                and parent is not None
                and parent.role == "user"
                and isinstance(target, discord.TextChannel)
                else None
            )
            sent = await self.bot.voice.send(
                target,
                persona.name,
                node.content,
                reference=reference,
                avatar_url=avatar,
                nonce=f"gr{node.id}",
                after=after if recovering else None,
            )
            external = " ".join(str(m.id) for m in sent)
        crash_point("deliver.after_send")
        await self.bot.engine.delivered(node.id, external_id=external, replaces=replaces)

    async def refresh(self, candidate_id: int) -> None:
        """Redraw a candidate's console message from the database (buttons stay)."""
        node = await self.bot.engine.store.get_node(candidate_id)
        message = self._console_message(node.console_ref if node else None)
        if message is None:
            return
        embed = await self.render(candidate_id)
        with contextlib.suppress(discord.HTTPException):
            await message.edit(embed=embed)

    # -- takeover ---------------------------------------------------------------------------

    async def takeover_thread(
        self, conversation_id: int, console_message: discord.Message | None
    ) -> discord.Thread | None:
        """The console thread where actors speak as the persona (created on first takeover).

        A new thread is given the user's lines stored since the claim; that runs under
        :attr:`thread_locks`, so a line stored meanwhile is mirrored by one side only.
        """
        async with self.thread_locks[conversation_id]:
            return await self._takeover_thread(conversation_id, console_message)

    async def _takeover_thread(
        self, conversation_id: int, console_message: discord.Message | None
    ) -> discord.Thread | None:
        store = self.bot.engine.store
        conversation = await store.get_conversation(conversation_id)
        if conversation is None:
            return None
        if conversation.console_thread_id:
            thread = self.bot.get_channel(int(conversation.console_thread_id))
            if isinstance(thread, discord.Thread):
                return thread
        if console_message is None:
            return None
        try:
            thread = await console_message.create_thread(
                name=f"{conversation.persona} · conversation {conversation.id}"[:100]
            )
        except discord.HTTPException:
            _log.exception("could not open a takeover thread for %s", conversation_id)
            return None
        await store.set_console_thread(conversation_id, str(thread.id))
        await thread.send(
            f"Type here to speak as **{conversation.persona}**; each message goes to the user. "
            "Press Release on the console message to give the conversation back to the model.",
            allowed_mentions=discord.AllowedMentions.none(),
        )
        # What the user said since the claim, before this thread existed, would show nowhere.
        for author, text in await store.unanswered_user_lines(conversation_id, limit=10):
            await self._mirror(thread, author, text)
        return thread

    async def speak_as_persona(self, message: discord.Message) -> bool:
        """An actor typed in a takeover thread: send it to the user as the persona.

        Returns whether the message was a takeover message (handled, or refused with a note).
        """
        store = self.bot.engine.store
        conversation = await store.conversation_for_thread(str(message.channel.id))
        if conversation is None:
            return False
        if not isinstance(message.author, discord.Member) or not await self.is_actor_member(
            message.author
        ):
            _log.warning("refused takeover message by %s: not an actor", message.author.id)
            await message.reply(
                "Only actors can speak for the persona.",
                allowed_mentions=discord.AllowedMentions.none(),
            )
            return True
        history = await store.history(conversation.id, 1)
        try:
            outcome = await self.corrections.takeover_message(
                conversation.id,
                actor=Actor(f"discord:{message.author.id}", message.author.display_name),
                persona=conversation.persona,
                text=message.content,
                parent_id=history[-1].id if history else None,
                key=f"msg:{message.id}",
            )
        except InvalidAction as error:
            await message.reply(str(error), allowed_mentions=discord.AllowedMentions.none())
            return True
        if outcome.status == "refused":
            await message.reply(outcome.message, allowed_mentions=discord.AllowedMentions.none())
            return True
        if outcome.status == "done":
            await self.deliver(outcome)
            with contextlib.suppress(discord.HTTPException):
                await message.add_reaction("✅")
        return True

    async def mirror_to_thread(self, conversation_id: int, author: str, text: str) -> None:
        """Show the user's message in the takeover thread, so the actor can answer it."""
        conversation = await self.bot.engine.store.get_conversation(conversation_id)
        if conversation is None or not conversation.console_thread_id:
            return
        thread = self.bot.get_channel(int(conversation.console_thread_id))
        if isinstance(thread, discord.Thread):
            await self._mirror(thread, author, text)

    @staticmethod
    async def _mirror(thread: discord.Thread, author: str, text: str) -> None:
        await thread.send(
            f"**{discord.utils.escape_markdown(author)}:** {text}"[:2000],
            allowed_mentions=discord.AllowedMentions.none(),
        )

    async def close(self) -> None:
        """Stop hold timers (their candidates stay held in the database and resume later)."""
        holds = [task for task in self._holds if not task.done()]
        for task in holds:
            task.cancel()
        if holds:
            await asyncio.wait(holds, timeout=10)
