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
"""

from __future__ import annotations

import contextlib
import gc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["collect_young", "gc_paused"]

_pauses = 0
_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Automatic garbage collection off for the block (if it was on)."""
    global _pauses, _was_enabled
    if _pauses == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _pauses += 1
    try:
        yield
    finally:
        _pauses -= 1
        if _pauses == 0 and _was_enabled:
            gc.enable()


def collect_young() -> None:
    """Collect the young generations (objects allocated since the last collection)."""
    gc.collect(1)
