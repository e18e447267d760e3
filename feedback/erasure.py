"""What an erasure leaves for trainers: tombstones of the records it removed, the erasure feed
that serves them, and revoked leases.

When a user is forgotten (:meth:`feedback.store.ConversationStore.delete_data_for_user`), the
same transaction calls :func:`record_erasure`, which

- writes a tombstone for every record any export format could have given from the affected
  turns (see :func:`feedback.record_ids.keys_of_turn`) and for every affected feedback event
  (what leases hand out), and
- revokes the unacknowledged leases holding an affected event: their acknowledgement is
  refused from then on, and their other records return to the queue.

Tombstones are never deleted. :func:`read_feed` pages them by id behind an opaque cursor;
:func:`feed_position` is the cursor of "now", which export manifests record so a trainer can
ask later what was erased since a file was written. Tombstones are inserted under a table lock
on PostgreSQL, so ids become visible in increasing order and a reader that saw id ``n`` will
never later see a smaller one appear (SQLite has one writer anyway).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select, text, update

from feedback.models import ErasureTombstone, FeedbackEvent, Lease
from feedback.record_ids import event_key, keys_of_turn, record_id
from feedback.redact import pseudonym

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = [
    "FeedCursorError",
    "FeedPage",
    "chunks",
    "decode_feed_cursor",
    "encode_feed_cursor",
    "feed_position",
    "read_feed",
    "record_erasure",
]

_log = logging.getLogger(__name__)

#: Ids bound per ``IN (...)`` (both drivers cap bound parameters near 32k).
_CHUNK = 5000
#: Tombstone rows per insert statement.
_INSERT_CHUNK = 2000
_MAX_CURSOR_CHARS = 100


def chunks(ids: Iterable[int], size: int = _CHUNK) -> list[list[int]]:
    """``ids`` in lists of at most ``size`` (for ``IN`` clauses that stay under driver limits)."""
    items = list(ids)
    return [items[start : start + size] for start in range(0, len(items), size)]


async def record_erasure(
    session: AsyncSession,
    *,
    user_id: str,
    turns: Mapping[int, Iterable[int]],
    event_ids: Iterable[int],
    now: datetime,
) -> tuple[int, int]:
    """Tombstone every record of ``turns`` (user turn id -> its reply ids) and of
    ``event_ids``, and revoke the open leases holding any of those events, inside the caller's
    transaction (call it before the events are deleted). Returns (tombstones, leases revoked).
    """
    events = sorted(set(event_ids))
    revoked = 0
    for part in chunks(events):
        result = await session.execute(
            update(Lease)
            .where(
                Lease.acked_at.is_(None),
                Lease.revoked_at.is_(None),
                Lease.id.in_(
                    select(FeedbackEvent.lease_id).where(
                        FeedbackEvent.id.in_(part), FeedbackEvent.lease_id.is_not(None)
                    )
                ),
            )
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        revoked += result.rowcount or 0
    keys = [key for turn, replies in sorted(turns.items()) for key in keys_of_turn(turn, replies)]
    keys += [event_key(event) for event in events]
    if not keys:
        return 0, revoked
    if session.bind.dialect.name == "postgresql":
        # Self-conflicting, but readers (ACCESS SHARE) pass: ids are committed in order.
        await session.execute(text("LOCK TABLE erasure_tombstones IN SHARE ROW EXCLUSIVE MODE"))
    for start in range(0, len(keys), _INSERT_CHUNK):
        await session.execute(
            insert(ErasureTombstone),
            [
                {"record_key": key, "user_id": user_id, "erased_at": now}
                for key in keys[start : start + _INSERT_CHUNK]
            ],
        )
    return len(keys), revoked


class FeedCursorError(ValueError):
    """A feed cursor this API did not issue."""


def encode_feed_cursor(position: int) -> str:
    """The opaque cursor of the feed after tombstone ``position`` (0: from the start)."""
    raw = json.dumps({"erasures": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_feed_cursor(cursor: str) -> int:
    """The position inside a feed cursor; :class:`FeedCursorError` if it is not one of ours."""
    try:
        if len(cursor) > _MAX_CURSOR_CHARS:
            raise ValueError
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        position = data["erasures"]
        if not isinstance(position, int) or isinstance(position, bool) or position < 0:
            raise ValueError
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise FeedCursorError(
            "cursor is not an erasure feed cursor; pass the next_cursor of the previous feed "
            "page or the erasure_cursor of an export manifest, or none to start from the "
            "beginning"
        ) from None
    return position


async def feed_position(sessions: async_sessionmaker[AsyncSession]) -> int:
    """The id of the latest tombstone (0 when there is none): the feed's "now"."""
    async with sessions() as session:
        return int(await session.scalar(select(func.max(ErasureTombstone.id))) or 0)


@dataclass(frozen=True, slots=True)
class FeedPage:
    """Tombstones after a cursor, the cursor to continue from, and whether more were waiting."""

    tombstones: list[dict[str, Any]]
    next_cursor: str
    has_more: bool


async def read_feed(
    sessions: async_sessionmaker[AsyncSession],
    *,
    after: int,
    limit: int,
    pseudonym_secret: bytes,
) -> FeedPage:
    """Up to ``limit`` tombstones after position ``after``, oldest first, each
    ``{"record_id", "user", "erased_at"}`` with ids pseudonymised by ``pseudonym_secret``.

    ``next_cursor`` is always set (it echoes ``after`` when nothing is new), so a trainer can
    poll with it.
    """
    async with sessions() as session:
        rows = (
            await session.execute(
                select(
                    ErasureTombstone.id,
                    ErasureTombstone.record_key,
                    ErasureTombstone.user_id,
                    ErasureTombstone.erased_at,
                )
                .where(ErasureTombstone.id > after)
                .order_by(ErasureTombstone.id)
                .limit(limit + 1)
            )
        ).all()
    has_more = len(rows) > limit
    rows = rows[:limit]
    users: dict[str, str] = {}
    tombstones = []
    for row in rows:
        user = users.get(row.user_id)
        if user is None:
            user = users[row.user_id] = pseudonym(row.user_id, pseudonym_secret, prefix="user")
        tombstones.append(
            {
                "record_id": record_id(row.record_key, pseudonym_secret),
                "user": user,
                "erased_at": row.erased_at.isoformat(),
            }
        )
    position = rows[-1].id if rows else after
    return FeedPage(tombstones, encode_feed_cursor(position), has_more)
