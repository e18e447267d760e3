"""Sending a persona's words into a Discord channel.

Every send carries ``AllowedMentions.none()`` (model output never pings anyone) and respects the
2,000-character message limit. Where the bot may manage webhooks in a text channel, the reply is
posted through a channel webhook under the persona's name and avatar: the card's
``avatar_url`` on the shared webhook, or, for a PNG card with no URL, the card's picture as the
avatar of a webhook of the persona's own (webhook execution takes only avatar URLs; creating a
webhook takes image bytes). Elsewhere the name leads the message in bold.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot.text import split_message

if TYPE_CHECKING:
    from collections.abc import Sequence

    from personas import PersonaRegistry

__all__ = ["MESSAGE_LIMIT", "PersonaVoice"]

_log = logging.getLogger(__name__)

#: Discord's limit on a message's content.
MESSAGE_LIMIT = 2000
_WEBHOOK_NAME = "Greenroom"
_NO_PINGS = discord.AllowedMentions.none()


class PersonaVoice:
    """Delivers text as a persona; remembers the webhooks it made so it can recognise them."""

    def __init__(self, *, use_webhooks: bool, personas: PersonaRegistry) -> None:
        self.use_webhooks = use_webhooks
        self.personas = personas
        #: By channel id and persona name ("" for the shared webhook).
        self._webhooks: dict[tuple[int, str], discord.Webhook] = {}
        self.webhook_ids: set[int] = set()

    def _look(self, persona: str) -> tuple[str | None, bytes | None]:
        """The persona's avatar URL, else its picture (``None``, ``None``: Discord's default)."""
        if persona not in self.personas:
            return None, None
        known = self.personas.get(persona)
        return known.greenroom.avatar_url, None if known.greenroom.avatar_url else known.avatar

    async def _webhook_for(
        self, channel: discord.abc.Messageable, persona: str
    ) -> discord.Webhook | None:
        """The webhook to speak through: the persona's own when it has a picture and no URL,
        else the shared one (also when the persona's own cannot be made)."""
        if not self.use_webhooks or not isinstance(channel, discord.TextChannel):
            return None
        if not channel.permissions_for(channel.guild.me).manage_webhooks:
            return None
        _, picture = self._look(persona)
        if picture is not None:
            own = await self._find_or_create(channel, persona[:80], picture)
            if own is not None:
                return own
        return await self._find_or_create(channel, _WEBHOOK_NAME, None)

    async def _find_or_create(
        self, channel: discord.TextChannel, name: str, avatar: bytes | None
    ) -> discord.Webhook | None:
        key = (channel.id, "" if avatar is None else name)
        cached = self._webhooks.get(key)
        if cached is not None:
            return cached
        try:
            found = next(
                (hook for hook in await channel.webhooks() if hook.name == name and hook.token),
                None,
            )
            if found is not None and avatar is not None:
                found = await found.edit(avatar=avatar)  # the card's picture may have changed
            webhook = found or await channel.create_webhook(name=name, avatar=avatar)
        except discord.HTTPException as error:
            _log.warning("cannot use webhook %r in channel %s: %s", name, channel.id, error)
            return None
        self._webhooks[key] = webhook
        self.webhook_ids.add(webhook.id)
        return webhook

    async def send(
        self,
        channel: discord.abc.Messageable,
        persona: str,
        text: str,
        *,
        reference: discord.Message | discord.PartialMessage | None = None,
        nonce: str | None = None,
        after: int | None = None,
    ) -> Sequence[discord.Message]:
        """Send ``text`` as ``persona``, split to fit; returns the messages sent, in order.

        ``nonce`` (at most 20 characters) makes the send idempotent: each part carries
        ``<nonce>p<index>`` with ``enforce_nonce``, so Discord answers a repeated send (the same
        reply sent again after a crash) with the message it already created, for a few minutes.
        Webhooks take no nonce: when ``after`` (a message id) is given, a webhook reply that is
        already in the channel after that message with the same text is returned instead.
        """
        webhook = await self._webhook_for(channel, persona)
        sent: list[discord.Message] = []
        if webhook is not None:
            parts = split_message(text, MESSAGE_LIMIT)
            if after is not None:
                found = await self._already_sent(channel, webhook.id, after, parts)
                if found:
                    return found
            for part in parts:
                sent.append(
                    await webhook.send(
                        part,
                        username=persona[:80],
                        avatar_url=self._look(persona)[0],
                        allowed_mentions=_NO_PINGS,
                        wait=True,
                    )
                )
            return sent
        prefix = f"**{discord.utils.escape_markdown(persona)}:** "
        for index, part in enumerate(split_message(text, MESSAGE_LIMIT - len(prefix))):
            sent.append(
                await channel.send(
                    prefix + part,
                    allowed_mentions=_NO_PINGS,
                    reference=reference if index == 0 else None,
                    mention_author=False if reference is not None else None,
                    nonce=f"{nonce}p{index}" if nonce else None,
                )
            )
        return sent

    @staticmethod
    async def _already_sent(
        channel: discord.abc.Messageable, webhook_id: int, after: int, parts: Sequence[str]
    ) -> list[discord.Message]:
        """The webhook messages after ``after`` that carry ``parts`` in order (up to 100 read)."""
        found: list[discord.Message] = []
        async for message in channel.history(after=discord.Object(after), limit=100):
            if message.webhook_id == webhook_id and message.content == parts[len(found)]:
                found.append(message)
                if len(found) == len(parts):
                    return found
        return []

    async def edit(
        self,
        channel: discord.abc.Messageable,
        persona: str,
        message_ids: Sequence[int],
        text: str,
    ) -> Sequence[int]:
        """Replace the text of messages already sent, in place.

        Parts are edited in order; a longer text adds messages, a shorter one deletes the
        surplus. Returns the ids that now carry the text.
        """
        webhook = await self._webhook_for(channel, persona)
        prefix = "" if webhook is not None else f"**{discord.utils.escape_markdown(persona)}:** "
        parts = split_message(text, MESSAGE_LIMIT - len(prefix))
        kept: list[int] = []
        for index, message_id in enumerate(message_ids):
            if index < len(parts):
                if webhook is not None:
                    await webhook.edit_message(
                        message_id, content=parts[index], allowed_mentions=_NO_PINGS
                    )
                else:
                    await channel.get_partial_message(message_id).edit(  # type: ignore[attr-defined]
                        content=prefix + parts[index], allowed_mentions=_NO_PINGS
                    )
                kept.append(message_id)
            else:
                await channel.get_partial_message(message_id).delete()  # type: ignore[attr-defined]
        if len(parts) > len(message_ids):
            extra = await self.send(channel, persona, "\n".join(parts[len(message_ids) :]))
            kept.extend(message.id for message in extra)
        return kept

    async def notice(
        self, channel: discord.abc.Messageable, text: str, *, reference: discord.Message | None
    ) -> discord.Message:
        """A short notice from the bot itself (not a persona), never pinging."""
        return await channel.send(
            text[:MESSAGE_LIMIT],
            allowed_mentions=_NO_PINGS,
            reference=reference,
            mention_author=False if reference is not None else None,
        )
