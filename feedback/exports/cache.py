"""Export records kept per user turn (``turn_records``), so a turn is built once per format.

Building records is most of an export's CPU (reading the tree, redacting, masking names,
serialising), and a turn's records only change when the turn does. An export or an API page
reads a turn's kept records along with the turn row (a correlated subquery, one primary-key
lookup) and builds only the turns that have none; the records it built are saved for next
time (:class:`RecordFill`).

What keeps them right:

- **Changes.** Database triggers (migration 0003) raise the user turn's ``revision`` whenever
  a reply, an event on a reply, a prompt snapshot, the turn or its conversation changes, and
  delete the turn's kept records in the same transaction. A kept row is read only when its
  revision equals the turn's, and it is saved only if the turn's revision is still the one it
  was built from (on PostgreSQL the turn row is locked ``FOR SHARE`` while saving, so a
  concurrent change either waits for the save and then deletes it, or commits first and the
  save stores nothing). So neither a stale record nor an erased text is left behind.
- **Code and secret.** A row also carries a :func:`build_key`: a hash of the source of the
  modules that shape records and of the pseudonym secret. New code or a new secret reads no
  old row (the rows are rebuilt and replaced as exports meet them).
- **Consent** is not kept in a row: turns are selected with the consent rule as before, so a
  change of consent applies at once.
- **Filters.** ``--since``, ``--until`` and ``--persona`` only select turns, so they read kept
  records. ``--min-rating`` and ``--tags`` change the records themselves: those exports build
  every turn and keep nothing (:func:`cache_key` is ``None``).

Most rows are written ahead, as turns change, by :mod:`feedback.exports.ahead`; an export or
page keeps what it had to build itself. Exports of a kind built ahead read its rows directly,
by ``ix_turn_records_kind`` (see :func:`~feedback.exports.tree.iter_turn_trees`).

Limits: the rows take about as much room as the exports of the formats that were pulled; a
failed save (a read-only replica, a locked SQLite file) is logged once and the export goes on
without keeping records.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from feedback import redact
from feedback.exports import filters, records, tree

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from feedback.exports.filters import ExportFilter

__all__ = [
    "KINDS",
    "CacheKey",
    "RecordFill",
    "build_key",
    "cache_key",
    "save_rows",
]

_log = logging.getLogger(__name__)

#: The kind of kept row of each format: formats whose records are the same bytes share one.
KINDS = {
    "openai-sft": "sft",
    "trl-sft": "sft",
    "openai-dpo": "openai-dpo",
    "trl-dpo": "trl-dpo",
    "trl-kto": "trl-kto",
    "oasst": "oasst",
}
#: Modules whose code decides a record's bytes (the build key hashes their source).
_SHAPING_MODULES = (records, tree, filters, redact)

_SAVE = """
INSERT INTO turn_records (user_turn_id, kind, build_key, revision, body)
SELECT id, :kind, :build_key, revision, :body
FROM messages WHERE id = :turn_id AND revision = :revision{lock}
ON CONFLICT (user_turn_id, kind) DO UPDATE SET
    build_key = excluded.build_key,
    revision = excluded.revision,
    body = excluded.body
"""
_SAVE_SQLITE = text(_SAVE.format(lock=""))
_SAVE_POSTGRESQL = text(_SAVE.format(lock=" FOR SHARE"))


async def save_rows(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Keep ``rows`` (of :meth:`CacheKey.row`) in ``session``'s transaction, each only if its
    turn's revision is still the row's (not committed here)."""
    dialect = session.bind.dialect.name if session.bind is not None else ""
    await session.execute(_SAVE_POSTGRESQL if dialect == "postgresql" else _SAVE_SQLITE, rows)


@lru_cache(maxsize=1)
def _code_fingerprint() -> bytes:
    digest = hashlib.blake2b(orjson.__version__.encode(), digest_size=32)
    for module in _SHAPING_MODULES:
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.digest()


@lru_cache(maxsize=8)
def build_key(pseudonym_secret: bytes) -> str:
    """What a kept row must carry to be read: 32 hex digits of the shaping code and secret."""
    secret = hashlib.blake2b(pseudonym_secret, digest_size=32).digest()
    return hashlib.blake2b(_code_fingerprint(), key=secret, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Which kept rows an export of one format reads and writes."""

    kind: str
    build_key: str

    def row(self, user_turn_id: int, revision: int, lines: list[bytes]) -> dict[str, Any]:
        """A turn's records (JSON lines ending in a newline; none is kept too) as a row of
        :func:`save_rows`, built from the turn at ``revision``."""
        return {
            "turn_id": user_turn_id,
            "revision": revision,
            "body": b"".join(lines),
            "kind": self.kind,
            "build_key": self.build_key,
        }


def cache_key(fmt: str, flt: ExportFilter, pseudonym_secret: bytes) -> CacheKey | None:
    """The rows for ``fmt``, or ``None`` when the filter changes the records themselves."""
    if flt.min_rating is not None or flt.tags:
        return None
    return CacheKey(KINDS[fmt], build_key(pseudonym_secret))


@dataclass(slots=True)
class RecordFill:
    """Records built during an export or a page, waiting to be kept (see :meth:`save`)."""

    sessions: async_sessionmaker[AsyncSession]
    key: CacheKey
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: Set after a failed save: the rest of the export keeps nothing.
    failed: bool = False

    @classmethod
    def for_export(
        cls,
        sessions: async_sessionmaker[AsyncSession],
        fmt: str,
        flt: ExportFilter,
        pseudonym_secret: bytes,
        *,
        keep_records: bool,
    ) -> RecordFill | None:
        """The fill of an export or page of ``fmt``, or ``None`` when it keeps nothing (turned
        off, or a filter that changes the records, see :func:`cache_key`)."""
        key = cache_key(fmt, flt, pseudonym_secret) if keep_records else None
        return None if key is None else cls(sessions, key)

    def add(self, user_turn_id: int, revision: int, lines: list[bytes]) -> None:
        """Keep a turn's records (JSON lines ending in a newline; none is kept too)."""
        if not self.failed:
            self.rows.append(self.key.row(user_turn_id, revision, lines))

    async def save(self) -> int:
        """Write the waiting rows in one transaction; how many were waiting. A turn that
        changed since it was read keeps nothing. A failure is logged, never raised."""
        rows, self.rows = self.rows, []
        if not rows or self.failed:
            return 0
        try:
            async with self.sessions() as session:
                await save_rows(session, rows)
                await session.commit()
        except (SQLAlchemyError, OSError) as error:
            self.failed = True
            _log.warning("export records are not kept for next time: %s", error)
            return 0
        return len(rows)
