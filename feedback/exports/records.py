"""From conversation trees to training records, one format at a time.

What a record is, per format:

- ``openai-sft`` / ``trl-sft`` (``{"messages": [...]}``): one per user turn whose sent reply
  an actor stood behind: they wrote it (rewrite, takeover), approved it, or rated it. A rated
  reply counts when its mean rating reaches the good rating (4, or ``--min-rating``), whatever
  else happened to it; an unrated one when an actor wrote or approved it. Fallback lines,
  greetings, replies sent only because a hold ran out, and unreviewed replies are left out.
- ``openai-dpo`` / ``trl-dpo``: one per preference pair among the siblings of a user turn:
  the reply an actor stood behind (rewrite, takeover, or approval of a regenerated candidate)
  over each sibling an actor turned down by rewriting or regenerating it; then, by ratings, a
  sibling with a higher mean rating over one with a lower mean (with ``--min-rating``, the
  preferred side must reach it). A pair the actors' decisions already ordered the other way is
  not added from ratings. Fallback lines and greetings never pair.
- ``trl-kto``: one per judged reply: ``label: true`` when the reply is good (see SFT, any
  sibling, not only the sent one), ``false`` when an actor turned it down (rewrite,
  regenerate) or its mean rating is at most 2. Unjudged or middling replies give no record.
- ``oasst``: one message tree per reviewed user turn (one an actor acted on): the prompt
  snapshot's conversation as a chain of prompter/assistant messages ending at the user turn,
  and under it every reply sibling with ``rank`` (0 is the one actors preferred), ``labels``
  (``quality`` = (mean rating - 1) / 4, one per tag as the share of rate events carrying it,
  each ``{"value", "count"}``), ``sent``, ``origin`` and ``state``. The persona's system prompt
  is the tree's ``system``.

The context of a record is the exact prompt the model saw for the reply (its snapshot; a
rewrite shares its original's, a takeover message borrows a sibling's). All text is passed
through :func:`feedback.redact.redact`; the display names of the speakers known to the turn are
replaced by ``name_<hash>`` pseudonyms, and ids appear only as ``user_<hash>`` / ``actor_<hash>``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from feedback.exports.cleaning import TextCleaner
from feedback.exports.filters import LOW_RATING, check_format
from feedback.redact import pseudonym

if TYPE_CHECKING:
    from feedback.exports.filters import ExportFilter
    from feedback.exports.tree import ReplyNode, Snapshot, TurnTree

__all__ = ["RecordBuilder"]

#: Entries of the pseudonym and names caches.
_TEXT_CACHE_SIZE = 32_768
_SPEAKER_PREFIX = re.compile(r"^([^:\n]{1,64}): ")

Pair = tuple["ReplyNode", "ReplyNode", str]


class RecordBuilder:
    """Turns :class:`TurnTree` values into records of each format (see the module docstring).

    Texts are cleaned by a :class:`~feedback.exports.cleaning.TextCleaner`, which cleans a
    text seen lately only once (pass ``cleaner`` to share one between builders of the same
    secret). The names to mask are worked out once per turn and snapshot.
    """

    def __init__(
        self,
        flt: ExportFilter,
        *,
        pseudonym_secret: bytes,
        cleaner: TextCleaner | None = None,
    ) -> None:
        if not pseudonym_secret:
            raise ValueError("the pseudonym secret is empty")
        self.filter = flt
        self._secret = pseudonym_secret
        self._cleaner = cleaner if cleaner is not None else TextCleaner(pseudonym_secret)
        self._clean = self._cleaner.clean
        self._pseudonym = lru_cache(maxsize=_TEXT_CACHE_SIZE)(self._pseudonym_uncached)
        self._tree: TurnTree | None = None
        self._tree_names: dict[int | None, tuple[str, ...]] = {}
        #: Names to mask in a DM or terminal turn, by (user name, persona): they depend on
        #: nothing else there.
        self._direct_names: dict[tuple[str, str], tuple[str, ...]] = {}

    @staticmethod
    def needs_times(fmt: str) -> bool:
        """Whether records of ``fmt`` show creation times (read trees with ``times=True``)."""
        return fmt == "oasst"

    @staticmethod
    def min_replies(fmt: str) -> int:
        """Replies a turn needs to give a record of ``fmt``: a preference pair needs two."""
        return 2 if fmt in ("openai-dpo", "trl-dpo") else 1

    # -- text ----------------------------------------------------------------------------

    def _pseudonym_uncached(self, identifier: str, prefix: str) -> str:
        return pseudonym(identifier, self._secret, prefix=prefix)

    def _names(self, tree: TurnTree, snapshot: Snapshot | None) -> tuple[str, ...]:
        """Display names to mask: the turn's author, and the speakers of a group's lines."""
        if not tree.is_group:
            key = (tree.user_name, tree.persona)
            names = self._direct_names.get(key)
            if names is None:
                if len(self._direct_names) >= _TEXT_CACHE_SIZE:
                    self._direct_names.clear()
                names = self._direct_names[key] = self._names_uncached(tree, None)
            return names
        if tree is not self._tree:
            self._tree = tree
            self._tree_names = {}
        key = snapshot.id if snapshot is not None else None
        names = self._tree_names.get(key)
        if names is None:
            names = self._tree_names[key] = self._names_uncached(tree, snapshot)
        return names

    @staticmethod
    def _names_uncached(tree: TurnTree, snapshot: Snapshot | None) -> tuple[str, ...]:
        names = {tree.user_name.strip()}
        if tree.is_group and snapshot is not None:
            for message in snapshot.messages:
                if message.get("role") == "user":
                    found = _SPEAKER_PREFIX.match(message.get("content", ""))
                    if found:
                        names.add(found.group(1).strip())
        persona = tree.persona.casefold()
        return tuple(sorted(name for name in names if name and name.casefold() != persona))

    def _messages(self, snapshot: Snapshot, names: tuple[str, ...]) -> list[dict[str, str]]:
        """The snapshot's messages, cleaned."""
        return self._cleaner.messages(snapshot.messages, names)

    def _context(self, tree: TurnTree, node: ReplyNode) -> list[dict[str, str]] | None:
        snapshot = tree.snapshot_for(node)
        if snapshot is None:
            return None
        return self._messages(snapshot, self._names(tree, snapshot))

    def _reply(self, tree: TurnTree, node: ReplyNode) -> dict[str, str]:
        return self._reply_message(node, self._names(tree, tree.snapshot_for(node)))

    def _reply_message(self, node: ReplyNode, names: tuple[str, ...]) -> dict[str, str]:
        return {"role": "assistant", "content": self._clean(node.content, names)}

    def _context_and_reply(
        self, tree: TurnTree, node: ReplyNode
    ) -> tuple[list[dict[str, str]], dict[str, str]] | None:
        """:meth:`_context` and :meth:`_reply` of one node, its names worked out once."""
        snapshot = tree.snapshot_for(node)
        if snapshot is None:
            return None
        names = self._names(tree, snapshot)
        return self._messages(snapshot, names), self._reply_message(node, names)

    # -- verdicts ------------------------------------------------------------------------

    def is_good(self, node: ReplyNode) -> bool:
        """Rated: the mean reaches the good rating. Unrated: an actor wrote or approved it."""
        mean = node.mean_rating
        if mean is not None:
            return mean >= self.filter.good_rating
        return node.endorsed

    def is_bad(self, node: ReplyNode) -> bool:
        """An actor turned it down, or its mean rating is low."""
        if node.rejected_by is not None:
            return True
        mean = node.mean_rating
        return mean is not None and mean <= LOW_RATING and mean < self.filter.good_rating

    def pairs(self, tree: TurnTree) -> list[Pair]:
        """``(chosen, rejected, source)`` preference pairs among the turn's replies."""
        pairs: list[Pair] = []
        if len(tree.replies) < 2:  # both kinds of pair need two siblings
            return pairs
        seen: set[tuple[int, int]] = set()
        final = tree.final
        if final is not None and final.trainable and final.endorsed:
            for loser in tree.replies:
                if loser is final or loser.rejected_by is None or not loser.trainable:
                    continue
                source = "rewrite" if final.rewrite_of == loser.id else "pick"
                pairs.append((final, loser, source))
                seen.add((final.id, loser.id))
        rated = [(node, node.mean_rating) for node in tree.replies if node.trainable]
        rated = [(node, mean) for node, mean in rated if mean is not None]
        minimum = self.filter.min_rating
        for better, better_mean in rated:
            if minimum is not None and better_mean < minimum:
                continue
            for worse, worse_mean in rated:
                if better_mean <= worse_mean or (worse.id, better.id) in seen:
                    continue
                if (better.id, worse.id) not in seen:
                    pairs.append((better, worse, "rating"))
                    seen.add((better.id, worse.id))
        return pairs

    # -- records -------------------------------------------------------------------------

    def sft_messages(self, tree: TurnTree) -> list[dict[str, str]] | None:
        """The context plus the sent reply, if it makes an SFT record."""
        final = tree.final
        if final is None or not final.trainable or not self.is_good(final):
            return None
        if not final.carries_any(self.filter.tags):
            return None
        prompt = self._context_and_reply(tree, final)
        if prompt is None:
            return None
        context, reply = prompt
        context.append(reply)
        return context

    def dpo_triples(
        self, tree: TurnTree
    ) -> list[tuple[list[dict[str, str]], dict[str, str], dict[str, str]]]:
        """``(prompt, chosen, rejected)`` for each pair whose chosen side passes the tags."""
        triples = []
        for chosen, rejected, _source in self.pairs(tree):
            if not chosen.carries_any(self.filter.tags):
                continue
            context = self._context(tree, chosen) or self._context(tree, rejected)
            if context is None:
                continue
            triples.append((context, self._reply(tree, chosen), self._reply(tree, rejected)))
        return triples

    def kto_records(self, tree: TurnTree) -> list[dict[str, Any]]:
        """``{"prompt", "completion", "label"}`` for each judged reply."""
        records = []
        for node in tree.replies:
            if not node.trainable or not node.carries_any(self.filter.tags):
                continue
            if node.rejected_by is not None:
                label = False
            elif self.is_good(node):
                label = True
            elif self.is_bad(node):
                label = False
            else:
                continue
            prompt = self._context_and_reply(tree, node)
            if prompt is None:
                continue
            records.append({"prompt": prompt[0], "completion": [prompt[1]], "label": label})
        return records

    def oasst_tree(self, tree: TurnTree) -> dict[str, Any] | None:
        """The turn as an OpenAssistant-style message tree, if an actor reviewed it."""
        if not tree.replies or not tree.reviewed:
            return None
        if self.filter.tags and not any(
            node.carries_any(self.filter.tags) for node in tree.replies
        ):
            return None
        context = self._context(tree, tree.replies[0])
        names = self._names(tree, tree.snapshot_for(tree.replies[0]))
        system = None
        if context and context[0]["role"] == "system":
            system = context[0]["content"]
            context = context[1:]
        if not context or context[-1]["role"] != "user":
            turn = {"role": "user", "content": self._clean(tree.content, names)}
            context = [*(context or []), turn]
        ranked = sorted(tree.replies, key=self._preference, reverse=True)
        ranks = {node.id: rank for rank, node in enumerate(ranked)}
        turn_message_id = f"gr-{tree.user_turn_id}"
        chain_ids = [f"gr-{tree.user_turn_id}-ctx{i}" for i in range(len(context) - 1)]
        chain_ids.append(turn_message_id)
        replies = [
            self._oasst_reply(tree, node, ranks[node.id], turn_message_id, names)
            for node in tree.replies
        ]
        current: dict[str, Any] | None = None
        for index in range(len(context) - 1, -1, -1):
            message = context[index]
            is_turn = index == len(context) - 1
            current = _oasst_message(
                message_id=chain_ids[index],
                parent_id=chain_ids[index - 1] if index else None,
                user_id=self._pseudonym(tree.user_id, "user") if is_turn else None,
                text=message["content"],
                role="prompter" if message["role"] == "user" else "assistant",
                created_date=tree.created_at.isoformat() if is_turn else None,
                replies=replies if is_turn else [current],
            )
        return {
            "message_tree_id": turn_message_id,
            "tree_state": "ready_for_export",
            "persona": tree.persona,
            "system": system,
            "prompt": current,
        }

    def _preference(self, node: ReplyNode) -> tuple[int, int, float, int]:
        mean = node.mean_rating
        return (
            int(node.is_final and node.endorsed),
            int(node.rejected_by is None and node.state != "dropped"),
            mean if mean is not None else 3.0,
            -node.id,
        )

    def _oasst_reply(
        self,
        tree: TurnTree,
        node: ReplyNode,
        rank: int,
        parent_id: str,
        names: tuple[str, ...],
    ) -> dict[str, Any]:
        snapshot = tree.snapshots.get(node.snapshot_id) if node.snapshot_id else None
        labels: dict[str, dict[str, float | int]] = {}
        mean = node.mean_rating
        if mean is not None:
            labels["quality"] = {"value": round((mean - 1) / 4, 4), "count": node.rating_count}
        if node.ratings:
            events = len(node.ratings)
            for tag, count in sorted(node.tag_counts.items()):
                labels[tag] = {"value": round(count / events, 4), "count": events}
        by_actor = node.origin in ("rewrite", "takeover")
        return _oasst_message(
            message_id=f"gr-{node.id}",
            parent_id=parent_id,
            user_id=self._pseudonym(node.author_id, "actor") if by_actor else None,
            text=self._clean(node.content, names),
            role="assistant",
            created_date=node.created_at.isoformat(),
            rank=rank,
            synthetic=not by_actor,
            model_name=snapshot.model_name if snapshot is not None and not by_actor else None,
            review_count=len(node.ratings),
            labels=labels or None,
            origin=node.origin,
            state=node.state,
            sent=node.is_final,
            replies=[],
        )

    def records(self, tree: TurnTree, fmt: str) -> list[dict[str, Any]]:
        """The records of format ``fmt`` that this turn gives, in a stable order."""
        if fmt in ("openai-sft", "trl-sft"):
            messages = self.sft_messages(tree)
            return [] if messages is None else [{"messages": messages}]
        if fmt == "openai-dpo":
            return [
                {
                    "input": {"messages": prompt},
                    "preferred_output": [chosen],
                    "non_preferred_output": [rejected],
                }
                for prompt, chosen, rejected in self.dpo_triples(tree)
            ]
        if fmt == "trl-dpo":
            return [
                {"prompt": prompt, "chosen": [chosen], "rejected": [rejected]}
                for prompt, chosen, rejected in self.dpo_triples(tree)
            ]
        if fmt == "trl-kto":
            return self.kto_records(tree)
        check_format(fmt)
        oasst = self.oasst_tree(tree)
        return [] if oasst is None else [oasst]


def _oasst_message(
    *,
    message_id: str,
    parent_id: str | None,
    user_id: str | None,
    text: str,
    role: str,
    created_date: str | None,
    replies: list[Any],
    rank: int | None = None,
    synthetic: bool = False,
    model_name: str | None = None,
    review_count: int = 0,
    labels: dict[str, Any] | None = None,
    origin: str | None = None,
    state: str | None = None,
    sent: bool | None = None,
) -> dict[str, Any]:
    """One message of an oasst tree; every message has the same keys (one Arrow schema)."""
    return {
        "message_id": message_id,
        "parent_id": parent_id,
        "user_id": user_id,
        "text": text,
        "role": role,
        "lang": None,
        "created_date": created_date,
        "rank": rank,
        "synthetic": synthetic,
        "model_name": model_name,
        "review_count": review_count,
        "labels": labels,
        "origin": origin,
        "state": state,
        "sent": sent,
        "replies": replies,
    }
