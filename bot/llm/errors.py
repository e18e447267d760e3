"""Errors the language-model layer raises, typed so callers can pick an in-persona fallback."""

from __future__ import annotations

from typing import Literal

__all__ = [
    "GenerationError",
    "GenerationFailure",
    "ModelUnavailableError",
]

#: Why a generation produced no usable reply.
#:
#: - ``timeout``: the model took longer than the caller allowed.
#: - ``failed``: the model or its server raised (the cause is chained).
#: - ``empty``: the model answered with nothing but whitespace.
#: - ``unavailable``: the model cannot be used at all (missing file, missing API key).
GenerationFailure = Literal["timeout", "failed", "empty", "unavailable"]

_REASONS: frozenset[str] = frozenset(("timeout", "failed", "empty", "unavailable"))


class GenerationError(Exception):
    """A reply could not be generated; :attr:`reason` says why."""

    reason: GenerationFailure

    def __init__(self, message: str, *, reason: GenerationFailure = "failed") -> None:
        if reason not in _REASONS:
            raise ValueError(f"reason must be one of {sorted(_REASONS)}, not {reason!r}")
        super().__init__(message)
        self.reason = reason


class ModelUnavailableError(GenerationError):
    """The model cannot be loaded or reached at all; the message says what to install or set."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="unavailable")
