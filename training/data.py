"""Greenroom exports as TRL datasets: read, check, map, and drop what the model cannot hold.

Which export each method takes (``greenroom export --format ...``):

- ``sft``: ``trl-sft`` (``{"messages": [...]}``; ``openai-sft`` has the same shape). Each record
  becomes a conversational prompt-completion pair (every message but the last, and the last,
  which must be the assistant's reply), so TRL computes the loss on the reply only: the card's
  example dialogue and earlier turns stay context, never targets.
- ``dpo``: ``trl-dpo`` (``{"prompt", "chosen", "rejected"}``); ``greenroom eval preferences``
  takes it too.
- ``kto``: ``trl-kto`` (``{"prompt", "completion", "label"}``).

What the mapping drops: ``record_id`` and ``persona_version`` (counted per card version in the
summary), and the ``name`` of a message (``example_user``/``example_assistant`` for the card's
example dialogue, ``context`` for lore and memories). Names mark those messages for trainers
that want to filter them; a ChatML template such as SmolLM2's has no place for a name, and the
local provider never sends one, so the model trains on what it is shown when it serves.

Limits: a record whose tokens (chat template applied, the longer side of a pair) exceed the
model's context is dropped and counted (:attr:`PreparedData.dropped_too_long`), never
truncated; a file with no record left after that, an empty file, a line that is not a JSON
object, or a record of another format raises :class:`TrainingDataError`, one line naming the
file (and the line) and the problem.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Iterator

    from transformers import PreTrainedTokenizerBase

__all__ = [
    "METHODS",
    "METHOD_FORMATS",
    "Method",
    "PreparedData",
    "TrainingDataError",
    "check_file",
    "detect_format",
    "prepare",
    "read_records",
]

_log = logging.getLogger(__name__)

Method = Literal["sft", "dpo", "kto"]
METHODS: tuple[Method, ...] = ("sft", "dpo", "kto")
#: The export format each method reads; ``preferences`` is ``greenroom eval preferences``.
METHOD_FORMATS: dict[str, str] = {
    "sft": "trl-sft",
    "dpo": "trl-dpo",
    "kto": "trl-kto",
    "preferences": "trl-dpo",
}
#: The keys that tell the export formats apart (``greenroom export --format``).
_FORMAT_KEYS: dict[str, frozenset[str]] = {
    "trl-sft": frozenset({"messages"}),
    "trl-dpo": frozenset({"prompt", "chosen", "rejected"}),
    "trl-kto": frozenset({"prompt", "completion", "label"}),
    "openai-dpo": frozenset({"input", "preferred_output", "non_preferred_output"}),
    "oasst": frozenset({"message_tree_id", "prompt"}),
}
_ROLES = frozenset({"system", "user", "assistant"})
#: Characters of a line quoted in an error.
_QUOTE = 60


class TrainingDataError(Exception):
    """An export file cannot be trained on; the message is one line naming the file."""


@dataclass
class PreparedData:
    """Rows in TRL's conversational format, and what was left out."""

    path: Path
    method: str
    rows: list[dict[str, Any]]
    #: Tokens of each kept row (the longer side of a pair), chat template applied.
    lengths: list[int]
    records_read: int
    #: Records longer than the model's context, dropped (never truncated).
    dropped_too_long: int
    context_tokens: int
    #: Kept records per card version (``persona_version``; ``None`` when a record has none).
    persona_versions: dict[str, int] = field(default_factory=dict)

    @property
    def max_length(self) -> int:
        """The longest kept row in tokens: TRL's ``max_length``, so nothing is truncated."""
        return max(self.lengths)

    def summary(self) -> dict[str, Any]:
        """JSON-safe counts for the training summary."""
        return {
            "file": str(self.path),
            "format": METHOD_FORMATS[self.method],
            "records_read": self.records_read,
            "records_used": len(self.rows),
            "dropped_longer_than_context": self.dropped_too_long,
            "context_tokens": self.context_tokens,
            "max_length": self.max_length,
            "mean_length": round(sum(self.lengths) / len(self.lengths), 1),
            "persona_versions": self.persona_versions,
        }


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-blank line of a JSONL file.

    Raises :class:`TrainingDataError` for a missing or unreadable file and for a line that is
    not a JSON object.
    """
    try:
        file = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise TrainingDataError(f"{path}: no such file") from None
    except OSError as error:
        raise TrainingDataError(f"{path}: cannot be read ({error.strerror or error})") from None
    with file:
        try:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    quoted = line.strip()[:_QUOTE]
                    raise TrainingDataError(
                        f"{path} line {number}: not JSON ({quoted!r}); "
                        "expected one export record a line (JSONL)"
                    ) from None
                if not isinstance(record, dict):
                    raise TrainingDataError(
                        f"{path} line {number}: a record must be a JSON object, "
                        f"not {type(record).__name__}"
                    )
                yield number, record
        except UnicodeDecodeError:
            raise TrainingDataError(f"{path}: not UTF-8 text") from None


def detect_format(record: dict[str, Any]) -> str | None:
    """The export format a record's keys say it is, or ``None``."""
    keys = set(record)
    for fmt, required in _FORMAT_KEYS.items():
        if required <= keys:
            return fmt
    return None


def _messages(value: Any, where: str, *, what: str) -> list[dict[str, str]]:
    """Checked chat messages reduced to ``role`` and ``content``."""
    if not isinstance(value, list) or not value:
        raise TrainingDataError(f"{where}: {what} must be a non-empty list of messages")
    messages = []
    for message in value:
        if (
            not isinstance(message, dict)
            or message.get("role") not in _ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise TrainingDataError(
                f"{where}: {what} holds a message that is not "
                '{"role": system|user|assistant, "content": text}'
            )
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _reply(value: Any, where: str, *, what: str) -> list[dict[str, str]]:
    """One assistant message, as a one-message list (TRL's conversational completion)."""
    messages = _messages(value, where, what=what)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise TrainingDataError(f"{where}: {what} must be exactly one assistant message")
    return messages


def _row(method: str, record: dict[str, Any], where: str) -> dict[str, Any]:
    """One export record as a TRL row (see the module docstring)."""
    if method == "sft":
        messages = _messages(record["messages"], where, what="messages")
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise TrainingDataError(
                f"{where}: messages must end with the assistant's reply after some context"
            )
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    prompt = _messages(record["prompt"], where, what="prompt")
    if method in ("dpo", "preferences"):
        return {
            "prompt": prompt,
            "chosen": _reply(record["chosen"], where, what="chosen"),
            "rejected": _reply(record["rejected"], where, what="rejected"),
        }
    label = record["label"]
    if not isinstance(label, bool):
        raise TrainingDataError(f"{where}: label must be true or false, not {label!r}")
    return {
        "prompt": prompt,
        "completion": _reply(record["completion"], where, what="completion"),
        "label": label,
    }


def _tokens(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def row_length(tokenizer: PreTrainedTokenizerBase, row: dict[str, Any]) -> int:
    """Tokens of a row with the chat template applied: prompt and reply, the longer reply of a
    pair."""
    replies = [row[key] for key in ("completion", "chosen", "rejected") if key in row]
    return max(_tokens(tokenizer, row["prompt"] + reply) for reply in replies)


def _checked(path: Path, method: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for each record, each of the format ``method`` reads."""
    wanted = METHOD_FORMATS[method]
    read = 0
    for number, record in read_records(path):
        where = f"{path} line {number}"
        fmt = detect_format(record)
        if fmt != wanted:
            found = f"a {fmt} record" if fmt else f"a record with keys {sorted(record)[:6]}"
            raise TrainingDataError(
                f"{where}: {found}, but {_purpose(method)} needs {wanted} records "
                f"(greenroom export --format {wanted})"
            )
        read += 1
        yield where, record
    if read == 0:
        raise TrainingDataError(
            f"{path}: empty (no records); export some with greenroom export --format {wanted}"
        )


def check_file(path: Path, method: str) -> int:
    """The number of records in ``path``, each checked to be of the format ``method`` reads
    and mapped once; raises :class:`TrainingDataError` (one line) otherwise. Needs no model,
    so a wrong file fails before one loads."""
    count = 0
    for where, record in _checked(path, method):
        _row(method, record, where)
        count += 1
    return count


def prepare(
    path: Path,
    method: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    context_tokens: int,
) -> PreparedData:
    """Read an export for ``method`` (``sft``, ``dpo``, ``kto`` or ``preferences``), map it to
    TRL rows and drop the records longer than ``context_tokens`` (counted).

    Raises :class:`TrainingDataError` (one line) for the problems the module docstring lists.
    """
    rows: list[dict[str, Any]] = []
    lengths: list[int] = []
    versions: Counter[str] = Counter()
    read = dropped = 0
    for where, record in _checked(path, method):
        read += 1
        row = _row(method, record, where)
        length = row_length(tokenizer, row)
        if length > context_tokens:
            dropped += 1
            continue
        rows.append(row)
        lengths.append(length)
        versions[str(record.get("persona_version"))] += 1
    if not rows:
        raise TrainingDataError(
            f"{path}: all {read} records are longer than the model's context "
            f"({context_tokens} tokens); none is left to use"
        )
    if dropped:
        _log.warning(
            "%s: dropped %d of %d records longer than the model's context (%d tokens)",
            path,
            dropped,
            read,
            context_tokens,
        )
    return PreparedData(
        path=path,
        method=method,
        rows=rows,
        lengths=lengths,
        records_read=read,
        dropped_too_long=dropped,
        context_tokens=context_tokens,
        persona_versions=dict(versions),
    )


def _purpose(method: str) -> str:
    return "greenroom eval preferences" if method == "preferences" else f"--method {method}"
