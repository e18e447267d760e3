"""Training-data exports of the correction queue: conversation trees to JSONL records.

Library functions shared by the ``greenroom export`` command and the HTTP API:

- :data:`FORMATS`, :class:`ExportFilter`, :class:`ExportError` (bad options, unwritable output)
- :func:`iter_records` streams ``(user turn id, record)`` in a stable order,
  :func:`iter_turn_records` ``(user turn id, records)`` a turn at a time, and
  :func:`iter_turn_record_batches` lists of those, a page of turns at a time
- :func:`export_to_file` writes one file per split, atomically
- :func:`dry_run_counts` counts records per format and persona
- :func:`progress_total` is the number of user turns either reads (a progress bar's total)
- :func:`record_to_jsonl` serialises one record

What a record is, per format, is documented in :mod:`feedback.exports.records`.
"""

from __future__ import annotations

from feedback.exports.filters import (
    FORMATS,
    ExportError,
    ExportFilter,
    check_format,
    parse_split,
    parse_tags,
    parse_time,
)
from feedback.exports.records import RecordBuilder
from feedback.exports.tree import ReplyNode, TurnTree, count_turns, iter_turn_trees
from feedback.exports.writer import (
    dry_run_counts,
    export_to_file,
    iter_records,
    iter_turn_record_batches,
    iter_turn_records,
    progress_total,
    record_to_jsonl,
    split_paths,
)

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportFilter",
    "RecordBuilder",
    "ReplyNode",
    "TurnTree",
    "check_format",
    "count_turns",
    "dry_run_counts",
    "export_to_file",
    "iter_records",
    "iter_turn_record_batches",
    "iter_turn_records",
    "iter_turn_trees",
    "parse_split",
    "parse_tags",
    "parse_time",
    "progress_total",
    "record_to_jsonl",
    "split_paths",
]
