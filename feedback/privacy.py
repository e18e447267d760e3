"""Users' consent to training use, servers' defaults, and erasure marks for trainers."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from feedback.models import GuildSetting, UserPrivacy

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = ["PrivacyStore", "mark_erased"]

_log = logging.getLogger(__name__)


async def mark_erased(session: AsyncSession, user_id: str, when: datetime) -> None:
    """Note in ``session``'s transaction that the user was forgotten at ``when``; the erasure
    itself (:meth:`feedback.store.ConversationStore.delete_data_for_user`) calls this in the
    transaction that removes their rows and writes the trainers' tombstones."""
    row = await session.get(UserPrivacy, user_id)
    if row is None:
        row = UserPrivacy(user_id=user_id)
        session.add(row)
    row.erased_at = when


class PrivacyStore:
    """Consent is per user (``None``: not said, the server default applies)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def consent_of(self, user_id: str) -> bool | None:
        """What the user said, or ``None``."""
        async with self._sessions() as session:
            row = await session.get(UserPrivacy, user_id)
        return row.consent if row is not None else None

    async def set_consent(self, user_id: str, consent: bool) -> None:
        """Record the user's choice; it applies to everything not yet exported."""
        async with self._sessions() as session:
            row = await session.get(UserPrivacy, user_id)
            if row is None:
                session.add(UserPrivacy(user_id=user_id, consent=consent))
            else:
                row.consent = consent
            await session.commit()
        _log.info("consent of %s set to %s", user_id, consent)

    async def mark_erased(self, user_id: str) -> None:
        """Note that the user was forgotten now (exports skip anything of theirs older)."""
        async with self._sessions.begin() as session:
            await mark_erased(session, user_id, datetime.now(UTC))

    async def set_guild_default(self, guild_key: str, consent: bool, *, by: str) -> None:
        """Whether members who have not said may be exported in this server."""
        async with self._sessions() as session:
            row = await session.get(GuildSetting, guild_key)
            if row is None:
                row = GuildSetting(guild_key=guild_key, updated_by=by)
                session.add(row)
            row.consent_default = consent
            row.updated_by = by
            await session.commit()
        _log.info("consent default of %s set to %s by %s", guild_key, consent, by)
