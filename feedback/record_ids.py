"""Stable pseudonymous ids of exported records, and the keys they are derived from.

Every record an export or the trainer API hands out carries ``record_id``: ``rec_`` and 20 hex
digits of HMAC-SHA256 (keyed with the pseudonym secret) of the record's *key*, which names the
database rows the record was built from:

- ``sft:<user turn>:<reply>``: the SFT record of a turn and the reply it trains on (both SFT
  formats share it: the same record in another shape);
- ``dpo:<user turn>:<chosen>:<rejected>``: a preference pair (both DPO formats);
- ``kto:<user turn>:<reply>``: a KTO record;
- ``oasst:<user turn>``: the oasst message tree of a turn;
- ``event:<feedback event>``: a record of a lease (one feedback event).

The same rows and the same secret give the same id in every file and page, so a trainer can
match the erasure feed's tombstones against what it holds. Nobody without the secret can map an
id back to the rows. Limits: a record's content may change while its id stays (a rating added
later, a scrubbed prompt); 80 bits make a collision among billions of records unlikely, and a
collision could only make a trainer delete one record too many.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from itertools import permutations
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "KINDS",
    "dpo_key",
    "event_key",
    "keys_of_turn",
    "kto_key",
    "oasst_key",
    "record_id",
    "sft_key",
]

#: The record kinds a user turn can give, as in the keys.
KINDS = ("sft", "dpo", "kto", "oasst")
_DIGITS = 20


@lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    """The HMAC state after the key: copying it skips the key schedule on every record."""
    if not secret:
        raise ValueError("the pseudonym secret is empty; pass the export's secret key")
    return hmac.new(secret, digestmod=hashlib.sha256)


def record_id(key: str, secret: bytes) -> str:
    """The pseudonymous id of the record with ``key``: ``rec_`` and 20 hex digits."""
    mac = _keyed(secret).copy()
    mac.update(key.encode("ascii"))
    return f"rec_{mac.hexdigest()[:_DIGITS]}"


def sft_key(turn_id: int, reply_id: int) -> str:
    """The key of a turn's SFT record on ``reply_id``."""
    return f"sft:{turn_id}:{reply_id}"


def dpo_key(turn_id: int, chosen_id: int, rejected_id: int) -> str:
    """The key of a preference pair."""
    return f"dpo:{turn_id}:{chosen_id}:{rejected_id}"


def kto_key(turn_id: int, reply_id: int) -> str:
    """The key of a KTO record."""
    return f"kto:{turn_id}:{reply_id}"


def oasst_key(turn_id: int) -> str:
    """The key of a turn's oasst tree."""
    return f"oasst:{turn_id}"


def event_key(event_id: int) -> str:
    """The key of a leased feedback event."""
    return f"event:{event_id}"


def keys_of_turn(turn_id: int, reply_ids: Iterable[int]) -> Iterator[str]:
    """Every key any format could ever have given for this turn with these replies: each
    reply as SFT and KTO record, each ordered pair of replies, and the oasst tree.

    Whatever the ratings and decisions were when a file was written, its records of this turn
    are among these (``n`` replies give ``n * n + n + 1`` keys).
    """
    replies = sorted(set(reply_ids))
    yield oasst_key(turn_id)
    for reply in replies:
        yield sft_key(turn_id, reply)
        yield kto_key(turn_id, reply)
    for chosen, rejected in permutations(replies, 2):
        yield dpo_key(turn_id, chosen, rejected)
