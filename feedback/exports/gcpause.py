"""Automatic garbage collection paused over a synchronous stretch of record building.

Building a page of records allocates many short-lived lists and dicts. CPython's collector
runs a young-generation pass every few hundred allocations and, as page-sized batches
survive them, frequent full passes over every object of the process (the whole SQLAlchemy and
application heap), which cost a large share of an export's CPU. Records hold no reference
cycles, so nothing is lost by collecting once after a stretch rather than during it.

Use it only around code with no ``await`` inside: the pause is process-wide, and with no
await no other coroutine runs while it lasts. It restores the collector's previous state, so
it nests and leaves a collector that someone else disabled disabled.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause automatic collection for the ``with`` block (no ``await`` inside)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
