"""What the trainer API sends: pages of export records, lease records, and opaque cursors.

The export formats, consent rule, redaction and pseudonyms belong to :mod:`feedback.exports`
and :mod:`feedback.redact`; this module pages them and cleans leased events the same way.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from feedback.exports import iter_turn_record_batches
from feedback.exports.cleaning import TextCleaner
from feedback.record_ids import event_key, record_id
from feedback.redact import mask_names, pseudonym, redact

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from feedback.exports import ExportFilter
    from feedback.queue import QueueRecord
    from feedback.trust import TrustTable

__all__ = [
    "CursorError",
    "Page",
    "ReviewFacts",
    "ReviewFactsMemo",
    "decode_cursor",
    "encode_cursor",
    "lease_record",
    "page",
]

#: Longest cursor accepted; the ones we issue are far shorter.
MAX_CURSOR_CHARS = 200
#: User turns the exports read per query round: a page's worth split in this many rounds (the
#: database reads the next while this process builds records from the last), but not fewer
#: than ``_MIN_BATCH`` turns (many turns give no record), nor more than ``_MAX_BATCH``.
_READS_A_PAGE = 4
_MIN_BATCH = 500
_MAX_BATCH = 10_001
#: Seconds one cleaned-text memo serves pages before it is dropped (see :func:`_cleaner`).
_MEMO_SECONDS = 60.0


class CursorError(ValueError):
    """A cursor this API did not issue, or one issued for another format."""


@dataclass(slots=True)
class Page:
    """One page: the records, the cursor to resume after them, and whether more were waiting."""

    records: list[dict[str, Any]]
    next_cursor: str | None
    has_more: bool


def encode_cursor(fmt: str, key: int) -> str:
    """An opaque cursor resuming ``fmt`` after ``key``."""
    raw = json.dumps({"f": fmt, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, fmt: str) -> int:
    """The key inside a cursor; :class:`CursorError` if it is not one of ours for ``fmt``."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        cursor_format, key = data["f"], data["k"]
        if not isinstance(key, int) or isinstance(key, bool) or key < 0:
            raise ValueError
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise CursorError(
            "cursor is not one this API issued; pass the next_cursor of the previous page, "
            "or no cursor to start from the beginning"
        ) from None
    if cursor_format != fmt:
        raise CursorError(f"cursor belongs to format {cursor_format!r}, not {fmt!r}")
    return key


class _PageFill:
    """The page rule, fed one whole user turn at a time in key order.

    Records of one turn are never split across pages: a page stops before a turn that would
    overflow it, unless that turn alone exceeds ``limit`` (then the page holds just that turn).
    ``has_more`` is set when a turn was left for the next page.
    """

    __slots__ = ("has_more", "last", "limit", "records")

    def __init__(self, limit: int, after: int | None) -> None:
        self.limit = limit
        self.records: list[Any] = []
        self.last = after
        self.has_more = False

    def add_all(self, turns: list[tuple[int, list[Any]]]) -> bool:
        """Take each turn while they fit; ``False`` (and ``has_more``) once the page is done."""
        held, limit, taken = len(self.records), self.limit, self.records
        for key, records in turns:
            if held >= limit or (held and held + len(records) > limit):
                self.has_more = True
                return False
            taken += records
            held += len(records)
            self.last = key
        return True


async def page(
    sessions: async_sessionmaker[AsyncSession],
    fmt: str,
    flt: ExportFilter,
    *,
    pseudonym_secret: bytes,
    after: int | None,
    limit: int,
    trust: TrustTable | None = None,
) -> Page:
    """Up to ``limit`` records of ``fmt`` after the key ``after``, in a stable order, read by
    the exports' one read path (:func:`feedback.exports.iter_turn_record_batches`).

    Records of one user turn share a key and are never split across pages (see
    :class:`_PageFill`). ``next_cursor`` is set whenever a record was returned (or echoes
    ``after``), so a trainer that reached the end can poll again later and receive only newer
    records.
    """
    fill = _PageFill(limit, after)
    source = iter_turn_record_batches(
        sessions,
        fmt,
        flt,
        pseudonym_secret=pseudonym_secret,
        after_id=after,
        batch_size=_batch_size(limit + 1),
        # The next batch is read while this one is built, up to the turns a page needs when
        # each gives a record (no batch is read to be thrown away).
        read_ahead_until=limit + 1,
        cleaner=_cleaner(pseudonym_secret),
        trust=trust,
    )
    async with contextlib.aclosing(source) as batches:
        async for batch in batches:
            if not fill.add_all(batch):
                break
    return Page(
        records=fill.records,
        next_cursor=None if fill.last is None else encode_cursor(fmt, fill.last),
        has_more=fill.has_more,
    )


#: The memo pages share: when it was made, its secret, and the cleaner.
_shared: tuple[float, bytes, TextCleaner] | None = None


def _cleaner(secret: bytes) -> TextCleaner:
    """The cleaner pages share, so a text that later pages read again is cleaned once.

    A page reads the recent history of each prompt again, and cleaning those texts afresh is
    most of a page's work. The memo is bounded (see :class:`TextCleaner`) and dropped
    :data:`_MEMO_SECONDS` after it was made, so an erased user's cleaned text leaves memory
    within that time; before that it is never served, as an entry is returned only for the
    same text read again from a turn that passes the consent rule.
    """
    global _shared  # one memo for the process, replaced when it expires
    now = time.monotonic()
    if _shared is None or _shared[1] != secret or now - _shared[0] > _MEMO_SECONDS:
        _shared = (now, secret, TextCleaner(secret))
    return _shared[2]


@dataclass(frozen=True, slots=True)
class ReviewFacts:
    """The actors' trust weights and the dimension names stored reviews scored."""

    trust: TrustTable
    dimensions: frozenset[str]


class ReviewFactsMemo:
    """The :class:`ReviewFacts` an app's pages share, read from every review at most once a
    :data:`_MEMO_SECONDS`: a page must not read every review, and trust moves slowly (a page's
    ``quality`` may be that much behind the reviews). One per app (its database)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._read: tuple[float, ReviewFacts] | None = None

    async def get(self) -> ReviewFacts:
        """The facts, read again when older than :data:`_MEMO_SECONDS`."""
        now = time.monotonic()
        if self._read is None or now - self._read[0] > _MEMO_SECONDS:
            from feedback.review_data import load_reviews
            from feedback.trust import TrustTable, compute_actor_stats

            table = await load_reviews(self._sessions)
            trust = TrustTable({a.actor_id: a.trust for a in compute_actor_stats(table)})
            self._read = (time.monotonic(), ReviewFacts(trust, frozenset(table.dimensions)))
        return self._read[1]


def _batch_size(turns: int) -> int:
    """Turns a query round reads when about ``turns`` are wanted (see :data:`_READS_A_PAGE`)."""
    return min(max(-(-turns // _READS_A_PAGE), _MIN_BATCH), _MAX_BATCH)


def lease_record(record: QueueRecord, secret: bytes) -> dict[str, Any]:
    """A leased feedback event as JSON, cleaned the way exports are.

    Ids become keyed pseudonyms; texts pass through :func:`~feedback.redact.redact` with the
    user's display name masked. When the user has not consented to training use (or the event
    concerns no user turn), every text is ``null`` and ``consented`` is false: the record still
    counts, and is consumed with its lease, but carries nothing of the user's.
    """
    names = (record.user_name or "").strip()
    stand_ins = {names: pseudonym(names.casefold(), secret, prefix="name")} if names else {}

    def clean(text: str | None) -> str | None:
        if text is None or not record.consented:
            return None
        return mask_names(redact(text), stand_ins)

    prompt = None
    if record.consented and record.prompt is not None:
        prompt = [
            {**message, "content": clean(message.get("content", ""))} for message in record.prompt
        ]
    actor = record.actor_id
    return {
        "record_id": record_id(event_key(record.event_id), secret),
        "event_id": record.event_id,
        "kind": record.kind,
        "actor": actor if actor == "timeout" else pseudonym(actor, secret, prefix="actor"),
        "user": None
        if record.user_id is None
        else pseudonym(record.user_id, secret, prefix="user"),
        "conversation": pseudonym(str(record.conversation_id), secret, prefix="conversation"),
        "consented": record.consented,
        "persona": record.persona,
        "persona_version": record.persona_version,
        "rating": record.rating,
        "tags": record.tags,
        "original_text": clean(record.original_text),
        "new_text": clean(record.new_text),
        "edit_distance": record.edit_distance,
        "candidate_text": clean(record.candidate_text),
        "result_text": clean(record.result_text),
        "prompt": prompt,
        "created_at": record.created_at.isoformat(),
    }
