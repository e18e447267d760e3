"""Cleaning the texts of training records: redaction and name masking, each text once.

A :class:`TextCleaner` passes a text through :func:`feedback.redact.redact` and replaces the
display names it is given by their ``name_<hash>`` pseudonyms. Prompt snapshots repeat the
system prompt and the recent history turn after turn, so it keeps a bounded memo of cleaned
texts (two generations of ``size`` entries: a text seen again within the last ``size``
cleanings is not cleaned again). The result depends only on the text, the names and the
pseudonym secret, so a memo entry is only ever returned for the same text read again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from feedback.redact import name_masker, pseudonym, redact

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DEFAULT_MEMO_SIZE", "TextCleaner"]

#: Entries of each generation of the memo.
DEFAULT_MEMO_SIZE = 32_768


class TextCleaner:
    """Redacts texts and masks names, remembering the last ``size`` to ``2 * size`` results."""

    def __init__(self, pseudonym_secret: bytes, *, size: int = DEFAULT_MEMO_SIZE) -> None:
        if not pseudonym_secret:
            raise ValueError("the pseudonym secret is empty")
        self._secret = pseudonym_secret
        self._size = size
        #: Cleaned texts by names to mask, then by text: the young generation takes new
        #: entries; when it is full it becomes the old one (read, not written).
        self._young: dict[tuple[str, ...], dict[str, str]] = {}
        self._old: dict[tuple[str, ...], dict[str, str]] = {}
        self._young_size = 0
        #: Maskers by the names found in a text (usually one or two names).
        self._maskers: dict[tuple[str, ...], Callable[[str], str]] = {}

    def clean(self, text: str, names: tuple[str, ...]) -> str:
        """``text`` redacted with ``names`` masked, from the memo when it was seen lately."""
        young = self._young.get(names)
        if young is not None:
            cleaned = young.get(text)
            if cleaned is not None:
                return cleaned
        return self._clean_miss(text, names)

    def messages(
        self, messages: list[dict[str, Any]], names: tuple[str, ...]
    ) -> list[dict[str, str]]:
        """Prompt messages (``role``, ``content`` and any ``name``: the card's examples and the
        context message keep theirs) cleaned: the hot loop of every format (one dict lookup a
        message, in the usual case)."""
        get = (self._young.get(names) or {}).get
        miss = self._clean_miss
        return [
            {"role": message["role"], "content": get(content) or miss(content, names)}
            if "name" not in message
            else {
                "role": message["role"],
                "content": get(content) or miss(content, names),
                "name": message["name"],
            }
            for message in messages
            for content in (message["content"],)
        ]

    def _clean_miss(self, text: str, names: tuple[str, ...]) -> str:
        """:meth:`clean` past the young generation: the old one, else clean it now."""
        young = self._young.get(names)
        if young is not None and text in young:
            return young[text]
        old = self._old.get(names)
        cleaned = old.get(text) if old is not None else None
        if cleaned is None:
            cleaned = self._clean_uncached(text, names)
        if self._young_size >= self._size:
            self._old, self._young, self._young_size = self._young, {}, 0
            self._maskers.clear()
        young = self._young.get(names)
        if young is None:
            young = self._young[names] = {}
        young[text] = cleaned
        self._young_size += 1
        return cleaned

    def _clean_uncached(self, text: str, names: tuple[str, ...]) -> str:
        text = redact(text)
        if names:
            folded = text.casefold()
            found = tuple(name for name in names if name.casefold() in folded)
            if found:
                text = self._masker(found)(text)
        return text

    def _masker(self, names: tuple[str, ...]) -> Callable[[str], str]:
        masker = self._maskers.get(names)
        if masker is None:
            stand_ins = {
                name: pseudonym(name.casefold(), self._secret, prefix="name") for name in names
            }
            masker = self._maskers[names] = name_masker(stand_ins)
        return masker
