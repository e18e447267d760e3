"""Why user turns gave no record: counts by reason, each with what would fix it.

Two kinds of skip: turns the export never reads (no consent, an erased user; for the
preference formats, fewer than two replies), counted with SQL by :func:`unread_turns`, and
turns it read that gave no record of the format, classified one by one by
:func:`classify` (called by the export for each such turn, see
:func:`feedback.exports.export_to_file`'s ``on_empty``). Turns outside ``--since``, ``--until``
and ``--persona`` are not skips; :func:`unread_turns` counts them apart (``outside_filter``)
so an empty export can say its filter matched nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import aliased

from feedback.exports.records import CONFLICTING_VERDICTS, PROMPT_BEFORE_MARKERS, RecordBuilder
from feedback.exports.tree import _filter_conditions as filter_conditions
from feedback.exports.tree import consent_rule
from feedback.models import Conversation, MessageNode, UserPrivacy

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from feedback.exports.filters import ExportFilter
    from feedback.exports.tree import TurnTree

__all__ = ["REASONS", "classify", "explain", "unread_turns"]

#: Each reason: what it means, and where to look to fix it.
REASONS: dict[str, tuple[str, str]] = {
    "declined": ("the user said no to training use", "their choice (/consent off)"),
    "no_consent_dm": (
        "no consent: a DM or terminal turn needs the user's yes",
        "see /consent (users) and `/consent on` in `greenroom chat`",
    ),
    "no_consent_server": (
        "no consent: the user has not said, and the server's default is no",
        "see /consent (users) and /consent-default (server admins)",
    ),
    "erased": ("the user asked to be forgotten", "nothing to fix"),
    "one_reply": (
        "only one reply: a preference pair needs two",
        "regenerate (/regen) or rewrite replies in the actor console",
    ),
    "unreviewed": (
        "no actor reviewed the replies",
        "review them in the actor console (approve, rate, rewrite, regenerate)",
    ),
    "tags": ("no reply carries the --tags asked for", "drop --tags, or tag replies when rating"),
    "not_good": (
        "the sent reply was not rated good enough, nor written or approved by an actor",
        "lower --min-rating, or approve or rewrite replies",
    ),
    "no_pair": (
        "no reply was preferred over another",
        "rewrite or regenerate a reply, or rate two replies differently",
    ),
    "not_judged": (
        "no reply was judged good or bad (middling or no ratings)",
        "rate replies, or approve, rewrite or regenerate them",
    ),
    "quality": (
        "the reply does not reach --min-reviews, --min-agreement, --min-trust or --dimension",
        "relax those filters, or have more actors review the replies (/review)",
    ),
    "not_trainable": (
        "the sent reply was a fallback line, a greeting or an unreviewed timeout",
        "nothing to fix (such lines are never trained on)",
    ),
    "no_prompt": ("the prompt snapshot is gone (erased)", "nothing to fix"),
    CONFLICTING_VERDICTS: (
        "actors' decisions and ratings disagree (e.g. a rewrite rated below its original)",
        "look at the turn in the console and rate or decide it again",
    ),
    PROMPT_BEFORE_MARKERS: (
        "the prompt was stored before example dialogue was marked",
        "nothing to fix (its examples cannot be told from real turns)",
    ),
}

_CHANNEL_PREFIX = "channel:"


def explain(reason: str) -> str:
    """One line for a reason: what it means; the fix."""
    meaning, fix = REASONS[reason]
    return f"{meaning}; {fix}"


def classify(builder: RecordBuilder, tree: TurnTree, fmt: str) -> str:
    """Why ``tree`` (read by the export) gave no record of ``fmt``."""
    if not tree.reviewed:
        return "unreviewed"
    tags = builder.filter.tags
    if tags and not any(node.carries_any(tags) for node in tree.replies):
        return "tags"
    if not tree.replies or tree.snapshot_for(tree.replies[0]) is None:
        return "no_prompt"
    if builder.filter.filters_quality and not any(
        builder.passes(builder.quality(node)) for node in tree.replies
    ):
        return "quality"
    if fmt in ("openai-sft", "trl-sft"):
        final = tree.final
        if final is None or not final.trainable:
            return "not_trainable"
        return "not_good"
    if fmt in ("openai-dpo", "trl-dpo"):
        return "no_pair"
    if fmt == "trl-kto":
        return "not_judged"
    return "unreviewed"


async def unread_turns(
    sessions: async_sessionmaker[AsyncSession], flt: ExportFilter, fmt: str
) -> dict[str, int]:
    """User turns an export of ``fmt`` with ``flt`` does not read, by reason, and
    ``outside_filter``: turns stored but outside ``--since``/``--until``/``--persona``.

    One grouped query over the user turns (the consent rule is the export's own)."""
    joins, consented = consent_rule(flt)
    conditions = filter_conditions(flt)
    erased = and_(
        UserPrivacy.erased_at.is_not(None), MessageNode.created_at <= UserPrivacy.erased_at
    )
    whens: list[tuple[Any, str]] = []
    if conditions:
        whens.append((~and_(*conditions), "outside_filter"))
    whens += [
        (erased, "erased"),
        (UserPrivacy.consent.is_(False), "declined"),
        (~consented & ~Conversation.scope.startswith(_CHANNEL_PREFIX), "no_consent_dm"),
        (~consented, "no_consent_server"),
    ]
    if RecordBuilder.min_replies(fmt) > 1:
        reply = aliased(MessageNode)
        replies = (
            select(func.count())
            .where(reply.parent_id == MessageNode.id, reply.role == "assistant")
            .scalar_subquery()
        )
        whens.append((replies < RecordBuilder.min_replies(fmt), "one_reply"))
    reason = case(*whens, else_="read").label("reason")
    query = (
        select(reason)
        .select_from(MessageNode)
        .join(Conversation, Conversation.id == MessageNode.conversation_id)
    )
    for target, on in joins:
        query = query.outerjoin(target, on)
    inner = query.where(MessageNode.role == "user").subquery()
    async with sessions() as session:
        rows = (
            await session.execute(select(inner.c.reason, func.count()).group_by(inner.c.reason))
        ).all()
    return {reason: int(count) for reason, count in rows if reason != "read"}
