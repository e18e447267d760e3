"""From conversation trees to training records, one format at a time.

What a record is, per format (every record also carries ``persona_version``, the card version
that produced its prompt):

- ``openai-sft`` / ``trl-sft`` (``{"messages": [...]}``): one per user turn whose sent reply
  an actor stood behind: they wrote it (rewrite, takeover), approved it, or rated it. A rated
  reply counts when its mean rating reaches the good rating (4, or ``--min-rating``), whatever
  else happened to it; an unrated one when an actor wrote or approved it and no
  ``--min-rating`` is given. Fallback lines, greetings, replies sent only because a hold ran
  out, and unreviewed replies are left out.
- ``openai-dpo`` / ``trl-dpo``: one per preference pair among the siblings of a user turn, in
  the one ordering of :func:`preference_key` (ratings, then decisions, then what was
  delivered), where evidence says the chosen reply is better: the actor rewrote the rejected
  one into it, it went out endorsed in place of a sibling an actor turned down, or both are
  rated and it higher. A chosen reply never has a lower mean rating than its rejected one,
  and a reply rated good is never beaten by an unrated one. With ``--min-rating`` the chosen
  reply's mean must reach it. Fallback lines and greetings never pair.
- ``trl-kto``: one per judged reply, ratings first: ``label: true`` when its mean rating
  reaches the good rating (or, unrated, an actor wrote or approved it, without
  ``--min-rating``), ``false`` when its mean is at most 2, or, unrated or middling, an actor
  turned it down (rewrite, regenerate). Unjudged or middling replies give no record.
- ``oasst``: one message tree per reviewed user turn (one an actor acted on): the prompt
  snapshot's conversation as a chain of prompter/assistant messages ending at the user turn
  (only real messages: not the card's example dialogue, nor the ``context`` message of lore
  and memories), and under it every reply sibling with ``rank`` (:func:`preference_key`, 0
  first), ``labels`` (``quality`` = (mean rating - 1) / 4, one per tag as the share of rate
  events carrying it, each ``{"value", "count"}``), ``sent``, ``origin`` and ``state``. The
  persona's system prompt is the tree's ``system``. With ``--min-rating`` the first-ranked
  reply's mean must reach it.

Every record also carries ``quality``, what the actors said of its target reply (the SFT reply,
the DPO ``chosen``, the KTO completion, the oasst tree's first-ranked reply; DPO records add
``rejected_quality``, and each oasst reply carries its own):

- ``scores``: the consensus of each rubric dimension (the median of every actor's latest
  scores, live ``score`` events and reviews, rounded half up), or ``null`` when unscored;
  ``scored_by``: how many actors scored it; ``unsafe``: the scorers' majority (``null`` on a
  tie or none);
- ``reviews``: how many reviews it has, ``review_status`` (``open``, ``accepted``,
  ``disputed``, or ``null`` when never queued), ``rating`` (the reviews' overall rating,
  median rounded half up), ``acceptable`` (the reviews' majority, ``null`` on a tie) and
  ``agreement`` (the share of reviews agreeing with that majority; ``null`` under two);
- ``actors``: the actors who decided it (wrote, approved, turned down, rated, scored or
  reviewed it), pseudonymised, each with their trust weight (:mod:`feedback.trust`), and
  ``trust``: the mean of those weights (``null`` when no actor decided it).

``--min-reviews``, ``--min-agreement``, ``--min-trust`` and ``--dimension NAME>=N`` keep only
records whose target reply's ``quality`` reaches them (``overall`` is the reviews' ``rating``).

A turn gives no record of any format, and is counted in :attr:`RecordBuilder.skipped`, when
its actors' decisions and ratings disagree (a rewrite rated below its original), or when its
prompt was stored before example dialogue was named (its examples cannot be told from real
turns).

The context of a record is the exact prompt the model saw for the reply (its snapshot; a
rewrite shares its original's, a takeover message borrows a sibling's), the card's example
messages keeping their names (``example_user``/``example_assistant``) and the lore and
memories message its name (``context``). All text is passed
through :func:`feedback.redact.redact`; the display names of the speakers known to the turn are
replaced by ``name_<hash>`` pseudonyms, and ids appear only as ``user_<hash>`` / ``actor_<hash>``.

Every record starts with ``record_id`` (``rec_<hash>``, see :mod:`feedback.record_ids`): the
same in every format of one kind and in every export made with the same secret; the erasure
feed names it when the user the record came from is forgotten.
"""

from __future__ import annotations

import math
import re
import statistics
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from feedback.exports.cleaning import TextCleaner
from feedback.exports.filters import LOW_RATING, check_format
from feedback.record_ids import dpo_key, kto_key, oasst_key, record_id, sft_key
from feedback.redact import pseudonym
from feedback.reviews import live_actor, majority

if TYPE_CHECKING:
    from feedback.exports.filters import ExportFilter
    from feedback.exports.tree import ReplyNode, Snapshot, TurnTree
    from feedback.trust import TrustTable

__all__ = [
    "CONFLICTING_VERDICTS",
    "PROMPT_BEFORE_MARKERS",
    "SKIP_REASONS",
    "ConflictingVerdicts",
    "RecordBuilder",
    "preference_key",
]

#: Entries of the pseudonym and names caches.
_TEXT_CACHE_SIZE = 32_768
_SPEAKER_PREFIX = re.compile(r"^([^:\n]{1,64}): ")

Pair = tuple["ReplyNode", "ReplyNode", str]

#: The rating an unrated reply counts as in :func:`preference_key`: the middle of the 1-5 scale,
#: so a reply rated good (4, 5) comes before it and one rated low (1, 2) after it.
UNRATED = 3.0
#: Why a turn gave no record (the export summary counts turns by reason).
CONFLICTING_VERDICTS = "actors' decisions and ratings disagree"
PROMPT_BEFORE_MARKERS = "prompt stored before example markers"
SKIP_REASONS = (CONFLICTING_VERDICTS, PROMPT_BEFORE_MARKERS)
#: States a reply is in when it was set aside without an actor's verdict.
_SET_ASIDE = ("dropped", "withheld")
#: The trust weight of an actor never measured (:data:`feedback.trust.UNMEASURED_TRUST`; not
#: imported from there, which would load the statistics libraries into every export).
_UNMEASURED_TRUST = 0.5
#: The ``--dimension`` name of the reviews' overall rating.
OVERALL = "overall"
_NOT_ACTORS = ("timeout", "safety", None, "")


def _median_half_up(values: list[int]) -> int:
    """The consensus of scores (the rule of :func:`feedback.reviews.consensus`, over live scores
    and reviews together): the median, rounded half up (2.5 -> 3)."""
    return math.floor(statistics.median(values) + 0.5)


def _deciders(node: ReplyNode) -> tuple[str, ...]:
    """The actors who decided on ``node``, each once, in a stable order."""
    actors = [node.author_id] if node.origin in ("rewrite", "takeover") else []
    decided = live_actor(node.decided_by)
    if decided is not None:
        actors.append(decided)
    actors += node.approved_by
    if node.rejected_by is not None:
        actors.append(node.rejected_by)
    actors += [actor for actor, _, _ in node.ratings]
    if node.scored:
        actors += node.scored
    if node.review is not None:
        actors += [review[0] for review in node.review.reviews]
    if len(actors) == 1:
        return () if actors[0] in _NOT_ACTORS else (actors[0],)
    return tuple(dict.fromkeys(actor for actor in actors if actor not in _NOT_ACTORS))


class ConflictingVerdicts(Exception):
    """A decision prefers one reply and both replies' ratings prefer the other."""


def preference_key(node: ReplyNode) -> tuple[float, int, int, int]:
    """The one ordering of a turn's replies (higher first), from the evidence in this order:

    1. ratings: the mean of the actors' ratings, :data:`UNRATED` for none (explicit ranks would
       come before ratings; no actor action records one);
    2. decisions: an actor stood behind it (wrote or approved it) and nobody turned it down,
       over no verdict, over turned down (rewritten, regenerated) or set aside (dropped,
       withheld);
    3. what was delivered: the reply that went out;
    4. the earlier reply (only to make the order total).

    oasst ranks are this order; DPO pairs and KTO labels follow it (see
    :meth:`RecordBuilder.pairs`, :meth:`RecordBuilder.is_good`).
    """
    mean = node.mean_rating
    if node.rejected_by is not None or node.state in _SET_ASIDE:
        decision = 0
    elif node.endorsed:
        decision = 2
    else:
        decision = 1
    return (mean if mean is not None else UNRATED, decision, int(node.is_final), -node.id)


def _evidence(chosen: ReplyNode, rejected: ReplyNode, final: ReplyNode | None) -> str | None:
    """What says ``chosen`` is better than ``rejected`` (``rewrite``, ``pick``, ``rating``)."""
    if chosen.rewrite_of == rejected.id:
        return "rewrite"
    if (
        chosen is final
        and chosen.endorsed
        and chosen.rejected_by is None
        and rejected.rejected_by is not None
    ):
        return "pick"
    chosen_mean, rejected_mean = chosen.mean_rating, rejected.mean_rating
    if chosen_mean is not None and rejected_mean is not None and chosen_mean > rejected_mean:
        return "rating"
    return None


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
        skipped: dict[str, int] | None = None,
        cleaner: TextCleaner | None = None,
        trust: TrustTable | None = None,
    ) -> None:
        if not pseudonym_secret:
            raise ValueError("the pseudonym secret is empty")
        self.filter = flt
        self._trust = trust.weights if trust is not None else {}
        #: The quality of replies nobody scored or reviewed, by their deciders (most replies:
        #: shared, never changed).
        self._plain_quality: dict[tuple[str, ...], dict[str, Any]] = {}
        self._secret = pseudonym_secret
        self._cleaner = cleaner if cleaner is not None else TextCleaner(pseudonym_secret)
        self._clean = self._cleaner.clean
        self._pseudonym = lru_cache(maxsize=_TEXT_CACHE_SIZE)(self._pseudonym_uncached)
        self._tree: TurnTree | None = None
        self._tree_names: dict[int | None, tuple[str, ...]] = {}
        #: Names to mask in a DM or terminal turn, by (user name, persona): they depend on
        #: nothing else there.
        self._direct_names: dict[tuple[str, str], tuple[str, ...]] = {}
        #: User turns left out, by reason (:data:`SKIP_REASONS`), each counted once however
        #: many formats asked for it.
        self.skipped: dict[str, int] = skipped if skipped is not None else {}
        self._last_skipped: int | None = None

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
        """Rated: the mean reaches the good rating. Unrated: an actor wrote or approved it, and
        no ``--min-rating`` asks for a rating (an unrated reply never reaches one)."""
        mean = node.mean_rating
        if mean is not None:
            return mean >= self.filter.good_rating
        return node.endorsed and self.filter.min_rating is None

    def is_bad(self, node: ReplyNode) -> bool:
        """Its mean rating is low; unrated or middling: an actor turned it down. Ratings come
        first: a reply rated good is not bad because it was regenerated later."""
        mean = node.mean_rating
        if mean is not None:
            if mean >= self.filter.good_rating:
                return False
            if mean <= LOW_RATING:
                return True
        return node.rejected_by is not None

    def quality(self, node: ReplyNode) -> dict[str, Any]:
        """What the actors said of ``node`` (see the module docstring, ``quality``). Do not
        change what it returns: records share it."""
        deciders = _deciders(node)
        if node.scored is None and node.review is None:
            plain = self._plain_quality.get(deciders)
            if plain is None:
                if len(self._plain_quality) >= _TEXT_CACHE_SIZE:
                    self._plain_quality.clear()
                plain = self._plain_quality[deciders] = self._quality(node, deciders)
            return plain
        return self._quality(node, deciders)

    def _quality(self, node: ReplyNode, deciders: tuple[str, ...]) -> dict[str, Any]:
        scorers: dict[str, tuple[dict[str, int], bool | None]] = dict(node.scored or {})
        review = node.review
        reviews = review.reviews if review is not None else []
        for actor, _, scores, unsafe, _ in reviews:
            scorers[actor] = (scores, unsafe)
        by_dimension: dict[str, list[int]] = {}
        for scores, _ in scorers.values():
            for name, value in scores.items():
                by_dimension.setdefault(name, []).append(value)
        acceptable, share = majority([verdict[4] for verdict in reviews])
        agreement = round(share, 4) if len(reviews) >= 2 else None
        weights = self._trust
        actors = [
            {
                "actor": self._pseudonym(actor, "actor"),
                "trust": round(weights.get(actor, _UNMEASURED_TRUST), 4),
            }
            for actor in deciders
        ]
        trust = None
        if actors:
            trust = round(sum(actor["trust"] for actor in actors) / len(actors), 4)  # type: ignore[misc]
        return {
            "scores": {name: _median_half_up(values) for name, values in by_dimension.items()}
            or None,
            "scored_by": len(scorers),
            "unsafe": majority([unsafe for _, unsafe in scorers.values() if unsafe is not None])[0],
            "reviews": len(reviews),
            "review_status": review.status if review is not None else None,
            "rating": _median_half_up([verdict[1] for verdict in reviews]) if reviews else None,
            "acceptable": acceptable,
            "agreement": agreement,
            "trust": trust,
            "actors": actors,
        }

    def passes(self, quality: dict[str, Any]) -> bool:
        """Whether a reply's :meth:`quality` reaches the review filters."""
        flt = self.filter
        if flt.min_reviews is not None and quality["reviews"] < flt.min_reviews:
            return False
        if flt.min_agreement is not None and (
            quality["agreement"] is None or quality["agreement"] < flt.min_agreement
        ):
            return False
        if flt.min_trust is not None and (
            quality["trust"] is None or quality["trust"] < flt.min_trust
        ):
            return False
        scores = quality["scores"] or {}
        for rule in flt.dimensions:
            value = quality["rating"] if rule.name == OVERALL else scores.get(rule.name)
            if not rule.passes(value):
                return False
        return True

    def _quality_if_passes(self, node: ReplyNode) -> dict[str, Any] | None:
        """:meth:`quality`, or ``None`` when it does not pass the review filters."""
        quality = self.quality(node)
        if self.filter.filters_quality and not self.passes(quality):
            return None
        return quality

    def pairs(self, tree: TurnTree) -> list[Pair]:
        """``(chosen, rejected, source)`` preference pairs among the turn's replies.

        A pair needs evidence that one reply is better than the other (``source``): ``rewrite``
        (the actor rewrote the rejected one into the chosen one), ``pick`` (the chosen one went
        out with an actor's endorsement in place of a sibling an actor turned down) or
        ``rating`` (both rated, the chosen one higher); and :func:`preference_key` must not
        put the rejected one first. So a chosen reply never has a lower mean rating than its
        rejected one, and a reply rated good is never beaten by an unrated one. With
        ``--min-rating`` the chosen reply's mean must reach it. Raises
        :class:`ConflictingVerdicts` when a decision and both replies' ratings disagree.
        """
        pairs: list[Pair] = []
        if len(tree.replies) < 2:  # every kind of pair needs two siblings
            return pairs
        nodes = [node for node in tree.replies if node.trainable]
        final = tree.final
        minimum = self.filter.min_rating
        for chosen in nodes:
            chosen_mean = chosen.mean_rating
            if minimum is not None and (chosen_mean is None or chosen_mean < minimum):
                continue
            chosen_key = preference_key(chosen)[:-1]
            for rejected in nodes:
                if rejected is chosen:
                    continue
                source = _evidence(chosen, rejected, final)
                if source is None:
                    continue
                if preference_key(rejected)[:-1] > chosen_key:
                    rejected_mean = rejected.mean_rating
                    if (
                        chosen_mean is not None
                        and rejected_mean is not None
                        and rejected_mean > chosen_mean
                    ):
                        raise ConflictingVerdicts(tree.user_turn_id, chosen.id, rejected.id)
                    continue  # a rating outranks the decision: no pair either way
                pairs.append((chosen, rejected, source))
        return pairs

    def _conflicting(self, tree: TurnTree) -> bool:
        """Whether the turn's decisions and ratings disagree (see :meth:`pairs`); only possible
        when two of its replies are rated."""
        if sum(node.rating_count > 0 for node in tree.replies) < 2:
            return False
        try:
            self.pairs(tree)
        except ConflictingVerdicts:
            return True
        return False

    def _skip_reason(self, tree: TurnTree) -> str | None:
        """Why this turn gives no record of any format, or ``None`` (see :data:`SKIP_REASONS`)."""
        for node in tree.replies:
            snapshot = tree.snapshot_for(node)
            if snapshot is not None and not snapshot.examples_named:
                return PROMPT_BEFORE_MARKERS
        if self._conflicting(tree):
            return CONFLICTING_VERDICTS
        return None

    # -- records -------------------------------------------------------------------------

    def sft_messages(self, tree: TurnTree) -> list[dict[str, str]] | None:
        """The context plus the sent reply, if it makes an SFT record."""
        made = self._sft(tree)
        return None if made is None else made[0]

    def _sft(self, tree: TurnTree) -> tuple[list[dict[str, str]], dict[str, Any]] | None:
        """The SFT messages and the sent reply's quality, if it makes an SFT record."""
        final = tree.final
        if final is None or not final.trainable or not self.is_good(final):
            return None
        if not final.carries_any(self.filter.tags):
            return None
        quality = self._quality_if_passes(final)
        if quality is None:
            return None
        prompt = self._context_and_reply(tree, final)
        if prompt is None:
            return None
        context, reply = prompt
        context.append(reply)
        return context, quality

    def dpo_triples(self, tree: TurnTree) -> list[tuple[Any, ...]]:
        """``(prompt, chosen, rejected, persona version, record id, chosen quality, rejected
        quality)`` for each pair whose chosen side passes the tags and the review filters."""
        triples = []
        for chosen, rejected, _source in self.pairs(tree):
            if not chosen.carries_any(self.filter.tags):
                continue
            quality = self._quality_if_passes(chosen)
            if quality is None:
                continue
            prompted = chosen if tree.snapshot_for(chosen) is not None else rejected
            context = self._context(tree, prompted)
            if context is None:
                continue
            snapshot = tree.snapshot_for(prompted)
            assert snapshot is not None  # it gave the context
            key = dpo_key(tree.user_turn_id, chosen.id, rejected.id)
            triples.append(
                (
                    context,
                    self._reply(tree, chosen),
                    self._reply(tree, rejected),
                    snapshot.persona_version,
                    record_id(key, self._secret),
                    quality,
                    self.quality(rejected),
                )
            )
        return triples

    def kto_records(self, tree: TurnTree) -> list[dict[str, Any]]:
        """``{"prompt", "completion", "label"}`` for each judged reply."""
        records = []
        for node in tree.replies:
            if not node.trainable or not node.carries_any(self.filter.tags):
                continue
            if self.is_good(node):
                label = True
            elif self.is_bad(node):
                label = False
            else:
                continue
            quality = self._quality_if_passes(node)
            if quality is None:
                continue
            prompt = self._context_and_reply(tree, node)
            if prompt is None:
                continue
            records.append(
                {
                    "record_id": record_id(kto_key(tree.user_turn_id, node.id), self._secret),
                    "prompt": prompt[0],
                    "completion": [prompt[1]],
                    "label": label,
                    "persona_version": self._persona_version(tree, node),
                    "quality": quality,
                }
            )
        return records

    def oasst_tree(self, tree: TurnTree) -> dict[str, Any] | None:
        """The turn as an OpenAssistant-style message tree, if an actor reviewed it."""
        if not tree.replies or not tree.reviewed:
            return None
        if self.filter.tags and not any(
            node.carries_any(self.filter.tags) for node in tree.replies
        ):
            return None
        ranked = sorted(tree.replies, key=preference_key, reverse=True)
        minimum = self.filter.min_rating
        if minimum is not None:
            best = ranked[0].mean_rating
            if best is None or best < minimum:
                return None
        quality = self._quality_if_passes(ranked[0])
        if quality is None:
            return None
        snapshot = tree.snapshot_for(tree.replies[0])
        context = self._context(tree, tree.replies[0])
        names = self._names(tree, snapshot)
        system = None
        if context and context[0]["role"] == "system" and "name" not in context[0]:
            system = context[0]["content"]
            context = context[1:]
        # Only real messages are nodes: not the card's example dialogue, nor the late system
        # message of lore and memories (each carries a name; real turns have none).
        context = [message for message in context or [] if "name" not in message]
        if not context or context[-1]["role"] != "user":
            turn = {"role": "user", "content": self._clean(tree.content, names)}
            context = [*context, turn]
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
            "record_id": record_id(oasst_key(tree.user_turn_id), self._secret),
            "message_tree_id": turn_message_id,
            "tree_state": "ready_for_export",
            "persona": tree.persona,
            "persona_version": snapshot.persona_version if snapshot is not None else None,
            "system": system,
            "quality": quality,
            "prompt": current,
        }

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
            quality=self.quality(node),
            replies=[],
        )

    def records(self, tree: TurnTree, fmt: str) -> list[dict[str, Any]]:
        """The records of format ``fmt`` that this turn gives, in a stable order; none for a
        turn left out (counted in :attr:`skipped`)."""
        reason = self._skip_reason(tree)
        if reason is not None:
            if self._last_skipped != tree.user_turn_id:
                self._last_skipped = tree.user_turn_id
                self.skipped[reason] = self.skipped.get(reason, 0) + 1
            return []
        version = self._persona_version
        if fmt in ("openai-sft", "trl-sft"):
            made = self._sft(tree)
            if made is None:
                return []
            final = tree.final
            assert final is not None  # _sft found it
            key = sft_key(tree.user_turn_id, final.id)
            return [
                {
                    "record_id": record_id(key, self._secret),
                    "messages": made[0],
                    "persona_version": version(tree, final),
                    "quality": made[1],
                }
            ]
        if fmt == "openai-dpo":
            return [
                {
                    "record_id": rid,
                    "input": {"messages": prompt},
                    "preferred_output": [chosen],
                    "non_preferred_output": [rejected],
                    "persona_version": persona_version,
                    "quality": quality,
                    "rejected_quality": rejected_quality,
                }
                for (
                    prompt,
                    chosen,
                    rejected,
                    persona_version,
                    rid,
                    quality,
                    rejected_quality,
                ) in self.dpo_triples(tree)
            ]
        if fmt == "trl-dpo":
            return [
                {
                    "record_id": rid,
                    "prompt": prompt,
                    "chosen": [chosen],
                    "rejected": [rejected],
                    "persona_version": persona_version,
                    "quality": quality,
                    "rejected_quality": rejected_quality,
                }
                for (
                    prompt,
                    chosen,
                    rejected,
                    persona_version,
                    rid,
                    quality,
                    rejected_quality,
                ) in self.dpo_triples(tree)
            ]
        if fmt == "trl-kto":
            return self.kto_records(tree)
        check_format(fmt)
        oasst = self.oasst_tree(tree)
        return [] if oasst is None else [oasst]

    @staticmethod
    def _persona_version(tree: TurnTree, node: ReplyNode | None) -> str | None:
        """The card version of the prompt a record of ``node`` carries (its snapshot's)."""
        snapshot = tree.snapshot_for(node) if node is not None else None
        return snapshot.persona_version if snapshot is not None else None


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
    quality: dict[str, Any] | None = None,
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
        "quality": quality,
        "replies": replies,
    }
