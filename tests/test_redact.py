"""Redaction of personal patterns, name masking and keyed pseudonyms."""

from __future__ import annotations

import pytest

from feedback.redact import mask_names, pseudonym, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to ann.lee+bot@example.co.uk today", "write to [email] today"),
        ("ME@MAIL.ORG", "[email]"),
        ("call +1 (555) 123-4567 now", "call [phone] now"),
        ("555-123-4567", "[phone]"),
        ("555.123.4567", "[phone]"),
        ("555 123 4567", "[phone]"),
        ("(555) 123 4567", "[phone]"),
        ("+44 20 7946 0958", "[phone]"),
        ("+15551234567", "[phone]"),
        ("020 7946 0958 or 07946 095812", "[phone] or [phone]"),
        ("see https://example.com/a?b=1).", "see [url])."),
        ("http://x.io, www.foo.org and discord.gg/abc", "[url], [url] and [url]"),
        ("hey <@123456789012345678>", "hey [mention]"),
        ("<@!42> <@&42> <#42>", "[mention] [mention] [mention]"),
        ("user 123456789012345678 said", "user [id] said"),
        ("ids 12345678901234567 and 12345678901234567890", "ids [id] and [id]"),
    ],
)
def test_redacts_recognised_patterns(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I am 34",
        "born in 1990, moved in 2019 2020 2021",
        "on 2023-04-12 at 10:30",
        "it costs $1,299.99",
        "10 000 people, score 3-2-1",
        "version 1.2.3 and ip-like 192.168.0.1",
        "order 12345678",
        "no digits here at all",
        "a <b>tag</b> and an @handle",
    ],
)
def test_leaves_ordinary_numbers_and_text(text: str) -> None:
    assert redact(text) == text


def test_pseudonyms_are_stable_keyed_and_short() -> None:
    first = pseudonym("discord:1", b"secret")
    assert first == pseudonym("discord:1", b"secret")
    assert first != pseudonym("discord:1", b"other") != pseudonym("discord:2", b"secret")
    assert first.startswith("user_") and len(first) == len("user_") + 12
    assert pseudonym("discord:1", b"secret", prefix="actor").startswith("actor_")
    with pytest.raises(ValueError, match="secret is empty"):
        pseudonym("discord:1", b"")


def test_mask_names_whole_words_case_insensitive() -> None:
    masked = mask_names("Ann? ANN and Annabel met ann.", {"Ann": "[n]"})
    assert masked == "[n]? [n] and Annabel met [n]."
    assert mask_names("a b c", {"a": "[n]"}) == "a b c"  # one-letter names are left alone
