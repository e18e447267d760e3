"""The console's persistent controls, as discord.py ``DynamicItem`` templates.

The id each control acts on lives in its ``custom_id`` (``gr:<action>:<id>``, under Discord's
100-character limit), so the controls keep working after a restart without any stored view.
Every click checks, at that moment, that the clicker holds the server's actor role and that the
control sits on the console message of that candidate; anyone else is told so and nothing is
recorded. Each action goes to the decision service (:mod:`bot.decisions`), which commits it
before the interaction is acknowledged. The Score form lives in :mod:`.scoring`, and
:func:`~bot.discord_transport.console.view.console_view` puts all of them on a console message.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord

from bot.discord_transport.outages import (
    DATABASE_UNAVAILABLE,
    is_database_outage,
)
from bot.faults import crash_point
from bot.llm import GenerationError
from feedback.corrections import MAX_REWRITE_CHARS, TAGS, Actor, InvalidAction

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from bot.decisions import DecisionService
    from bot.discord_transport.client import GreenroomBot
    from bot.discord_transport.console.desk import ConsoleDesk
    from feedback.corrections import ActionOutcome

__all__ = [
    "ONLY_ACTORS",
    "REWRITE_MODAL_ID",
    "ApproveButton",
    "RatingSelect",
    "RegenerateButton",
    "ReleaseButton",
    "RewriteButton",
    "TagsSelect",
    "TakeOverButton",
    "actor_of",
    "handle_rewrite_submit",
    "tell_when_database_down",
]

_log = logging.getLogger(__name__)

ONLY_ACTORS = "Only actors can do this."
#: ``gr:rewrite-modal:<candidate id>``: the rewrite modal's custom_id.
REWRITE_MODAL_ID = re.compile(r"gr:rewrite-modal:(?P<id>[0-9]{1,19})")


def actor_of(interaction: discord.Interaction) -> Actor:
    """The clicker as an :class:`Actor` (``discord:<id>``)."""
    return Actor(f"discord:{interaction.user.id}", interaction.user.display_name)


def _desk(interaction: discord.Interaction) -> ConsoleDesk:
    bot: GreenroomBot = interaction.client  # type: ignore[assignment]
    return bot.desk


def _decisions(interaction: discord.Interaction) -> DecisionService:
    bot: GreenroomBot = interaction.client  # type: ignore[assignment]
    return bot.decisions


async def _ephemeral(interaction: discord.Interaction, text: str) -> None:
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as error:  # e.g. the same interaction delivered twice
        _log.info("could not answer interaction %s: %s", interaction.id, error)


async def _ack(interaction: discord.Interaction) -> None:
    """Acknowledge a click (after its action is committed); a second delivery is ignored."""
    try:
        await interaction.response.defer()
    except discord.HTTPException as error:
        _log.info("interaction %s already acknowledged: %s", interaction.id, error)


def _acknowledger(interaction: discord.Interaction) -> Any:
    """The decision service's ``acknowledge`` for a click: a refusal is said to the clicker
    alone; anything else is acknowledged silently (the console message is redrawn)."""

    async def acknowledge(outcome: ActionOutcome) -> None:
        crash_point("action.after_commit")
        if outcome.status == "refused":
            await _ephemeral(interaction, outcome.message)
            return
        await _ack(interaction)
        crash_point("action.after_ack")

    return acknowledge


async def _check_actor(interaction: discord.Interaction, candidate_id: int | None) -> bool:
    """The role check at click time, and that the control sits on this candidate's message."""
    desk = _desk(interaction)
    if not await desk.is_actor(interaction):
        _log.warning(
            "refused console action %r by %s in guild %s: not an actor",
            interaction.data.get("custom_id") if interaction.data else None,
            interaction.user.id,
            interaction.guild_id,
        )
        await _ephemeral(interaction, ONLY_ACTORS)
        return False
    if candidate_id is not None:
        node = await desk.store.get_node(candidate_id)
        where = f"{interaction.channel_id}/{interaction.message.id}" if interaction.message else ""
        if node is None or node.role != "assistant":  # erased, or a forged id of a user turn
            await _ephemeral(
                interaction, "This reply no longer exists (the conversation was erased)."
            )
            return False
        # Until the console message's id is stored (a click can race the commit), the bot's own
        # message carrying this custom_id is that candidate's console.
        ours = (
            node.console_ref is None
            and interaction.message is not None
            and interaction.message.author.id == interaction.client.user.id  # type: ignore[union-attr]
        )
        if node.console_ref != where and not ours:
            _log.warning(
                "refused console action on candidate %s from message %s by %s: not its console",
                candidate_id,
                where,
                interaction.user.id,
            )
            await _ephemeral(interaction, "This control does not belong to that reply.")
            return False
    return True


class _Tracked:
    """Runs the control's action as work in flight, so shutdown waits for it or cancels it."""

    async def act(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: GreenroomBot = interaction.client  # type: ignore[assignment]
        with bot.tracking():
            await tell_when_database_down(interaction, self.act(interaction))


async def tell_when_database_down(
    interaction: discord.Interaction, action: Coroutine[Any, Any, None]
) -> None:
    """Run an actor's action; if the database is unreachable, say so to the actor (ephemeral)
    instead of failing silently. Nothing is retried: the actor clicks again."""
    try:
        await action
    except Exception as error:
        if not is_database_outage(error):
            raise
        _log.warning(
            "console action %r by %s failed: database unreachable (%s)",
            (interaction.data or {}).get("custom_id"),
            interaction.user.id,
            type(error).__name__,
        )
        await _ephemeral(interaction, DATABASE_UNAVAILABLE)


class _IdButton(
    _Tracked,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"gr:[a-z]+:(?P<id>[0-9]{1,19})",
):
    """A button that acts on one id, ``gr:<action>:<id>``."""

    action = ""
    label = ""
    style = discord.ButtonStyle.secondary
    #: The row of the console message it sits on (a row holds 5 buttons).
    button_row = 0

    def __init__(self, target_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=self.label,
                style=self.style,
                custom_id=f"gr:{self.action}:{target_id}",
                row=self.button_row,
            )
        )
        self.target_id = target_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> _IdButton:
        return cls(int(match["id"]))


class _CandidateButton(_IdButton, template=r"gr:[a-z]+:(?P<id>[0-9]{1,19})"):
    """A button that acts on one candidate reply."""

    @property
    def candidate_id(self) -> int:
        return self.target_id


class ApproveButton(_CandidateButton, template=r"gr:approve:(?P<id>[0-9]{1,19})"):
    action, label, style = "approve", "Approve", discord.ButtonStyle.success

    async def act(self, interaction: discord.Interaction) -> None:
        if not await _check_actor(interaction, self.candidate_id):
            return
        crash_point("action.before_commit")
        await _decisions(interaction).approve(
            self.candidate_id,
            actor=actor_of(interaction),
            key=str(interaction.id),
            acknowledge=_acknowledger(interaction),
        )


class RewriteButton(_CandidateButton, template=r"gr:rewrite:(?P<id>[0-9]{1,19})"):
    action, label, style = "rewrite", "Rewrite", discord.ButtonStyle.primary

    async def act(self, interaction: discord.Interaction) -> None:
        if not await _check_actor(interaction, self.candidate_id):
            return
        node = await _desk(interaction).store.get_node(self.candidate_id)
        if node is None:
            return
        if node.decided_by is not None:
            await _ephemeral(interaction, await _decisions(interaction).describe_decision(node.id))
            return
        modal = discord.ui.Modal(
            title=f"Rewrite {node.author_name}'s reply"[:45],
            custom_id=f"gr:rewrite-modal:{node.id}",
            timeout=900,  # the interaction token lives 15 minutes; then discord.py forgets it
        )
        modal.add_item(
            discord.ui.TextInput(
                label="The reply the persona should send",
                style=discord.TextStyle.paragraph,
                default=node.content[:MAX_REWRITE_CHARS],
                max_length=MAX_REWRITE_CHARS,
                custom_id="text",
            )
        )
        await interaction.response.send_modal(modal)


async def handle_rewrite_submit(interaction: discord.Interaction, candidate_id: int) -> None:
    """A rewrite modal was submitted (also after a restart): validate, record, deliver."""
    if not await _desk(interaction).is_actor(interaction):
        _log.warning("refused rewrite of %s by %s: not an actor", candidate_id, interaction.user.id)
        await _ephemeral(interaction, ONLY_ACTORS)
        return
    text = _submitted_text(interaction.data or {})
    crash_point("action.before_commit")
    try:
        await _decisions(interaction).rewrite(
            candidate_id,
            actor=actor_of(interaction),
            text=text,
            key=str(interaction.id),
            acknowledge=_acknowledger(interaction),
        )
    except InvalidAction as error:
        await _ephemeral(interaction, str(error))


def _submitted_text(data: dict[str, Any]) -> str:
    """The ``text`` input's value from a modal submit payload (rows or labels); a malformed
    payload has none."""
    stack: list[Any] = [data.get("components")]
    while stack:
        component = stack.pop()
        if isinstance(component, list):
            stack.extend(component)
        elif isinstance(component, dict):
            if component.get("custom_id") == "text" and "value" in component:
                return str(component["value"])
            stack += [component.get("components"), component.get("component")]
    return ""


class RegenerateButton(_CandidateButton, template=r"gr:regen:(?P<id>[0-9]{1,19})"):
    action, label = "regen", "Regenerate"

    async def act(self, interaction: discord.Interaction) -> None:
        if not await _check_actor(interaction, self.candidate_id):
            return
        decisions = _decisions(interaction)
        node = await _desk(interaction).store.get_node(self.candidate_id)
        if node is None:
            return
        if node.decided_by is not None:
            await _ephemeral(interaction, await decisions.describe_decision(node.id))
            return
        crash_point("action.before_commit")
        try:
            outcome = await decisions.regenerate(
                self.candidate_id,
                actor=actor_of(interaction),
                key=str(interaction.id),
                acknowledge=_acknowledge_regeneration(interaction),
            )
        except _AlreadyAcknowledged:  # the same click delivered twice: the other works on it
            return
        except (GenerationError, LookupError) as error:
            await _ephemeral(interaction, f"Could not regenerate: {error}")
            return
        if outcome.status == "refused":
            await _ephemeral(interaction, outcome.message)
        elif outcome.status == "done":
            await _ephemeral(interaction, f"New candidate #{outcome.result_id} is in the console.")


class _AlreadyAcknowledged(Exception):
    """The interaction was answered already: this delivery of it stops here."""


def _acknowledge_regeneration(interaction: discord.Interaction) -> Any:
    """The ``acknowledge`` of a regeneration: the request is stored; generating takes longer
    than Discord's 3 s, so the clicker is shown "thinking" until the new candidate is ready
    (a restart in between finishes it)."""

    async def acknowledge(outcome: ActionOutcome) -> None:
        crash_point("action.after_commit")
        if outcome.status == "refused":
            return  # said to the clicker when the action returns
        if outcome.status == "duplicate":  # this very click was already done
            await _ack(interaction)
            return
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
        except discord.HTTPException as error:
            _log.info("interaction %s already acknowledged: %s", interaction.id, error)
            raise _AlreadyAcknowledged from error
        crash_point("action.after_ack")

    return acknowledge


class _ConversationButton(_IdButton, template=r"gr:[a-z]+:(?P<id>[0-9]{1,19})"):
    """A button that acts on a whole conversation."""

    @property
    def conversation_id(self) -> int:
        return self.target_id

    async def _persona(self, interaction: discord.Interaction) -> str | None:
        """The role check, then the conversation's persona; ``None`` when the click was
        refused (the clicker was told why)."""
        if not await _check_actor(interaction, None):
            return None
        conversation = await _desk(interaction).store.get_conversation(self.conversation_id)
        if conversation is None:
            await _ephemeral(interaction, "This conversation no longer exists.")
            return None
        return conversation.persona


class TakeOverButton(_ConversationButton, template=r"gr:takeover:(?P<id>[0-9]{1,19})"):
    action, label, style = "takeover", "Take over", discord.ButtonStyle.danger

    async def act(self, interaction: discord.Interaction) -> None:
        persona = await self._persona(interaction)
        if persona is None:
            return

        async def acknowledge(outcome: ActionOutcome) -> None:
            if outcome.status == "refused":
                await _ephemeral(interaction, outcome.message)
            else:
                await interaction.response.defer(ephemeral=True, thinking=True)

        outcome = await _decisions(interaction).take_over(
            self.conversation_id,
            actor=actor_of(interaction),
            key=str(interaction.id),
            acknowledge=acknowledge,
        )
        if outcome.status == "refused":
            return
        thread = await _desk(interaction).takeover_thread(self.conversation_id, interaction.message)
        where = thread.mention if thread is not None else "the console thread"
        await _ephemeral(
            interaction,
            f"You are {persona} now: what you type in {where} goes to the user. "
            "The model stays silent until you press Release.",
        )


class ReleaseButton(_ConversationButton, template=r"gr:release:(?P<id>[0-9]{1,19})"):
    action, label = "release", "Release"

    async def act(self, interaction: discord.Interaction) -> None:
        persona = await self._persona(interaction)
        if persona is None:
            return
        outcome = await _decisions(interaction).release(
            self.conversation_id, actor=actor_of(interaction), key=str(interaction.id)
        )
        await _ephemeral(
            interaction,
            outcome.message
            if outcome.status == "refused"
            else f"Released: {persona} is back on the model.",
        )


class _CandidateSelect(
    _Tracked,
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=r"gr:[a-z]+:(?P<id>[0-9]{1,19})",
):
    """A select menu on one candidate, ``gr:<action>:<candidate id>``, built by ``menu``."""

    action = ""

    def __init__(self, candidate_id: int) -> None:
        super().__init__(self.menu(f"gr:{self.action}:{candidate_id}"))
        self.candidate_id = candidate_id

    @staticmethod
    def menu(custom_id: str) -> discord.ui.Select[Any]:
        raise NotImplementedError

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> _CandidateSelect:
        return cls(int(match["id"]))


class RatingSelect(_CandidateSelect, template=r"gr:rate:(?P<id>[0-9]{1,19})"):
    """Rate the candidate 1 to 5."""

    action = "rate"

    @staticmethod
    def menu(custom_id: str) -> discord.ui.Select[Any]:
        return discord.ui.Select(
            custom_id=custom_id,
            placeholder="Rate this reply (1-5)",
            options=[discord.SelectOption(label=f"{n} / 5", value=str(n)) for n in range(1, 6)],
            row=1,
        )

    async def act(self, interaction: discord.Interaction) -> None:
        if not await _check_actor(interaction, self.candidate_id):
            return
        values = (interaction.data or {}).get("values") or []
        try:
            rating = int(values[0])
            outcome = await _decisions(interaction).rate(
                self.candidate_id,
                actor=actor_of(interaction),
                rating=rating,
                key=str(interaction.id),
            )
        except (InvalidAction, ValueError, IndexError) as error:
            await _ephemeral(interaction, f"That rating was not recorded: {error}")
            return
        await _ephemeral(
            interaction, f"Rated {rating}/5." if outcome.status != "refused" else outcome.message
        )


class TagsSelect(_CandidateSelect, template=r"gr:tags:(?P<id>[0-9]{1,19})"):
    """Tag the candidate with any of :data:`~feedback.corrections.TAGS`."""

    action = "tags"

    @staticmethod
    def menu(custom_id: str) -> discord.ui.Select[Any]:
        return discord.ui.Select(
            custom_id=custom_id,
            placeholder="Tag this reply",
            min_values=1,
            max_values=len(TAGS),
            options=[discord.SelectOption(label=tag, value=tag) for tag in TAGS],
            row=2,
        )

    async def act(self, interaction: discord.Interaction) -> None:
        if not await _check_actor(interaction, self.candidate_id):
            return
        tags = list((interaction.data or {}).get("values") or [])
        try:
            outcome = await _decisions(interaction).rate(
                self.candidate_id,
                actor=actor_of(interaction),
                rating=None,
                tags=tags,
                key=str(interaction.id),
            )
        except InvalidAction as error:
            await _ephemeral(interaction, str(error))
            return
        await _ephemeral(
            interaction,
            "Tagged: " + ", ".join(tags) if outcome.status != "refused" else outcome.message,
        )
