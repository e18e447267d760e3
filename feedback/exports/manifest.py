"""The manifest written beside every export file (``<file>.manifest.json``) and sent with API
pages: what the file holds and where the erasure feed stood when it was written.

A trainer keeps the manifest with the file and later asks the erasure feed (``GET
/v1/erasures?cursor=<erasure_cursor>``) what was erased since; every tombstone it returns
names a ``record_id`` the file may hold. The cursor is read *before* the records, so an erasure
that raced the export is always after it (at worst a trainer deletes a record the file never
held).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from feedback.exports.filters import ExportError

if TYPE_CHECKING:
    from feedback.exports.filters import ExportFilter

__all__ = ["MANIFEST_SUFFIX", "build_manifest", "greenroom_version", "write_manifest"]

MANIFEST_SUFFIX = ".manifest.json"
_FEED = "/v1/erasures"


@cache
def greenroom_version() -> str:
    """The installed package's version (``unknown`` when run from an uninstalled tree)."""
    try:
        return metadata.version("greenroom")
    except metadata.PackageNotFoundError:
        return "unknown"


def filters_of(flt: ExportFilter) -> dict[str, Any]:
    """The filter as JSON: times in ISO 8601, ``None`` for what was not set."""
    return {
        "since": flt.since.isoformat() if flt.since else None,
        "until": flt.until.isoformat() if flt.until else None,
        "persona": flt.persona,
        "min_rating": flt.min_rating,
        "tags": list(flt.tags),
        "min_reviews": flt.min_reviews,
        "min_agreement": flt.min_agreement,
        "min_trust": flt.min_trust,
        "dimensions": [str(rule) for rule in flt.dimensions],
    }


def build_manifest(
    *,
    fmt: str,
    flt: ExportFilter,
    records: int,
    erasure_cursor: str,
    exported_at: datetime | None = None,
    split: str | None = None,
    seed: int | None = None,
    skipped: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The manifest of one file (or page): format, filters, counts, time, feed cursor."""
    manifest: dict[str, Any] = {
        "format": fmt,
        "filters": filters_of(flt),
        "records": records,
        "exported_at": (exported_at or datetime.now(UTC)).isoformat(),
        "erasure_cursor": erasure_cursor,
        "erasure_feed": f"{_FEED}?cursor={erasure_cursor}",
        "greenroom_version": greenroom_version(),
    }
    if split is not None:
        manifest["split"] = split
        manifest["seed"] = seed
    if skipped is not None:
        manifest["turns_skipped"] = skipped
    return manifest


def manifest_path(path: Path) -> Path:
    """Where the manifest of the export file ``path`` goes: ``<file>.manifest.json``."""
    return path.with_name(path.name + MANIFEST_SUFFIX)


def write_manifest(path: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` beside the export file ``path`` atomically; its path."""
    target = manifest_path(path)
    try:
        descriptor, name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
        )
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
            handle.write(b"\n")
        os.chmod(name, 0o644)
        os.replace(name, target)
    except OSError as error:
        with contextlib.suppress(OSError, UnboundLocalError):
            Path(name).unlink()
        raise ExportError(f"cannot write {target}: {error.strerror or error}") from None
    return target
