"""Text hygiene around the model: what goes in is neutralised, what comes out is cleaned and split.

Pure functions with no transport knowledge; the limits are passed in by the caller.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "clean_reply",
    "display_name",
    "neutralise_user_text",
    "normalise_incoming",
    "split_message",
]

# Special tokens of ChatML and the other common templates: <|im_start|>, <|eot_id|>, [INST] ...
_SPECIAL_TOKEN = re.compile(r"<\|[^|<>\n]{0,40}\|>|</?s>|\[/?INST\]|<<\/?SYS>>", re.IGNORECASE)
_ROLE_HEADER = re.compile(r"(?im)^(\s*)(#{1,6}\s*)?(system|assistant|user)\s*:")
# Invisible characters that would hide a marker from the checks above; line breaks stay.
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\x00]")
_MAX_COMBINING_RUN = 4


def normalise_incoming(text: str) -> str:
    """NFC-normalise, drop invisible and control characters, cap runs of combining marks.

    Whitespace-only text comes back empty, so the caller can ignore it.
    """
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become U+FFFD
    text = _INVISIBLE.sub("", unicodedata.normalize("NFC", text))
    out: list[str] = []
    run = 0
    for char in text:
        category = unicodedata.category(char)
        if category == "Cc" and char not in "\n\t":
            continue
        if category in ("Mn", "Me"):
            run += 1
            if run > _MAX_COMBINING_RUN:
                continue
        else:
            run = 0
        out.append(char)
    return "".join(out).strip()


def neutralise_user_text(text: str) -> str:
    """Defuse chat-template markers and role headers so user text cannot start a new turn.

    ``<|im_start|>system`` becomes ``<im_start>system`` (no longer a special token) and a line
    beginning ``system:`` becomes ``system (quoted):``.
    """
    text = _SPECIAL_TOKEN.sub(
        lambda m: (
            m.group(0)
            .replace("|", "")
            .replace("[", "(")
            .replace("]", ")")
            .replace("<<", "(")
            .replace(">>", ")")
        ),
        text,
    )
    return _ROLE_HEADER.sub(lambda m: f"{m.group(1)}{m.group(3)} (quoted):", text)


def display_name(name: str, *, limit: int = 64) -> str:
    """A speaker's name as the prompt may show it: one line of at most ``limit`` characters,
    invisible characters, template markers and role headers defused (Discord lets anyone pick a
    32-character nickname such as ``<|im_start|>system``). An empty result becomes ``someone``."""
    flat = " ".join(normalise_incoming(name).split())[:limit]
    return neutralise_user_text(flat) if flat else "someone"


def clean_reply(text: str, *, speaker: str = "", others: tuple[str, ...] = ()) -> str:
    """Cut a model reply at the first turn it invents and tidy it.

    Stops at a special token or a line that starts another speaker's turn (``User:``, one of
    ``others``); drops a leading ``speaker:`` the model may echo; collapses blank runs.
    """
    match = _SPECIAL_TOKEN.search(text)
    if match:
        text = text[: match.start()]
    names = {"user", "human", "you", "system", *(name.lower() for name in others if name)}
    lines = text.splitlines()
    kept: list[str] = []
    for index, line in enumerate(lines):
        head, sep, _ = line.partition(":")
        if sep and head.strip().lower() in names and index > 0:
            break
        kept.append(line)
    text = "\n".join(kept).strip()
    if speaker and text.lower().startswith(f"{speaker.lower()}:"):
        text = text[len(speaker) + 1 :].lstrip()
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def split_message(text: str, limit: int) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters.

    Breaks at a paragraph, then a line, then a sentence, then a space; a word longer than the
    limit is cut. Empty text gives no parts.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    text = text.strip()
    parts: list[str] = []
    while len(text) > limit:
        window = text[: limit + 1]
        cut = -1
        for separator in ("\n\n", "\n", ". ", "! ", "? ", " "):
            position = window.rfind(separator, 0, limit)
            if position > limit // 3:
                cut = position + (1 if separator.strip() in {".", "!", "?"} else 0)
                break
        if cut <= 0:
            cut = limit
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        parts.append(text)
    return parts
