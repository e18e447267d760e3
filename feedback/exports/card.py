"""The dataset card written beside every export: ``README.md``, in the Hugging Face dataset
card convention (a YAML header, then Markdown).

The header holds what the Hub reads (``pretty_name``, ``language``, ``license``, ``tags``,
``task_categories``, ``size_categories``, and ``configs`` naming the files per split, so
``datasets.load_dataset(folder)`` finds them) and a ``greenroom`` block with the rest as data:
format, counts, filters, rubric, agreement figures, consent basis, erasure cursor. The body says
the same for people. One card per folder: an export into a folder that already has one
replaces it (export each dataset into a folder of its own).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from huggingface_hub import DatasetCard, DatasetCardData

from feedback.exports.filters import ExportError
from feedback.exports.manifest import filters_of, greenroom_version

if TYPE_CHECKING:
    from datetime import datetime

    from feedback.exports.filters import ExportFilter

__all__ = ["CARD_NAME", "CONSENT_BASIS", "CardFacts", "dataset_card", "write_dataset_card"]

CARD_NAME = "README.md"
#: Why each record may be used for training (the consent rule of every export).
CONSENT_BASIS = (
    "Each record comes from a user turn whose author agreed to training use: an explicit yes "
    "(/consent in Discord, /consent on in the terminal), or, in a server channel, the server's "
    "default (/consent-default) when the user has not said. DM and terminal turns need an "
    "explicit yes. Users who asked to be forgotten are left out, and records erased after the "
    "export are listed by the erasure feed (see the manifest's erasure_cursor)."
)
_TASKS = {
    "openai-sft": "supervised fine-tuning (OpenAI chat format)",
    "trl-sft": "supervised fine-tuning (TRL conversational)",
    "openai-dpo": "preference pairs (OpenAI DPO format)",
    "trl-dpo": "preference pairs (TRL DPO, explicit prompt)",
    "trl-kto": "binary feedback (TRL KTO, unpaired)",
    "oasst": "ranked reply trees (OpenAssistant message trees)",
}


class CardFacts(TypedDict, total=False):
    """What the card states beyond the files."""

    #: ``{"version": ..., "dimensions": [{"name": ..., "label": ...}, ...]}``
    rubric: dict[str, Any]
    #: :meth:`feedback.agreement.Coefficients.as_dict` of each dimension and flag.
    agreement: list[dict[str, Any]]
    #: How many reviews and reviewing actors the agreement figures are over.
    reviews: int
    actors: int
    erasure_cursor: str
    #: User turns left out, by reason.
    skipped: dict[str, int]


def _size_category(records: int) -> str:
    bounds = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"))
    bounds += ((1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))
    for bound, label in bounds:
        if records < bound:
            return label
    return "10M<n<100M"


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def dataset_card(
    *,
    fmt: str,
    files: dict[str, tuple[Path, int]],
    flt: ExportFilter,
    exported_at: datetime,
    facts: CardFacts,
) -> str:
    """The card's text. ``files`` maps each split (``all`` without a split) to its file and
    record count."""
    total = sum(count for _, count in files.values())
    configs = [
        {
            "config_name": "default",
            "data_files": [
                {"split": "train" if split == "all" else split, "path": path.name}
                for split, (path, _) in files.items()
            ],
        }
    ]
    rubric = facts.get("rubric") or {"version": None, "dimensions": []}
    agreement = list(facts.get("agreement") or [])
    greenroom = {
        "format": fmt,
        "records": {split: count for split, (_, count) in files.items()},
        "exported_at": exported_at.isoformat(),
        "greenroom_version": greenroom_version(),
        "filters": filters_of(flt),
        "rubric": rubric,
        "agreement": agreement,
        "reviews": facts.get("reviews", 0),
        "actors": facts.get("actors", 0),
        "consent_basis": CONSENT_BASIS,
        "erasure_cursor": facts.get("erasure_cursor"),
        "turns_skipped": dict(facts.get("skipped") or {}),
    }
    data = DatasetCardData(
        language=["en"],
        license="other",
        pretty_name=f"Greenroom {fmt} export",
        size_categories=[_size_category(total)],
        task_categories=["text-generation"],
        tags=["greenroom", "human-feedback", "roleplay", "persona", fmt],
        configs=configs,
        greenroom=greenroom,
    )
    lines = [
        f"# Greenroom {fmt} export",
        "",
        f"{_TASKS.get(fmt, fmt)}: {total:,} records, exported {exported_at:%Y-%m-%d %H:%M} UTC "
        f"by Greenroom {greenroom_version()}. Replies of personas, judged by human actors.",
        "",
        "## Files",
        "",
        "| split | file | records |",
        "|---|---|---|",
        *(f"| {split} | `{path.name}` | {count:,} |" for split, (path, count) in files.items()),
        "",
        "Each file has a `<file>.manifest.json` beside it. Every record carries `record_id`, "
        "`persona_version` and `quality`: the rubric scores' consensus, the number of reviews, "
        "their consensus and agreement, and the deciding actors' trust weights.",
        "",
        "## Filters",
        "",
        *(f"- `{name}`: {_fmt(value)}" for name, value in filters_of(flt).items()),
        "",
        f"## Rubric (version {rubric.get('version') or 'n/a'})",
        "",
        "Scores 1 to 5 per dimension, and an unsafe/invalid flag with every score.",
        "",
        *(f"- `{d['name']}`: {d.get('label', '')}" for d in rubric.get("dimensions", [])),
        "",
        "## Agreement between reviewers",
        "",
        f"Over {facts.get('reviews', 0):,} reviews by {facts.get('actors', 0):,} actors. "
        "Krippendorff's alpha (ordinal for scores, nominal for flags; `krippendorff`), "
        "Gwet's AC1 and AC2 (ordinal weights; `irrCAC`) and raw agreement (the share of "
        "agreeing pairs). Alpha collapses when nearly every label is the same; read AC1 "
        "beside it.",
        "",
        "| dimension | items | alpha | AC1 | AC2 | raw |",
        "|---|---|---|---|---|---|",
        *(
            f"| {row['name']} | {row['units']:,} | {_fmt(row['alpha'])} | {_fmt(row['ac1'])} "
            f"| {_fmt(row['ac2'])} | {_fmt(row['raw_agreement'])} |"
            for row in agreement
        ),
        "",
        "## Trust",
        "",
        "An actor's trust weight (0 to 1) is (2 x gold right + consensus agreements + 1) / "
        "(2 x gold reviews + compared reviews + 2), scaled down when their median review takes "
        "under 5 s; an actor never measured has 0.5. See Greenroom's README.",
        "",
        "## Consent basis",
        "",
        CONSENT_BASIS,
        "",
        "## Your duty: erasure",
        "",
        "Poll `GET /v1/erasures?cursor=<erasure_cursor>` (the cursor is in each manifest) and "
        "delete every record it lists from every copy of this dataset.",
        "",
    ]
    return f"---\n{data.to_yaml()}\n---\n" + "\n".join(lines)


def write_dataset_card(out: Path, text: str) -> Path:
    """Write ``text`` as ``README.md`` in the folder of the export file ``out``, atomically
    (checked to parse as a dataset card first); its path."""
    DatasetCard(text)  # raises if the YAML header does not parse
    target = out.with_name(CARD_NAME)
    name = None
    try:
        descriptor, name = tempfile.mkstemp(
            prefix=f".{CARD_NAME}.", suffix=".tmp", dir=target.parent
        )
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(name, 0o644)
        os.replace(name, target)
    except OSError as error:
        if name is not None:
            with contextlib.suppress(OSError):
                Path(name).unlink()
        raise ExportError(f"cannot write {target}: {error.strerror or error}") from None
    return target
