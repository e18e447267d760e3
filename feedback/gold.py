"""Gold items: a lead's reference verdicts on replies, mixed blind into the review queue.

A lead marks a reply's verdict as gold (:meth:`GoldStore.mark`, from a console or the terminal)
or imports gold verdicts from a JSONL file (:meth:`GoldStore.import_lines`). Each gold reply
gets a review item (or its item, if the reply was queued already, becomes gold), which the queue
serves to every actor once at the ``gold_rate`` of their pulls, looking like any other item
(:mod:`feedback.reviews`). Each actor's reviews of gold items give their gold accuracy
(:func:`feedback.reviews.gold_correct`). Marking a reply gold again replaces its gold verdict.

Only leads may mark or import gold: the caller checks (the Discord console checks the lead role;
the terminal's operator and the ``greenroom`` command's are leads).

One line of an import file::

    {"reply_id": 123, "acceptable": true, "unsafe": false, "overall": 4,
     "scores": {"fidelity": 4, "resonance": 5}, "note": "why this is the reference"}

``reply_id`` is the reply's number (the console's "candidate #123"); ``acceptable`` and
``unsafe`` are required; ``overall``, ``scores`` (dimensions of the reply's rubric, 1 to 5) and
``note`` (at most :data:`MAX_NOTE_CHARS` characters) are optional; other keys are refused. An
import stores every line or none: the first :data:`MAX_PROBLEMS_SHOWN` problems are reported,
each with its line number.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from feedback.models import Conversation, GoldItem, MessageNode, ReviewItem
from feedback.reviews import InvalidVerdict, ReviewPolicy, Verdict, check_verdict, live_actor

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from feedback.rubric import Rubric

__all__ = [
    "MAX_IMPORT_LINES",
    "MAX_LINE_CHARS",
    "MAX_NOTE_CHARS",
    "MAX_PROBLEMS_SHOWN",
    "GoldImportError",
    "GoldStore",
]

_log = logging.getLogger(__name__)

#: Gold items one import may hold (a calibration set, not a dataset).
MAX_IMPORT_LINES = 10_000
#: The longest line an import reads (a verdict with a note is well under it).
MAX_LINE_CHARS = 10_000
#: The longest note a gold verdict keeps.
MAX_NOTE_CHARS = 1_000
#: Problems an import failure lists before it says how many more there are.
MAX_PROBLEMS_SHOWN = 20
#: Replies looked up per query during an import.
_LOOKUP_CHUNK = 500


class GoldImportError(ValueError):
    """An import file has problems; nothing was stored. ``problems`` lists every one, each
    ``line N: what is wrong``; the message shows the first :data:`MAX_PROBLEMS_SHOWN`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        tail = [f"... and {more} more"] if more else []
        super().__init__("nothing imported:\n" + "\n".join([*shown, *tail]))


class _GoldLine(BaseModel):
    """One line of an import file (see the module's docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    reply_id: int = Field(ge=1)
    acceptable: bool
    unsafe: bool
    overall: int | None = None
    scores: dict[str, int] = Field(default_factory=dict)
    note: str | None = Field(default=None, max_length=MAX_NOTE_CHARS)


def _problem(number: int, error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "json_invalid":
        return f"line {number}: not a JSON object ({first.get('ctx', {}).get('error', message)})"
    if first["type"] == "model_type":
        return f"line {number}: not a JSON object"
    return f"line {number}: {where + ': ' if where else ''}{message}"


@dataclass(frozen=True, slots=True)
class _Reply:
    """What marking a reply gold needs to know of it."""

    id: int
    conversation_id: int
    persona: str
    decided_by: str | None


@dataclass
class GoldStore:
    """Marks and imports gold verdicts. ``rubric_for`` gives a persona's rubric (the scores of
    a gold verdict are checked against the rubric of its reply's persona)."""

    sessions: async_sessionmaker[AsyncSession]
    policy: ReviewPolicy
    rubric_for: Callable[[str], Rubric]

    async def rubric_of(self, candidate_id: int) -> Rubric:
        """The rubric a reply is judged under; :class:`InvalidVerdict` when it is no reply or
        its persona's rubric is broken."""
        async with self.sessions() as session:
            replies = await self._replies(session, [candidate_id])
        reply = replies.get(candidate_id)
        if reply is None:
            raise InvalidVerdict(f"there is no reply #{candidate_id}")
        return self._rubric(reply.persona)

    def _rubric(self, persona: str) -> Rubric:
        try:
            return self.rubric_for(persona)
        except (ValueError, LookupError) as error:
            raise InvalidVerdict(f"replies of {persona} cannot be scored: {error}") from None

    async def mark(
        self, candidate_id: int, *, by: str, verdict: Verdict, note: str | None = None
    ) -> str:
        """Store ``verdict`` as the gold verdict of a reply (replacing an earlier one), by the
        lead ``by``; returns what was done, in words. :class:`InvalidVerdict` when the reply is
        gone, the note is too long or the rubric changed since the verdict was given."""
        if note is not None and len(note) > MAX_NOTE_CHARS:
            raise InvalidVerdict(f"the note is {len(note):,} characters; the limit is 1,000")
        async with self.sessions() as session, session.begin():
            replies = await self._replies(session, [candidate_id])
            reply = replies.get(candidate_id)
            if reply is None:
                raise InvalidVerdict(f"there is no reply #{candidate_id}")
            if verdict.rubric_version != self._rubric(reply.persona).version:
                raise InvalidVerdict(
                    "the rubric changed since this verdict was given; give it again"
                )
            try:
                replaced = await self._store(session, reply, by, verdict, note)
            except IntegrityError:
                raise InvalidVerdict(
                    "another lead marked this reply at the same moment; try again"
                ) from None
        _log.info("gold verdict on reply %s %s by %s", candidate_id, replaced, by)
        return f"Gold verdict {replaced} on reply #{candidate_id}."

    async def import_lines(self, lines: Iterable[str], *, by: str) -> int:
        """Import gold verdicts, one JSON object a line (blank lines are skipped), by the lead
        ``by``; returns how many were stored. :class:`GoldImportError` lists every problem
        (malformed lines, unknown replies, bad scores, a reply given twice, too many lines), and
        then nothing is stored."""
        problems: list[str] = []
        parsed: list[tuple[int, _GoldLine]] = []
        first_line: dict[int, int] = {}
        given = 0
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            given += 1
            if given > MAX_IMPORT_LINES:
                problems.append(
                    f"line {number}: an import holds at most {MAX_IMPORT_LINES:,} gold items"
                )
                break
            if len(raw) > MAX_LINE_CHARS:
                problems.append(
                    f"line {number}: longer than {MAX_LINE_CHARS:,} characters, the most a "
                    "line may hold"
                )
                continue
            try:
                line = _GoldLine.model_validate_json(raw)
            except ValidationError as error:
                problems.append(_problem(number, error))
                continue
            if line.reply_id in first_line:
                problems.append(
                    f"line {number}: reply_id {line.reply_id} is already on line "
                    f"{first_line[line.reply_id]}"
                )
                continue
            first_line[line.reply_id] = number
            parsed.append((number, line))
        if not parsed and not problems:
            raise GoldImportError(["the file has no gold items (one JSON object a line)"])
        async with self.sessions() as session, session.begin():
            replies = await self._replies(session, [line.reply_id for _, line in parsed])
            checked: list[tuple[_Reply, Verdict, str | None]] = []
            for number, line in parsed:
                reply = replies.get(line.reply_id)
                if reply is None:
                    problems.append(
                        f"line {number}: reply_id {line.reply_id}: no reply has this id "
                        "(a user's message, or not in this database)"
                    )
                    continue
                try:
                    verdict = check_verdict(
                        self._rubric(reply.persona),
                        scores=line.scores,
                        unsafe=line.unsafe,
                        acceptable=line.acceptable,
                        rating=line.overall,
                        complete=False,
                    )
                except InvalidVerdict as error:
                    problems.append(f"line {number}: {error}")
                    continue
                checked.append((reply, verdict, line.note))
            if problems:
                problems.sort(key=lambda text: int(text.split(":", 1)[0].split()[1]))
                raise GoldImportError(problems)
            for reply, verdict, note in checked:
                await self._store(session, reply, by, verdict, note)
        _log.info("imported %d gold verdicts by %s", len(checked), by)
        return len(checked)

    @staticmethod
    async def _replies(session: AsyncSession, ids: list[int]) -> dict[int, _Reply]:
        """The assistant replies among ``ids``, by id (user turns and unknown ids are left
        out)."""
        found: dict[int, _Reply] = {}
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            rows = await session.execute(
                select(
                    MessageNode.id,
                    MessageNode.conversation_id,
                    Conversation.persona,
                    MessageNode.decided_by,
                )
                .join(Conversation, Conversation.id == MessageNode.conversation_id)
                .where(
                    MessageNode.id.in_(ids[start : start + _LOOKUP_CHUNK]),
                    MessageNode.role == "assistant",
                )
            )
            for row in rows:
                found[row.id] = _Reply(row.id, row.conversation_id, row.persona, row.decided_by)
        return found

    async def _store(
        self, session: AsyncSession, reply: _Reply, by: str, verdict: Verdict, note: str | None
    ) -> str:
        """Write the gold verdict and point the reply's review item at it; ``stored`` or
        ``replaced``."""
        gold = await session.scalar(select(GoldItem).where(GoldItem.candidate_id == reply.id))
        replaced = "replaced" if gold is not None else "stored"
        if gold is None:
            gold = GoldItem(candidate_id=reply.id)
            session.add(gold)
        gold.rating = verdict.rating
        gold.scores = dict(verdict.scores)
        gold.unsafe = verdict.unsafe
        gold.acceptable = verdict.acceptable
        gold.rubric_version = verdict.rubric_version
        gold.created_by = by
        gold.note = note
        await session.flush()
        item = await session.scalar(select(ReviewItem).where(ReviewItem.candidate_id == reply.id))
        if item is None:
            session.add(
                ReviewItem(
                    candidate_id=reply.id,
                    conversation_id=reply.conversation_id,
                    live_actor_id=live_actor(reply.decided_by),
                    reason="gold",
                    reviews_needed=self.policy.per_item,
                    status="open",
                    gold_id=gold.id,
                )
            )
        else:
            item.gold_id = gold.id
        await session.flush()
        return replaced
