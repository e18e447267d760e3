"""The stability harness's simulated user: openings first, then its model, roles turned round."""

from __future__ import annotations

import itertools
import random

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from bot.evaluation.openings import CONTINUATIONS
from bot.evaluation.simulated_user import MAX_USER_CHARS, SEEN_LINES, SimulatedUser
from bot.llm import FakeChatModel
from personas import PersonaRegistry


def _user(replies: list[str], opening: tuple[str, ...] = ("Hi.", "Busy night?")) -> SimulatedUser:
    return SimulatedUser(
        FakeChatModel(replies=replies),
        persona=PersonaRegistry.load().get("Marlowe"),
        user_name="Sam",
        opening=opening,
        rng=random.Random(0),
    )


def _transcript(exchanges: int) -> list[tuple[str, str]]:
    return [
        line
        for i in range(exchanges)
        for line in (("user", f"user line {i}"), ("persona", f"persona line {i}"))
    ]


async def test_the_opening_comes_first_then_the_model() -> None:
    user = _user(["Sam: What case are you on?\nMarlowe: None of your business."])

    first = await user.next_line([])
    second = await user.next_line(_transcript(1))
    third = await user.next_line(_transcript(2))

    assert (first.text, first.source) == ("Hi.", "opening")
    assert (second.text, second.source) == ("Busy night?", "opening")
    # The model's line, without its speaker label and without the turn it invented after it.
    assert (third.text, third.source) == ("What case are you on?", "model")


def test_the_user_model_sees_the_conversation_with_the_roles_turned_round() -> None:
    user = _user([])

    messages = user.prompt(_transcript(2))

    assert isinstance(messages[0], SystemMessage)
    assert "You are Sam" in str(messages[0].content) and "Marlowe" in str(messages[0].content)
    assert [(type(m), m.content) for m in messages[1:]] == [
        (AIMessage, "user line 0"),
        (HumanMessage, "persona line 0"),
        (AIMessage, "user line 1"),
        (HumanMessage, "persona line 1"),
    ]


def test_the_window_moves_in_steps_so_the_prompt_keeps_its_prefix() -> None:
    user = _user([])
    prompts = [user.prompt(_transcript(n)) for n in range(1, 40)]

    assert all(len(p) - 1 <= SEEN_LINES for p in prompts)
    assert all(isinstance(p[1], HumanMessage) for p in prompts[SEEN_LINES:])  # the persona's
    moves = sum(1 for a, b in itertools.pairwise(prompts) if b[: len(a)] != a)
    # Full from 9 exchanges on (16 lines), then one move every 4 (8 lines): 8 moves over 39
    # exchanges, where a window sliding every turn would have moved 31 times.
    assert SEEN_LINES == 16 and moves == 8


@pytest.mark.parametrize("reply", ["   ", "Marlowe: That's my line.", "user line 1"])
async def test_nothing_usable_or_a_repeat_becomes_a_stock_line(reply: str) -> None:
    user = _user([reply], opening=())

    line = await user.next_line(_transcript(2))

    assert line.source == "continuation" and line.text in CONTINUATIONS


async def test_a_long_line_is_cut_at_a_word() -> None:
    user = _user(["word " * 200], opening=())

    line = await user.next_line(_transcript(1))

    assert line.source == "model" and len(line.text) <= MAX_USER_CHARS
    assert line.text.endswith("word")
