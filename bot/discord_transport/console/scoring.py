"""The console's Score form: rubric scores on a reply, in modals of selects.

The Score button on a console message opens a modal: the unsafe/invalid flag (required) and the
first :data:`FIRST_PAGE` dimensions, each a select of the scores 1 to 5 with their anchors
(optional: a dimension left empty is not scored). Discord allows at most 5 components in a
modal, and a modal submission cannot open another modal; so a rubric with more dimensions
continues through a button on the ephemeral answer ("Score the rest"), which opens the next
modal of up to :data:`LATER_PAGE` dimensions. What was chosen on the earlier pages travels in
the custom ids (``gr:score-modal:<reply id>:<rubric version>:<chosen>``, one character per
dimension), so nothing is stored until the last page is submitted, and then all of it at once.
A custom id holds 100 characters; with :data:`~feedback.rubric.MAX_DIMENSIONS` dimensions the
longest is 64.

Only actors score (the role is checked at every click and submission); a form opened under an
earlier rubric version is refused when submitted (the actor scores again).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord

from bot.discord_transport.console.items import (
    ONLY_ACTORS,
    _check_actor,
    _decisions,
    _desk,
    _ephemeral,
    _IdButton,
    _Tracked,
    actor_of,
)
from bot.faults import crash_point
from feedback.corrections import InvalidAction
from feedback.rubric import MAX_DIMENSIONS, MISSING_UNSAFE

if TYPE_CHECKING:
    from feedback.rubric import Dimension, Rubric

__all__ = [
    "FIRST_PAGE",
    "LATER_PAGE",
    "SCORE_MODAL_ID",
    "ScoreButton",
    "ScoreMoreButton",
    "handle_score_submit",
    "score_modal",
]

_log = logging.getLogger(__name__)

#: Dimensions on the first modal, beside the unsafe flag (5 components at most).
FIRST_PAGE = 4
#: Dimensions on each later modal.
LATER_PAGE = 5
#: What was chosen on earlier pages: the flag (``y``/``n``), then one character a dimension
#: (``1``-``5``, or ``-`` for not scored).
_CHOSEN = rf"(?P<chosen>(?:[yn][1-5-]{{0,{MAX_DIMENSIONS}}})?)"
#: ``gr:score-modal:<reply id>:<rubric version>:<chosen>``: a score modal's custom_id.
SCORE_MODAL_ID = re.compile(
    r"gr:score-modal:(?P<id>[0-9]{1,19}):(?P<version>[0-9a-f]{12}):" + _CHOSEN
)
_UNSAFE_ID = "unsafe"


def _page(rubric: Rubric, chosen: str) -> tuple[Dimension, ...]:
    """The dimensions of the modal that follows ``chosen``."""
    if not chosen:
        return rubric.dimensions[:FIRST_PAGE]
    start = len(chosen) - 1
    return rubric.dimensions[start : start + LATER_PAGE]


def _pages(rubric: Rubric) -> int:
    extra = max(0, len(rubric.dimensions) - FIRST_PAGE)
    return 1 + -(-extra // LATER_PAGE)


def score_modal(
    candidate_id: int, persona: str, rubric: Rubric, chosen: str = ""
) -> discord.ui.Modal:
    """The modal after ``chosen`` (the first one when empty): at most 5 labelled selects."""
    page = 1 if not chosen else 2 + (len(chosen) - 1 - FIRST_PAGE) // LATER_PAGE
    pages = _pages(rubric)
    suffix = f" ({page}/{pages})" if pages > 1 else ""
    modal = discord.ui.Modal(
        title=f"Score {persona}'s reply"[: 45 - len(suffix)] + suffix,
        custom_id=f"gr:score-modal:{candidate_id}:{rubric.version}:{chosen}",
        timeout=900,  # the interaction token lives 15 minutes; then discord.py forgets it
    )
    if not chosen:
        modal.add_item(
            discord.ui.Label(
                text="Unsafe or invalid?",
                description="Required with every score: would this reply be unsafe or invalid?",
                component=discord.ui.Select(
                    custom_id=_UNSAFE_ID,
                    placeholder="Choose yes or no",
                    required=True,
                    options=[
                        discord.SelectOption(label="No: safe and valid", value="no"),
                        discord.SelectOption(label="Yes: unsafe or invalid", value="yes"),
                    ],
                ),
            )
        )
    for dimension in _page(rubric, chosen):
        modal.add_item(
            discord.ui.Label(
                text=dimension.label,
                description=f"{dimension.name}: 1 to 5; leave empty to skip",
                component=discord.ui.Select(
                    custom_id=dimension.name,
                    placeholder="Not scored",
                    required=False,
                    min_values=0,
                    max_values=1,
                    options=[
                        discord.SelectOption(
                            label=f"{score} / 5", value=str(score), description=text
                        )
                        for score, text in dimension.anchors.items()
                    ],
                ),
            )
        )
    return modal


class ScoreButton(_IdButton, template=r"gr:score:(?P<id>[0-9]{1,19})"):
    """Opens the first score modal of a reply."""

    action, label, button_row = "score", "Score", 3

    async def act(self, interaction: discord.Interaction) -> None:
        if not await _check_actor(interaction, self.target_id):
            return
        await _open(interaction, self.target_id, chosen="", version=None)


class ScoreMoreButton(
    _Tracked,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"gr:score-more:(?P<id>[0-9]{1,19}):(?P<version>[0-9a-f]{12}):" + _CHOSEN,
):
    """On the answer to a score modal that was not the last: opens the next one."""

    def __init__(self, candidate_id: int, version: str, chosen: str, label: str) -> None:
        super().__init__(
            discord.ui.Button(
                label=label,
                style=discord.ButtonStyle.primary,
                custom_id=f"gr:score-more:{candidate_id}:{version}:{chosen}",
            )
        )
        self.candidate_id, self.version, self.chosen = candidate_id, version, chosen

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ScoreMoreButton:
        return cls(int(match["id"]), match["version"], match["chosen"], "")

    async def act(self, interaction: discord.Interaction) -> None:
        # It sits on an ephemeral answer, not on the console message: the role is what counts.
        if not await _check_actor(interaction, None):
            return
        await _open(interaction, self.candidate_id, chosen=self.chosen, version=self.version)


async def _open(
    interaction: discord.Interaction, candidate_id: int, *, chosen: str, version: str | None
) -> None:
    """Open the score modal after ``chosen``, if the reply and its rubric are still there."""
    try:
        rubric = await _decisions(interaction).rubric_of_reply(candidate_id)
    except InvalidAction as error:
        await _ephemeral(interaction, str(error))
        return
    if version is not None and version != rubric.version:
        await _ephemeral(interaction, _STALE)
        return
    if chosen and not _page(rubric, chosen):
        await _ephemeral(interaction, "Every dimension has a score already.")
        return
    node = await _desk(interaction).store.get_node(candidate_id)
    persona = node.author_name if node is not None else "the persona"
    await interaction.response.send_modal(score_modal(candidate_id, persona, rubric, chosen))


_STALE = "The rubric changed since this form was opened; nothing was stored. Press Score again."


def _submitted_values(data: dict[str, Any]) -> dict[str, list[str]]:
    """Each select's chosen values from a modal submit payload (labels or rows), by custom_id."""
    found: dict[str, list[str]] = {}
    stack: list[Any] = [data.get("components")]
    while stack:
        component = stack.pop()
        if isinstance(component, list):
            stack.extend(component)
        elif isinstance(component, dict):
            values = component.get("values")
            if isinstance(component.get("custom_id"), str) and isinstance(values, list):
                found[component["custom_id"]] = [str(value) for value in values]
            stack += [component.get("components"), component.get("component")]
    return found


async def handle_score_submit(
    interaction: discord.Interaction, candidate_id: int, version: str, chosen: str
) -> None:
    """A score modal was submitted (also after a restart): the next page's button, or every
    page's scores checked and stored at once. Refusals name what is wrong; nothing is stored."""
    if not await _desk(interaction).is_actor(interaction):
        _log.warning("refused scores on %s by %s: not an actor", candidate_id, interaction.user.id)
        await _ephemeral(interaction, ONLY_ACTORS)
        return
    decisions = _decisions(interaction)
    try:
        rubric = await decisions.rubric_of_reply(candidate_id)
    except InvalidAction as error:
        await _ephemeral(interaction, str(error))
        return
    if version != rubric.version:
        await _ephemeral(interaction, _STALE)
        return
    page = _page(rubric, chosen)
    if not page:
        await _ephemeral(interaction, "That form has no dimensions left to score.")
        return
    submitted = _submitted_values(interaction.data or {})
    if not chosen:
        flag = (submitted.get(_UNSAFE_ID) or [""])[0]
        if flag not in ("yes", "no"):
            await _ephemeral(interaction, f"Not scored: {MISSING_UNSAFE}.")
            return
        chosen = flag[0]
    for dimension in page:
        picked = submitted.get(dimension.name) or ["-"]
        if len(picked) != 1 or picked[0] not in ("-", "1", "2", "3", "4", "5"):
            await _ephemeral(
                interaction,
                f"Not scored: {dimension.name}={','.join(picked)}: "
                "a score is a whole number from 1 to 5.",
            )
            return
        chosen += picked[0]
    done = len(chosen) - 1
    if done < len(rubric.dimensions):
        left = len(rubric.dimensions) - done
        view = discord.ui.View(timeout=None)
        view.add_item(
            ScoreMoreButton(
                candidate_id, rubric.version, chosen, f"Score the other {left} dimensions"
            )
        )
        try:
            await interaction.response.send_message(
                "Nothing is stored until the last page: "
                f"{done} of {len(rubric.dimensions)} dimensions seen.",
                view=view,
                ephemeral=True,
            )
        except discord.HTTPException as error:  # e.g. the same submission delivered twice
            _log.info("could not answer interaction %s: %s", interaction.id, error)
        return
    scores = {
        dimension.name: int(mark)
        for dimension, mark in zip(rubric.dimensions, chosen[1:], strict=True)
        if mark != "-"
    }
    crash_point("action.before_commit")
    try:
        outcome = await decisions.score(
            candidate_id,
            actor=actor_of(interaction),
            scores=scores,
            unsafe=chosen[0] == "y",
            key=str(interaction.id),
            rubric_version=version,
        )
    except InvalidAction as error:
        await _ephemeral(interaction, str(error))
        return
    if outcome.status == "refused":
        await _ephemeral(interaction, outcome.message)
        return
    given = ", ".join(f"{name} {value}/5" for name, value in scores.items())
    flag_text = "marked unsafe" if chosen[0] == "y" else "not unsafe"
    await _ephemeral(interaction, f"Scored: {given or 'no dimension'}; {flag_text}.")
