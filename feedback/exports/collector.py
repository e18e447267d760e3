"""Pausing Python's cyclic garbage collector while export records are built.

Building a page of records allocates hundreds of thousands of small dicts, lists and tuples.
Each allocation burst makes the collector run, and its full collections walk every live object
of the process (the imported modules too): on a 10,000-record page that was about 40 % of the
CPU time. None of those records form reference cycles, so reference counting frees them anyway.

:func:`gc_paused` turns automatic collection off for a block; nested and concurrent blocks
(tasks of one event loop) share one pause, and collection is back on when the last one ends.
:func:`collect_young` runs the two young generations only, cheap between pages of a long
export, so short-lived cycles (of the database layer) are still freed.

Limits: use it only around code whose end is certain (a coroutine, a ``with`` block), never
across the ``yield`` of a generator that might be abandoned, or collection could stay off.
Threads are not counted: a pause in one thread also pauses collection for the others.

:class:`GcPause` is the same pause as an object, for one that outlives a block: the trainer API
keeps collection off from building a page until the page is freed, after its response went out
(see :meth:`feedback.api.records.Page.release`). It ends when :meth:`GcPause.end` is called or
when the pause object itself is freed, whichever comes first, so a lost pause cannot keep
collection off.
"""

from __future__ import annotations

import contextlib
import gc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["GcPause", "collect_young", "gc_paused"]

_pauses = 0
_was_enabled = False


def _begin() -> None:
    global _pauses, _was_enabled
    if _pauses == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _pauses += 1


def _end() -> None:
    global _pauses
    _pauses -= 1
    if _pauses == 0 and _was_enabled:
        gc.enable()


class GcPause:
    """Automatic garbage collection off from creation until :meth:`end` or until this object
    is freed (shared with :func:`gc_paused` blocks and other pauses)."""

    __slots__ = ("_ended",)

    def __init__(self) -> None:
        _begin()
        self._ended = False

    def end(self) -> None:
        """Let collection resume (once every other pause has ended too); idempotent."""
        if not self._ended:
            self._ended = True
            _end()

    def __del__(self) -> None:
        self.end()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Automatic garbage collection off for the block (if it was on)."""
    _begin()
    try:
        yield
    finally:
        _end()


def collect_young() -> None:
    """Collect the young generations (objects allocated since the last collection)."""
    gc.collect(1)
