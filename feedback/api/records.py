"""What the trainer API sends: pages of export records, lease records, and opaque cursors.

The export formats, consent rule, redaction and pseudonyms belong to :mod:`feedback.exports`
and :mod:`feedback.redact`; this module pages them and cleans leased events the same way.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from feedback.api.helper import HELPER_SHARE, HelperError, Turn
from feedback.database import dialect_name
from feedback.exports import RecordBuilder, iter_turn_record_batches, iter_turn_records
from feedback.exports.ahead import is_built_ahead
from feedback.exports.cache import RecordFill
from feedback.exports.collector import GcPause
from feedback.exports.tree import nth_turn_id
from feedback.redact import mask_names, pseudonym, redact

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from feedback.api.helper import PageHelper
    from feedback.exports import ExportFilter
    from feedback.queue import QueueRecord

__all__ = ["CursorError", "Page", "decode_cursor", "encode_cursor", "lease_record", "page"]

_log = logging.getLogger(__name__)

#: Longest cursor accepted; the ones we issue are far shorter.
MAX_CURSOR_CHARS = 200
#: User turns the exports read per query round: a page's worth split in this many rounds (the
#: database reads the next while this process builds records from the last), but not fewer
#: than ``_MIN_BATCH`` turns (many turns give no record), nor more than ``_MAX_BATCH``.
_READS_A_PAGE = 4
_MIN_BATCH = 500
_MAX_BATCH = 10_001
#: Records freed between two turns of the event loop by :meth:`Page.release`.
_RELEASE_CHUNK = 2_000


class CursorError(ValueError):
    """A cursor this API did not issue, or one issued for another format."""


@dataclass(slots=True)
class Page:
    """One page: the records, the cursor to resume after them, and whether more were waiting.

    A page also holds the conversation trees its records were built from, and keeps Python's
    garbage collector paused, until :meth:`release`: the API releases it after the response
    went out, so freeing (a third of the cost of building, on a 10,000-record page) and the
    collection of the young objects are not in the response's time. A page dropped without
    :meth:`release` frees everything and resumes collection as usual.
    """

    #: Record dicts, and :class:`orjson.Fragment` for those the helper process serialised.
    records: list[Any]
    next_cursor: str | None
    has_more: bool
    retained: list[Any] = field(default_factory=list)
    pause: GcPause | None = None
    #: Records built for this page, kept for the next pages (see :mod:`feedback.exports.cache`).
    kept: RecordFill | None = None

    async def release(self) -> None:
        """Free the records and trees a piece at a time (the event loop runs in between, so
        the rest of a large response keeps flowing), keep the records built for the page, then
        let collection resume."""
        while self.retained:
            self.retained.pop()
            await asyncio.sleep(0)
        while self.records:
            del self.records[-_RELEASE_CHUNK:]
            await asyncio.sleep(0)
        try:
            if self.kept is not None:
                await self.kept.save()
        finally:
            if self.pause is not None:
                self.pause.end()


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

    def add(self, key: int, records: list[Any]) -> bool:
        """Take the turn if it fits; ``False`` (and ``has_more``) once the page is done."""
        return self.add_all([(key, records)])


async def page(
    sessions: async_sessionmaker[AsyncSession],
    fmt: str,
    flt: ExportFilter,
    *,
    pseudonym_secret: bytes,
    after: int | None,
    limit: int,
    helper: PageHelper | None = None,
    keep_records: bool = True,
) -> Page:
    """Up to ``limit`` records of ``fmt`` after the key ``after``, in a stable order.

    Records of one user turn share a key and are never split across pages (see
    :class:`_PageFill`). ``next_cursor`` is set whenever a record was returned (or echoes
    ``after``), so a trainer that reached the end can poll again later and receive only newer
    records. With a ``helper`` that is free and a ``limit`` it takes, the first part of the
    page is built by the helper process (see :mod:`feedback.api.helper`), unless the format is
    built ahead on SQLite or its records are large; the records are the same. With
    ``keep_records`` (and a filter that allows it) turns whose records were kept are not built
    again, and those built now are kept when the page is released.
    """
    kept = RecordFill.for_export(sessions, fmt, flt, pseudonym_secret, keep_records=keep_records)
    if (
        helper is not None
        and kept is not None
        and _helps_little(sessions, helper, fmt)
        and await is_built_ahead(sessions, kept.key)
    ):
        helper = None
    pause = GcPause()
    retained: list[Any] = []
    fill = _PageFill(limit, after)
    try:
        reservation = None if helper is None else helper.reserve(limit)
        if reservation is None or not await _fill_with_helper(
            helper,  # type: ignore[arg-type]
            reservation,
            sessions,
            fmt,
            flt,
            pseudonym_secret,
            fill,
            retained,
            kept,
        ):
            retained.clear()
            source = iter_turn_record_batches(
                sessions,
                fmt,
                flt,
                pseudonym_secret=pseudonym_secret,
                after_id=after,
                batch_size=_batch_size(limit + 1),
                # The next batch is read while this one is built, up to the turns a page
                # needs when each gives a record (no batch is read to be thrown away).
                read_ahead_until=limit + 1,
                read_two_ahead=True,
                retain=retained,
                fill=kept,
            )
            async with contextlib.aclosing(source) as batches:
                async for batch in batches:
                    if not fill.add_all(batch):
                        break
    except BaseException:
        pause.end()
        raise
    return Page(
        records=fill.records,
        next_cursor=None if fill.last is None else encode_cursor(fmt, fill.last),
        has_more=fill.has_more,
        retained=retained,
        pause=pause,
        kept=kept,
    )


def _helps_little(sessions: async_sessionmaker[AsyncSession], helper: PageHelper, fmt: str) -> bool:
    """Whether the page helper is of little use to a page of ``fmt`` served from kept records:
    on SQLite reading them is most of the work, in this process or the helper's, and the
    helper's records would only be handed over. On PostgreSQL it reads half the page on a
    second server process, the one part that runs in parallel, unless the records are so large
    that handing them over costs more (see :data:`feedback.api.helper.LARGE_RECORD_BYTES`)."""
    return dialect_name(sessions) == "sqlite" or helper.hands_over_large_records(fmt)


def _batch_size(turns: int) -> int:
    """Turns a query round reads when about ``turns`` are wanted (see :data:`_READS_A_PAGE`)."""
    return min(max(-(-turns // _READS_A_PAGE), _MIN_BATCH), _MAX_BATCH)


async def _fill_with_helper(
    helper: PageHelper,
    reservation: object,
    sessions: async_sessionmaker[AsyncSession],
    fmt: str,
    flt: ExportFilter,
    secret: bytes,
    fill: _PageFill,
    retained: list[Any],
    kept: RecordFill | None,
) -> bool:
    """Fill the page with the helper building its first turns; ``False`` if the helper could
    not, or the turns ahead are too few to share (then ``fill`` has taken no turn, and the
    caller builds the page alone)."""
    request: asyncio.Future[list[Turn]] | None = None
    try:
        share = helper.share_turns(fmt, fill.limit)
        split = helper.estimated_share_end(fmt, fill.last, fill.limit)
        if split is None:
            split = await nth_turn_id(
                sessions,
                flt,
                after_id=fill.last,
                n=share,
                min_replies=RecordBuilder.min_replies(fmt),
            )
            if split is None:
                return False
        request = asyncio.ensure_future(
            helper.turns(
                reservation, fmt, flt, fill.last, split, _batch_size(share), kept is not None
            )
        )
        own = iter_turn_records(
            sessions,
            fmt,
            flt,
            pseudonym_secret=secret,
            after_id=split,
            batch_size=_batch_size(share),
            read_ahead_until=share + 1,
            retain=retained,
            fill=kept,
        )
        async with contextlib.aclosing(own) as turns:
            # Build this process's share while the helper builds its own; what else the page
            # needs is built once the helper's records are counted.
            ahead: list[Turn] = []
            built = 0
            own_share = fill.limit - int(fill.limit * HELPER_SHARE)
            async for turn in turns:
                ahead.append(turn)
                built += len(turn[1])
                if request.done() or built >= own_share:
                    break
            try:
                shared = await request
            except HelperError as error:
                _log.warning("building the page in one process: %s", error)
                return False
            for key, records in shared:
                if not fill.add(key, [orjson.Fragment(record) for record in records]):
                    return True
            for key, records in ahead:
                if not fill.add(key, records):
                    return True
            async for key, records in turns:
                if not fill.add(key, records):
                    return True
            return True
    finally:
        if request is not None and not request.done():
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError, HelperError):
                await request
        helper.release(reservation)


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
