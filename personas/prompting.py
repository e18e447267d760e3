"""Turn card text into prompt text: macro substitution, example dialogue, the system prompt.

Everything here is a pure function of its inputs, so the same persona and user name always
give the same system prompt and the model's KV cache prefix is reused across turns.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .schema import CardData, GreenroomExtension

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "Role",
    "approx_tokens",
    "parse_example_dialogue",
    "render_system_prompt",
    "substitute",
]

Role = Literal["user", "assistant"]

#: Used when a card has no ``system_prompt``; a card's ``{{original}}`` inserts it.
DEFAULT_SYSTEM_PROMPT = (
    "You are {{char}}. Stay in character as {{char}} and reply to {{user}} in {{char}}'s voice. "
    "Keep replies short."
)

_MACRO = re.compile(r"\{\{\s*(char|user)\s*\}\}|<(bot|user)>", re.IGNORECASE)
_ORIGINAL = re.compile(r"\{\{\s*original\s*\}\}", re.IGNORECASE)
_START = re.compile(r"^\s*<start>\s*$", re.IGNORECASE | re.MULTILINE)
_SPEAKER = re.compile(r"^\s*(\{\{\s*(?:char|user)\s*\}\}|<(?:bot|user)>)\s*:\s?", re.IGNORECASE)


def approx_tokens(text: str) -> int:
    """A rough token count (characters / 4), good enough for budgets."""
    return math.ceil(len(text) / 4)


def substitute(text: str, char_name: str, user_name: str) -> str:
    """Replace ``{{char}}``/``<BOT>`` and ``{{user}}``/``<USER>`` (any case), in one pass so a
    name that itself contains a macro is not expanded again."""

    def replace(match: re.Match[str]) -> str:
        word = (match.group(1) or match.group(2)).lower()
        return char_name if word in ("char", "bot") else user_name

    return _MACRO.sub(replace, text)


def parse_example_dialogue(
    mes_example: str, char_name: str, user_name: str
) -> list[tuple[Role, str]]:
    """Messages from ``mes_example``: ``<START>`` separates blocks; a line starting with
    ``{{user}}:``/``<USER>:`` or ``{{char}}:``/``<BOT>:`` (or the character's own name) starts
    a message, and lines without a speaker continue the previous one. Text before the first
    speaker of a block is dropped, since it belongs to no one."""
    own_name = re.compile(rf"^\s*{re.escape(char_name.strip())}\s*:\s?", re.IGNORECASE)
    messages: list[tuple[Role, str]] = []
    for block in _START.split(mes_example):
        role: Role | None = None
        lines: list[str] = []
        for line in block.splitlines():
            new_role: Role
            match = _SPEAKER.match(line)
            if match is not None:
                word = match.group(1).strip("{}<> \t").lower()
                new_role = "assistant" if word in ("char", "bot") else "user"
            elif (match := own_name.match(line)) is not None:
                new_role = "assistant"
            else:
                if role is not None:
                    lines.append(line)
                continue
            _flush(messages, role, lines, char_name, user_name)
            role, lines = new_role, [line[match.end() :]]
        _flush(messages, role, lines, char_name, user_name)
    return messages


def _flush(
    messages: list[tuple[Role, str]],
    role: Role | None,
    lines: list[str],
    char_name: str,
    user_name: str,
) -> None:
    text = substitute("\n".join(lines).strip(), char_name, user_name)
    if role is not None and text:
        messages.append((role, text))


def render_system_prompt(data: CardData, greenroom: GreenroomExtension, user_name: str) -> str:
    """The system message: the card's system prompt (or the default), then description,
    personality, scenario, voice, boundaries and canon facts, each on compact lines."""
    char_name = data.name.strip()
    own_prompt = (data.system_prompt or "").strip()
    if own_prompt:
        head = _ORIGINAL.sub(lambda _match: DEFAULT_SYSTEM_PROMPT, own_prompt)
    else:
        head = DEFAULT_SYSTEM_PROMPT
    sections = [head]
    if description := (data.description or "").strip():
        sections.append(description)
    if personality := (data.personality or "").strip():
        sections.append(f"{{{{char}}}}'s personality: {personality}")
    if scenario := (data.scenario or "").strip():
        sections.append(f"Scenario: {scenario}")
    sections.extend(
        _bullets(title, items)
        for title, items in (
            ("Voice", greenroom.tone_rules),
            ("Boundaries", greenroom.boundaries),
            ("Facts that are always true", greenroom.canon_facts),
        )
        if any(item.strip() for item in items)
    )
    return substitute("\n\n".join(sections), char_name, user_name)


def _bullets(title: str, items: list[str]) -> str:
    lines = [f"- {item.strip()}" for item in items if item.strip()]
    return f"{title}:\n" + "\n".join(lines)
