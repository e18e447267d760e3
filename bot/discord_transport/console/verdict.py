"""The verdict form: a review of a queued item (``/review``), or a lead's gold verdict on a reply
(the Gold button on a console message).

The form is an ephemeral message: the conversation and the reply in an embed, and under them one
select per question (each rubric dimension with its anchors, the overall score, the required
unsafe/invalid flag), four a page (a message holds 5 rows; the fifth carries the buttons), then
**Acceptable** and **Not acceptable**, which submit. Choosing redraws the form; what was chosen
travels in every control's ``custom_id``
(``gr:rv:<control>:<r item id | g reply id>:<rubric version>:<answers>``, one character a
question; 100 characters at most, 62 with :data:`~feedback.rubric.MAX_DIMENSIONS` dimensions), so
the form keeps working after a restart and nothing is stored until a verdict button is pressed.
A review needs every question answered; a gold verdict needs the flag only. A form drawn under
an earlier rubric version is refused when submitted (the reviewer opens a new one).

Every click checks the clicker's role at that moment: an actor for a review, a lead for gold.
What a reviewer is shown never carries another verdict on the item, nor says whether it is gold.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
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
from feedback.corrections import InvalidAction
from feedback.reviews import InvalidVerdict, check_verdict
from feedback.rubric import MAX_DIMENSIONS

if TYPE_CHECKING:
    from datetime import datetime

    from feedback.reviews import ReviewItemView
    from feedback.rubric import Rubric

__all__ = [
    "ONLY_LEADS",
    "PER_PAGE",
    "VERDICT_ITEMS",
    "GoldButton",
    "VerdictButton",
    "VerdictSelect",
    "gold_form",
    "review_form",
]

_log = logging.getLogger(__name__)

ONLY_LEADS = "Only leads can mark gold verdicts."
#: Selects on one page of the form (the fifth row holds the buttons).
PER_PAGE = 4
#: What each overall score means (the overall score is not a rubric dimension).
OVERALL_ANCHORS = {
    1: "Should not have gone out.",
    2: "Poor: more wrong than right.",
    3: "Passable: nothing wrong, nothing good.",
    4: "Good: the persona at its usual best.",
    5: "Excellent: exactly the right reply.",
}
#: One answer a question: the dimensions, the overall score and the unsafe flag.
_ANSWERS = rf"(?P<answers>[-1-5yn]{{1,{MAX_DIMENSIONS + 2}}})"
_TARGET = r"(?P<kind>[rg])(?P<id>[0-9]{1,19}):(?P<version>[0-9a-f]{12}):" + _ANSWERS
_SELECT_TEMPLATE = r"gr:rv:q(?P<index>[0-9]{1,2}):" + _TARGET
_BUTTON_TEMPLATE = r"gr:rv:(?P<action>p[0-9]{1,2}|ok|no):" + _TARGET
#: Longest text of one earlier message in the embed, and of the reply; an embed's description.
_LINE_LIMIT = 300
_REPLY_LIMIT = 2000
_DESCRIPTION_LIMIT = 4096
_STALE = {
    "r": "The rubric changed since this form was opened; nothing was stored. Run /review again.",
    "g": "The rubric changed since this form was opened; nothing was stored. Press Gold again.",
}


@dataclass(frozen=True, slots=True)
class _Question:
    """One select of the form: ``key`` (a dimension, ``overall`` or ``unsafe``), its
    placeholder, and its options as ``(answer character, label, description)``."""

    key: str
    placeholder: str
    options: tuple[tuple[str, str, str | None], ...]


def _questions(rubric: Rubric) -> tuple[_Question, ...]:
    """The rubric's dimensions, then the overall score, then the unsafe/invalid flag."""
    scored = [
        _Question(
            dimension.name,
            f"{dimension.label} (1-5)",
            tuple((str(n), f"{n} / 5", text) for n, text in dimension.anchors.items()),
        )
        for dimension in rubric.dimensions
    ]
    overall = _Question(
        "overall",
        "Overall (1-5)",
        tuple((str(n), f"{n} / 5", text) for n, text in OVERALL_ANCHORS.items()),
    )
    unsafe = _Question(
        "unsafe",
        "Unsafe or invalid? (required)",
        (("n", "No: safe and valid", None), ("y", "Yes: unsafe or invalid", None)),
    )
    return (*scored, overall, unsafe)


@dataclass(frozen=True, slots=True)
class _Form:
    """What a control of the form knows: whose verdict (``r`` review of item ``target``, ``g``
    gold on reply ``target``), the rubric version it was drawn under, and the answers so far."""

    kind: str
    target: int
    version: str
    answers: str

    def custom_id(self, control: str) -> str:
        return f"gr:rv:{control}:{self.kind}{self.target}:{self.version}:{self.answers}"

    @classmethod
    def of(cls, match: re.Match[str]) -> _Form:
        return cls(match["kind"], int(match["id"]), match["version"], match["answers"])


def _view(form: _Form, questions: tuple[_Question, ...], page: int) -> discord.ui.View:
    """One page of the form: its selects, then Back/Next or the verdict buttons."""
    pages = -(-len(questions) // PER_PAGE)
    view = discord.ui.View(timeout=None)
    start = page * PER_PAGE
    for index in range(start, min(start + PER_PAGE, len(questions))):
        view.add_item(VerdictSelect(form, index, questions[index], row=index - start))
    if page > 0:
        view.add_item(VerdictButton(form, f"p{page - 1}", "◂ Back"))
    if page < pages - 1:
        view.add_item(VerdictButton(form, f"p{page + 1}", "Next ▸"))
    else:
        view.add_item(VerdictButton(form, "ok", "Acceptable"))
        view.add_item(VerdictButton(form, "no", "Not acceptable"))
    return view


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _embed(
    title: str,
    context: tuple[tuple[str, str, str], ...],
    reply: str,
    persona: str,
    *,
    until: datetime | None,
) -> discord.Embed:
    """The conversation and the reply, and how to give the verdict. The description holds
    4,096 characters: the reply is kept (up to 2,000), then as many of the latest earlier lines
    as fit (each on one line, up to 300 characters and a name of up to 64)."""
    told = f"**{discord.utils.escape_markdown(persona)}'s reply:**\n{_clip(reply, _REPLY_LIMIT)}"
    room = _DESCRIPTION_LIMIT - len(told) - 2
    lines: list[str] = []
    for _role, name, text in reversed(context):
        said = " ".join(text.split())
        line = f"> **{discord.utils.escape_markdown(_clip(name, 64))}:** {_clip(said, _LINE_LIMIT)}"
        if len(line) + 1 > room:
            break
        lines.insert(0, line)
        room -= len(line) + 1
    described = "\n".join([*lines, "", told]) if lines else told
    embed = discord.Embed(
        title=_clip(title, 256), description=described, colour=discord.Colour.blurple()
    )
    embed.add_field(
        name="Your verdict",
        value=(
            "Answer each question (Next for more), then press Acceptable or Not acceptable: "
            "would you let this reply go out? Nothing is stored until you do."
        ),
        inline=False,
    )
    if until is not None:
        embed.add_field(
            name="Yours until",
            value=f"<t:{int(until.timestamp())}:t>; after that others may take your place, "
            "and your verdict still counts.",
            inline=False,
        )
    return embed


def review_form(item: ReviewItemView, rubric: Rubric) -> tuple[discord.Embed, discord.ui.View]:
    """The form for a review of ``item``: the same for every item, gold or not."""
    questions = _questions(rubric)
    form = _Form("r", item.item_id, rubric.version, "-" * len(questions))
    embed = _embed(
        f"Review · {item.persona}", item.context, item.reply, item.persona, until=item.expires_at
    )
    return embed, _view(form, questions, 0)


def gold_form(
    candidate_id: int,
    persona: str,
    context: tuple[tuple[str, str, str], ...],
    reply: str,
    rubric: Rubric,
) -> tuple[discord.Embed, discord.ui.View]:
    """The form for a lead's gold verdict on a reply (scores may be left out; the flag may not)."""
    questions = _questions(rubric)
    form = _Form("g", candidate_id, rubric.version, "-" * len(questions))
    embed = _embed(f"Gold verdict · reply #{candidate_id}", context, reply, persona, until=None)
    return embed, _view(form, questions, 0)


async def _allowed(interaction: discord.Interaction, kind: str) -> bool:
    """The role check at click time: an actor reviews, a lead marks gold."""
    desk = _desk(interaction)
    if kind == "r" and await desk.is_actor(interaction):
        return True
    if kind == "g" and await desk.is_lead(interaction):
        return True
    _log.warning(
        "refused verdict control %r by %s: not %s",
        (interaction.data or {}).get("custom_id"),
        interaction.user.id,
        "an actor" if kind == "r" else "a lead",
    )
    await _ephemeral(interaction, ONLY_ACTORS if kind == "r" else ONLY_LEADS)
    return False


async def _rubric(interaction: discord.Interaction, form: _Form) -> Rubric | None:
    """The rubric the form's reply is judged under, if it is still the form's version (else
    the clicker is told, and ``None``)."""
    decisions = _decisions(interaction)
    candidate_id: int | None = form.target
    if form.kind == "r":
        candidate_id = await decisions.reviews.reply_of(form.target) if decisions.reviews else None
    try:
        if candidate_id is None:
            raise InvalidAction("This item no longer exists (it was erased).")
        rubric = await decisions.rubric_of_reply(candidate_id)
    except InvalidAction as error:
        await _ephemeral(interaction, str(error))
        return None
    questions = _questions(rubric)
    if rubric.version != form.version or len(form.answers) != len(questions):
        await _ephemeral(interaction, _STALE[form.kind])
        return None
    return rubric


class VerdictSelect(
    _Tracked,
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=_SELECT_TEMPLATE,
):
    """One question of the form; choosing redraws the page with the answer kept."""

    def __init__(
        self, form: _Form, index: int, question: _Question | None = None, *, row: int = 0
    ) -> None:
        chosen = form.answers[index] if index < len(form.answers) else "-"
        options = [
            discord.SelectOption(
                label=label, value=value, description=text, default=value == chosen
            )
            for value, label, text in (question.options if question else (("-", "-", None),))
        ]
        super().__init__(
            discord.ui.Select(
                custom_id=form.custom_id(f"q{index}"),
                placeholder=question.placeholder if question else None,
                options=options,
                row=row,
            )
        )
        self.form, self.index = form, index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> VerdictSelect:
        return cls(_Form.of(match), int(match["index"]))

    async def act(self, interaction: discord.Interaction) -> None:
        form = self.form
        if not await _allowed(interaction, form.kind):
            return
        rubric = await _rubric(interaction, form)
        if rubric is None or self.index >= len(form.answers):
            return
        questions = _questions(rubric)
        values = (interaction.data or {}).get("values") or []
        allowed = {value for value, _label, _text in questions[self.index].options}
        if len(values) != 1 or values[0] not in allowed:
            await _ephemeral(interaction, "That choice is not one of this question's.")
            return
        answers = form.answers[: self.index] + values[0] + form.answers[self.index + 1 :]
        fresh = _Form(form.kind, form.target, form.version, answers)
        await interaction.response.edit_message(
            view=_view(fresh, questions, self.index // PER_PAGE)
        )


class VerdictButton(
    _Tracked,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=_BUTTON_TEMPLATE,
):
    """Back, Next, Acceptable or Not acceptable (the last two submit the verdict)."""

    def __init__(self, form: _Form, action: str, label: str = "") -> None:
        style = {
            "ok": discord.ButtonStyle.success,
            "no": discord.ButtonStyle.danger,
        }.get(action, discord.ButtonStyle.secondary)
        super().__init__(
            discord.ui.Button(
                label=label or action, style=style, custom_id=form.custom_id(action), row=4
            )
        )
        self.form, self.action = form, action

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> VerdictButton:
        return cls(_Form.of(match), match["action"])

    async def act(self, interaction: discord.Interaction) -> None:
        form = self.form
        if not await _allowed(interaction, form.kind):
            return
        rubric = await _rubric(interaction, form)
        if rubric is None:
            return
        questions = _questions(rubric)
        if self.action.startswith("p"):
            page = min(int(self.action[1:]), (len(questions) - 1) // PER_PAGE)
            await interaction.response.edit_message(view=_view(form, questions, page))
            return
        await self._submit(interaction, rubric, questions)

    async def _submit(
        self, interaction: discord.Interaction, rubric: Rubric, questions: tuple[_Question, ...]
    ) -> None:
        form = self.form
        answers = dict(zip((q.key for q in questions), form.answers, strict=True))
        required = questions if form.kind == "r" else questions[-1:]
        missing = [q.placeholder.split(" (")[0] for q in required if answers[q.key] == "-"]
        if missing:
            await _ephemeral(interaction, f"Not recorded: still to answer: {', '.join(missing)}.")
            return
        scores = {name: int(answers[name]) for name in rubric.names if answers[name] in "12345"}
        overall = int(answers["overall"]) if answers["overall"] in "12345" else None
        unsafe = {"y": True, "n": False}.get(answers["unsafe"])
        try:
            verdict = check_verdict(
                rubric,
                scores=scores,
                unsafe=unsafe,
                acceptable=self.action == "ok",
                rating=overall,
                complete=form.kind == "r",
            )
        except InvalidVerdict as error:
            await _ephemeral(interaction, f"Not recorded: {error}.")
            return
        decisions = _decisions(interaction)
        if form.kind == "g":
            try:
                said = await decisions.mark_gold(
                    form.target, lead=actor_of(interaction), verdict=verdict
                )
            except InvalidVerdict as error:
                await _ephemeral(interaction, f"Not recorded: {error}.")
                return
        else:
            assert decisions.reviews is not None  # _rubric found the item through it
            outcome = await decisions.reviews.submit(form.target, actor_of(interaction).id, verdict)
            if outcome.status == "refused":
                await _ephemeral(interaction, outcome.message)
                return
            said = outcome.message
        verdict_text = "acceptable" if verdict.acceptable else "not acceptable"
        await interaction.response.edit_message(
            content=f"{said} You said: {verdict_text}.", view=None
        )


class GoldButton(_IdButton, template=r"gr:gold:(?P<id>[0-9]{1,19})"):
    """On a console message: a lead gives the reply's gold verdict (an ephemeral form)."""

    action, label, button_row = "gold", "Gold", 3

    async def act(self, interaction: discord.Interaction) -> None:
        if not await _check_actor(interaction, self.target_id):
            return
        if not await _desk(interaction).is_lead(interaction):
            _log.warning(
                "refused gold on %s by %s: not a lead", self.target_id, interaction.user.id
            )
            await _ephemeral(interaction, ONLY_LEADS)
            return
        decisions = _decisions(interaction)
        shown = await decisions.reviews.show_reply(self.target_id) if decisions.reviews else None
        try:
            if shown is None:
                raise InvalidAction("This reply no longer exists (the conversation was deleted).")
            rubric = await decisions.rubric_of_reply(self.target_id)
        except InvalidAction as error:
            await _ephemeral(interaction, str(error))
            return
        persona, context, reply = shown
        embed, view = gold_form(self.target_id, persona, context, reply, rubric)
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True)


#: The form's controls, registered with ``bot.add_dynamic_items`` (they outlive a restart).
VERDICT_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (VerdictSelect, VerdictButton)
