"""Redaction and pseudonyms for text that leaves Greenroom as training data.

:func:`redact` replaces the patterns it recognises: e-mail addresses (``[email]``), URLs
(``[url]``), Discord mentions ``<@123>``, ``<@!123>``, ``<@&123>``, ``<#123>`` (``[mention]``),
phone numbers (``[phone]``) and Discord snowflake ids, 17 to 20 digits (``[id]``). Ordinary
numbers stay: ages, years, dates, prices, short counts.

Limits: phone numbers are recognised by shape, not by a numbering plan: an international number
starting with ``+``, a number with an area code in brackets, the North American 3-3-4 shape, or
a trunk-prefixed national number starting with ``0`` (``020 7946 0958``, ``07946 095812``).
A bare run of 8 to 16 digits with no separators and no ``+`` is left alone (it may be an order
number), unless it is long enough to be a snowflake. Names written in prose are not recognised;
:func:`mask_names` replaces the display names an export knows about.

:func:`pseudonym` turns an id into a stable keyed hash (HMAC-SHA256 with a secret the caller
passes in, first 12 hex digits), so the same user gets the same pseudonym in every export made
with the same secret, and nobody without the secret can map it back or test a guess.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["mask_names", "name_masker", "pseudonym", "redact"]

_MENTION = r"<(?:@[!&]?|#)\d+>"
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}"
_URL = r"(?:https?://|www\.|discord\.gg/)[^\s<>\"']+"
_SEP = r"[ .\-]?"
_PHONE = (
    # +44 20 7946 0958, +1 (555) 123-4567, +15551234567
    r"\+\d{1,3}(?:[ .\-]?\(\d{1,4}\))?(?:[ .\-]?\d{1,5}){1,5}"
    # (555) 123-4567, (020) 7946 0958
    r"|\(\d{2,5}\)" + _SEP + r"\d{3,4}[ .\-]?\d{3,4}"
    # 555-123-4567, 555.123.4567, 555 123 4567
    r"|\d{3}(?P<sep>[ .\-])\d{3}(?P=sep)\d{4}"
    # 020 7946 0958, 07946 095812, 0800-123-4567
    r"|0\d{2,4}[ .\-]?\d{3,4}[ .\-]?\d{3,4}"
)
_SNOWFLAKE = r"\d{17,20}"

#: Applied in this order, each only when a cheap check says it could match (most text has no
#: e-mail, URL or long digit run, and one big alternation tried at every position is slow).
_MENTIONS = re.compile(_MENTION)
_EMAILS = re.compile(_EMAIL)
_URLS = re.compile(_URL)
_NUMBERS = re.compile(rf"(?<![\w+])(?P<phone>{_PHONE})(?!\w)|(?<!\w)(?P<id>{_SNOWFLAKE})(?!\w)")
#: Seven or more characters of digits and separators, from a digit to a digit.
_DIGIT_RUN = re.compile(r"\d[\d ().\-]{5,}\d")
_URL_TRAILING = ".,;:!?)]}'\""
_ASCII_DIGITS = "0123456789"
_PHONE_DIGITS = (7, 15)


def _url(match: re.Match[str]) -> str:
    text = match.group(0)
    stripped = text.rstrip(_URL_TRAILING)
    return "[url]" + text[len(stripped) :]


def _number(match: re.Match[str]) -> str:
    if match.lastgroup == "id":
        return "[id]"
    text = match.group(0)
    digits = sum(char.isdigit() for char in text)
    if not _PHONE_DIGITS[0] <= digits <= _PHONE_DIGITS[1]:
        return text
    return "[phone]"


def redact(text: str) -> str:
    """``text`` with e-mails, phone numbers, URLs, Discord mentions and snowflakes replaced."""
    if "<" in text:
        text = _MENTIONS.sub("[mention]", text)
    if "@" in text:
        text = _EMAILS.sub("[email]", text)
    if "://" in text or "www." in text or "discord.gg/" in text:
        text = _URLS.sub(_url, text)
    if _may_hold_digits(text) and _DIGIT_RUN.search(text):
        text = _NUMBERS.sub(_number, text)
    return text


def _may_hold_digits(text: str) -> bool:
    """False only when ``text`` has no digit: it is ASCII without 0-9 (a regular expression
    search costs several times more than these substring checks)."""
    if not text.isascii():
        return True
    for digit in _ASCII_DIGITS:  # noqa: SIM110 - a loop costs less than any() and a generator
        if digit in text:
            return True
    return False


def pseudonym(identifier: str, secret: bytes, *, prefix: str = "user") -> str:
    """A stable keyed pseudonym: ``prefix_`` and the first 12 hex digits of HMAC-SHA256."""
    if not secret:
        raise ValueError("the pseudonym secret is empty; pass the export's secret key")
    digest = hmac.new(secret, identifier.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{prefix}_{digest[:12]}"


@lru_cache(maxsize=4096)
def _names_pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def mask_names(text: str, replacements: dict[str, str]) -> str:
    """Replace whole-word, case-insensitive occurrences of each name by its stand-in.

    Names shorter than two characters are left alone (they would hit ordinary words).
    """
    return name_masker(replacements)(text)


def name_masker(replacements: dict[str, str]) -> Callable[[str], str]:
    """:func:`mask_names` with these ``replacements``, as a function of the text (for a caller
    that masks the same names in many texts)."""
    names = tuple(name for name in replacements if len(name) >= 2)
    if not names:
        return _unchanged
    lookup = {name.casefold(): stand_in for name, stand_in in replacements.items()}
    substitute = _names_pattern(names).sub

    def mask(text: str) -> str:
        return substitute(lambda m: lookup[m.group(0).casefold()], text)

    return mask


def _unchanged(text: str) -> str:
    return text
