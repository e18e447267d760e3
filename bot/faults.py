"""Crash points for the fault-injection harness (``bench/bench_crash.py``, ``tests/test_crash.py``).

A crash point does nothing unless the harness armed it, in one of two ways:

- ``GREENROOM_CRASH_AT=point`` or ``point@N``: crash the N-th time (from 1) ``point`` is reached;
  read once at import.
- ``GREENROOM_CRASH_FILE=<path>``: the file, when it exists, names one point; the first time that
  point is reached the file is removed and the process crashes. The harness arms the next crash
  by writing the file, so one process serves many trials (one ``stat`` per point when set).

The crash is SIGKILL: no ``finally`` blocks, no flushing, as a power cut would do. Production
sets neither variable.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

__all__ = ["CRASH_POINTS", "crash_point"]

_log = logging.getLogger(__name__)

#: Every point the harness can name, in the order a turn or an action reaches them.
CRASH_POINTS = (
    "turn.received",
    "turn.before_generate",
    "turn.before_commit",
    "turn.after_commit",
    "turn.after_send",
    "turn.after_mark_sent",
    "action.before_commit",
    "action.after_commit",
    "action.after_ack",
    "deliver.before_send",
    "deliver.after_send",
)


def _parse(spec: str) -> tuple[str, int]:
    name, _, count = spec.strip().partition("@")
    if name not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {name!r}; known: {', '.join(CRASH_POINTS)}")
    return name, int(count or 1)


_target = _parse(os.environ["GREENROOM_CRASH_AT"]) if os.environ.get("GREENROOM_CRASH_AT") else None
_file = Path(os.environ["GREENROOM_CRASH_FILE"]) if os.environ.get("GREENROOM_CRASH_FILE") else None
_hits = 0


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if the harness armed a crash at ``name``."""
    global _hits
    if _file is not None and _file.exists():
        try:
            armed = _parse(_file.read_text())[0]
        except (OSError, ValueError):
            armed = None
        if armed == name:
            _file.unlink(missing_ok=True)
            _die(name)
    if _target is None or name != _target[0]:
        return
    _hits += 1
    if _hits == _target[1]:
        _die(name)


def _die(name: str) -> None:
    _log.critical("crash point %s reached: killing the process", name)
    os.kill(os.getpid(), signal.SIGKILL)
