"""Errors raised by :mod:`memory`.

The engine catches :class:`MemoryStoreError` (log, flag the reply, carry on without memories) and
shows :class:`MemoryInputError` to the user, whose input it describes.
"""

from __future__ import annotations

__all__ = ["MemoryInputError", "MemoryStoreError"]


class MemoryInputError(ValueError):
    """A memory that cannot be stored as given (empty, too long, a duplicate, unknown turn)."""


class MemoryStoreError(RuntimeError):
    """The vector store could not be opened or failed (or timed out) during an operation.

    The message names the store (its path, or host and port) and the operation.
    """
