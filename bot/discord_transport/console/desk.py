"""The Discord console's back office: where candidates are shown, who may act, takeover threads.

Every candidate goes through :meth:`ConsoleDesk.route`: in ``auto`` mode it is sent at once and
mirrored to the console; in ``review`` mode, or when it is risky, it is held for an actor (see
:class:`~bot.decisions.DecisionService`, which owns every decision, delivery and hold). The desk
redraws console messages from the service's news, whichever console decided.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import discord

from bot.discord_transport.console.render import console_embed
from bot.discord_transport.console.view import console_view
from bot.locks import KeyedLocks
from feedback.corrections import Actor, InvalidAction

if TYPE_CHECKING:
    from bot.decisions import DecisionNews, DecisionService
    from bot.engine import Reply
    from bot.settings import ConsoleSettings
    from feedback.channels import ChannelSettingsStore, GuildSettingsStore
    from feedback.corrections import ActionOutcome
    from feedback.store import ConversationStore
    from personas import PersonaRegistry

__all__ = ["ConsoleDesk"]

_log = logging.getLogger(__name__)


class ConsoleDesk:
    """Owned by the bot (``bot.desk``); used by the conversation cog and the console items."""

    def __init__(
        self,
        *,
        client: discord.Client,
        decisions: DecisionService,
        store: ConversationStore,
        personas: PersonaRegistry,
        channels: ChannelSettingsStore,
        guilds: GuildSettingsStore,
        settings: ConsoleSettings,
    ) -> None:
        self.client = client
        self.decisions = decisions
        self.store = store
        self.personas = personas
        self.channels = channels
        self.guilds = guilds
        self.settings = settings
        self._warned_guilds: set[int] = set()
        #: Per conversation: a silent turn's store-and-mirror and a new thread's catch-up of the
        #: turns before it take turns, so each line shows in the thread exactly once.
        self.thread_locks: KeyedLocks[int] = KeyedLocks()
        decisions.subscribe(self._redraw)

    # -- where things go -------------------------------------------------------------------

    async def console_channel(self, guild_id: int | None) -> discord.TextChannel | None:
        """The console for a conversation in ``guild_id`` (DMs: the staff server's)."""
        guild_id = guild_id or self.settings.staff_guild_id
        if guild_id is None:
            return None
        setting = await self.guilds.get(f"discord:{guild_id}")
        if setting is None or setting.console_channel_id is None:
            return None
        channel = self.client.get_channel(int(setting.console_channel_id))
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
        return await self.is_actor_member(interaction.user)

    async def is_actor_member(self, member: discord.Member) -> bool:
        """Whether a guild member holds that guild's actor role."""
        setting = await self.guilds.get(f"discord:{member.guild.id}")
        if setting is None or setting.actor_role_id is None:
            return False
        return any(str(role.id) == setting.actor_role_id for role in member.roles)

    async def is_lead(self, interaction: discord.Interaction) -> bool:
        """Whether the user is a lead right now: an actor who also holds the lead role."""
        member = interaction.user
        if interaction.guild_id is None or not isinstance(member, discord.Member):
            return False
        setting = await self.guilds.get(f"discord:{member.guild.id}")
        if setting is None or setting.lead_role_id is None:
            return False
        roles = {str(role.id) for role in member.roles}
        return setting.actor_role_id in roles and setting.lead_role_id in roles

    async def is_console_channel(self, interaction: discord.Interaction) -> bool:
        """Whether the interaction happens in its server's console channel."""
        if interaction.guild_id is None:
            return False
        setting = await self.guilds.get(f"discord:{interaction.guild_id}")
        return setting is not None and setting.console_channel_id == str(interaction.channel_id)

    async def _warn_managers(self, guild_id: int, problem: str) -> None:
        """Tell the server's owner once that the console is down and replies go out directly."""
        if guild_id in self._warned_guilds:
            return
        self._warned_guilds.add(guild_id)
        _log.warning("console of guild %s unusable: %s; falling back to auto", guild_id, problem)
        guild = self.client.get_guild(guild_id)
        if guild is None or guild.owner_id is None:
            return
        with contextlib.suppress(discord.HTTPException):
            owner = guild.owner or await self.client.fetch_user(guild.owner_id)
            await owner.send(
                f"Greenroom's actor console in **{guild.name}** is unusable ({problem}). "
                "Replies now go out without review; fix it with `/console setup`.",
                allowed_mentions=discord.AllowedMentions.none(),
            )

    async def mode_for(self, channel: discord.abc.Messageable, persona: str) -> str:
        """``auto`` or ``review``: the channel's setting wins over the persona's card."""
        mode = await self.channels.mode_for(f"discord:{channel.id}")  # type: ignore[attr-defined]
        return mode or self.personas.get(persona).greenroom.mode

    # -- routing ---------------------------------------------------------------------------

    async def route(self, message: discord.Message, reply: Reply) -> None:
        """Send now or hold for an actor, and mirror the candidate to the console."""
        mode = await self.mode_for(message.channel, reply.persona)
        console = await self.console_channel(message.guild.id if message.guild else None)
        hold = console is not None and (mode == "review" or reply.risk.hold)
        await self.decisions.present(reply, hold=hold)
        if console is not None:
            await self.post(console, reply.candidate_id, mode=mode)

    async def post(self, console: discord.TextChannel, candidate_id: int, *, mode: str) -> None:
        """Post the candidate's console message and remember where it is."""
        node = await self.store.get_node(candidate_id)
        sent = await console.send(
            embed=await self.render(candidate_id, mode=mode),
            view=console_view(candidate_id, node.conversation_id if node else 0),
            allowed_mentions=discord.AllowedMentions.none(),
        )
        await self.decisions.corrections.set_console_ref(candidate_id, f"{console.id}/{sent.id}")

    async def render(self, candidate_id: int, *, mode: str | None = None) -> discord.Embed:
        """The console embed for a candidate, from what the database says now."""
        store = self.store
        node = await store.get_node(candidate_id)
        if node is None:
            return discord.Embed(title="Deleted", description="This conversation was erased.")
        conversation = await store.get_conversation(node.conversation_id)
        said = await store.recent_user_lines(node.conversation_id, node.parent_id or node.id, 3)
        snapshot = (
            await store.get_snapshot(node.prompt_snapshot_id) if node.prompt_snapshot_id else None
        )
        claim = await self.decisions.corrections.claim_holder(node.conversation_id)
        return console_embed(
            node,
            conversation=conversation,
            user_lines=said,
            memories=list(snapshot.memories) if snapshot else [],
            mode=mode,
            claim=claim,
        )

    # -- redrawing from the decision service's news -------------------------------------------

    async def _redraw(self, news: DecisionNews) -> None:
        """Keep console messages true to the database, whoever acted and from where."""
        if news.kind == "regenerated" and news.candidate_id and news.result_id:
            await self._show_candidate(news.candidate_id, news.result_id)
        elif news.kind in ("decided", "withheld") and news.candidate_id is not None:
            await self.refresh(news.candidate_id)
        elif news.kind in ("claimed", "released"):
            latest = await self.store.latest_console_candidate(news.conversation_id)
            if latest is not None:
                await self.refresh(latest)

    async def _show_candidate(self, old_id: int, candidate_id: int) -> None:
        """Turn the console message of ``old_id`` into the console of ``candidate_id``."""
        old = await self.store.get_node(old_id)
        message = self._console_message(old.console_ref if old else None)
        if old is None or message is None:
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
        channel = self.client.get_channel(int(channel_id))
        if not isinstance(channel, discord.TextChannel):
            return None
        return channel.get_partial_message(int(message_id))

    async def refresh(self, candidate_id: int) -> None:
        """Redraw a candidate's console message from the database (buttons stay)."""
        node = await self.store.get_node(candidate_id)
        message = self._console_message(node.console_ref if node else None)
        if message is None:
            return
        embed = await self.render(candidate_id)
        with contextlib.suppress(discord.HTTPException):
            await message.edit(embed=embed)

    # -- restarts --------------------------------------------------------------------------

    async def resume(self) -> None:
        """After a restart: the decision service resumes its work, and a held candidate whose
        console post was lost (the process died between the hold and the post) is posted."""
        for candidate in await self.decisions.resume():
            if candidate.console_ref is not None:
                continue
            conversation = await self.store.get_conversation(candidate.conversation_id)
            if conversation is None:
                continue
            guild_id = (
                int(conversation.guild_key.partition(":")[2]) if conversation.guild_key else None
            )
            console = await self.console_channel(guild_id)
            if console is None:
                continue
            try:
                await self.post(console, candidate.id, mode="review")
            except discord.HTTPException:
                _log.exception("could not post held candidate %s after restart", candidate.id)

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
        store = self.store
        conversation = await store.get_conversation(conversation_id)
        if conversation is None:
            return None
        if conversation.console_thread_id:
            thread = self.client.get_channel(int(conversation.console_thread_id))
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
        conversation = await self.store.conversation_for_thread(str(message.channel.id))
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

        async def acknowledge(outcome: ActionOutcome) -> None:
            if outcome.status == "refused":
                await message.reply(
                    outcome.message, allowed_mentions=discord.AllowedMentions.none()
                )

        try:
            outcome = await self.decisions.speak_as_persona(
                conversation.id,
                actor=Actor(f"discord:{message.author.id}", message.author.display_name),
                text=message.content,
                key=f"msg:{message.id}",
                acknowledge=acknowledge,
            )
        except InvalidAction as error:
            await message.reply(str(error), allowed_mentions=discord.AllowedMentions.none())
            return True
        if outcome.status == "done":
            with contextlib.suppress(discord.HTTPException):
                await message.add_reaction("✅")
        return True

    async def mirror_to_thread(self, conversation_id: int, author: str, text: str) -> None:
        """Show the user's message in the takeover thread, so the actor can answer it."""
        conversation = await self.store.get_conversation(conversation_id)
        if conversation is None or not conversation.console_thread_id:
            return
        thread = self.client.get_channel(int(conversation.console_thread_id))
        if isinstance(thread, discord.Thread):
            await self._mirror(thread, author, text)

    @staticmethod
    async def _mirror(thread: discord.Thread, author: str, text: str) -> None:
        await thread.send(
            f"**{discord.utils.escape_markdown(author)}:** {text}"[:2000],
            allowed_mentions=discord.AllowedMentions.none(),
        )
