"""A stability run as JSON and a PNG plot; two runs side by side.

``stability.json`` holds the pass rate overall and per probe kind, by turn depth, the
consistency flags of the conversation's own replies by depth, every probe, the timing, and the
transcripts. ``stability.png`` plots the pass rates by depth above the flags. A side-by-side
run adds ``comparison.json`` and ``comparison.png`` (run ``a`` solid, ``b`` dashed).
Files are written whole or not at all (a temporary file, then a rename).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from personas.probes import PROBE_KINDS

from .scoring import contradiction_over_threshold, drift_score

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .records import ProbeRecord, RunResult

__all__ = [
    "FORMAT_VERSION",
    "compare",
    "plot_comparison",
    "plot_run",
    "summarize",
    "write_comparison",
    "write_run",
]

#: ``format`` of the JSON files; bumped when a key changes meaning.
FORMAT_VERSION = 1
_SERIES = ("overall", *PROBE_KINDS)
_COLOURS = {"overall": "black", "canon": "tab:blue", "boundary": "tab:red", "voice": "tab:green"}


def _rate(probes: Sequence[ProbeRecord]) -> dict[str, Any]:
    passed = sum(1 for probe in probes if probe.passed)
    return {
        "asked": len(probes),
        "passed": passed,
        "rate": round(passed / len(probes), 4) if probes else None,
    }


def _of(series: str, probes: Sequence[ProbeRecord]) -> list[ProbeRecord]:
    return list(probes) if series == "overall" else [p for p in probes if p.kind == series]


def summarize(result: RunResult) -> dict[str, Any]:
    """The run as a JSON-safe dict (see the module docstring)."""
    probes = [probe for c in result.conversations for probe in c.probes]
    turns = [turn for c in result.conversations for turn in c.turns]
    depths = sorted({probe.depth for probe in probes})
    by_depth = [
        {
            "depth": depth,
            **{s: _rate(_of(s, [p for p in probes if p.depth == depth])) for s in _SERIES},
        }
        for depth in depths
    ]
    replies = []
    for depth in sorted({turn.depth for turn in turns}):
        at = [turn for turn in turns if turn.depth == depth]
        drifts = [d for t in at if (d := drift_score(t.flags)) is not None]
        contradicted = sum(1 for t in at if contradiction_over_threshold(t.flags))
        replies.append(
            {
                "depth": depth,
                "replies": len(at),
                "contradiction_rate": round(contradicted / len(at), 4),
                "drift_mean": round(statistics.fmean(drifts), 4) if drifts else None,
                "fallback_rate": round(sum(t.fallback for t in at) / len(at), 4),
            }
        )
    by_probe: dict[tuple[str, str], list[ProbeRecord]] = {}
    for probe in probes:
        by_probe.setdefault((probe.kind, probe.ask), []).append(probe)
    sources: dict[str, int] = {}
    for turn in turns:
        sources[turn.user_source] = sources.get(turn.user_source, 0) + 1
    first, last = (by_depth[0], by_depth[-1]) if by_depth else ({}, {})
    return {
        "format": FORMAT_VERSION,
        "label": result.label,
        "persona": result.persona,
        "persona_version": result.persona_version,
        "card_version": result.card_version,
        "model": result.model,
        "user_model": result.user_model if result.user_model is not None else "replayed",
        "config": dataclasses.asdict(result.config),
        "memory": result.memory,
        "probes": {
            "summary": result.probes.describe(),
            "declared_kinds": list(result.probes.declared_kinds),
            "derived_kinds": list(result.probes.derived_kinds),
            "list": [
                probe.model_dump(exclude_defaults=True, exclude_none=True)
                for probe in result.probes.probes
            ],
            "not_derived": [dataclasses.asdict(item) for item in result.probes.not_derived],
        },
        "pass_rate": {s: _rate(_of(s, probes)) for s in _SERIES},
        "change": {
            s: _change(first.get(s), last.get(s)) for s in _SERIES if first and len(depths) > 1
        },
        "by_depth": by_depth,
        "replies_by_depth": replies,
        "by_probe": [
            {"kind": kind, "ask": ask, "source": asked[0].source, **_rate(asked)}
            for (kind, ask), asked in sorted(by_probe.items())
        ],
        "user_lines": sources,
        "timing": {
            "seconds": round(result.seconds, 3),
            "turns": len(turns),
            "turns_per_s": round(len(turns) / result.seconds, 4) if result.seconds else None,
            "probes": len(probes),
            "persona_s": round(result.persona_s, 3),
            "user_s": round(result.user_s, 3),
            "probe_s": round(result.probe_s, 3),
        },
        "conversations": [dataclasses.asdict(c) for c in result.conversations],
    }


def _change(first: dict[str, Any] | None, last: dict[str, Any] | None) -> float | None:
    """Pass rate at the deepest probe point minus the first (negative: the persona drifted)."""
    if not first or not last or first["rate"] is None or last["rate"] is None:
        return None
    return round(last["rate"] - first["rate"], 4)


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two summaries side by side: pass rates and their difference (``b - a``) overall, per
    kind and by depth."""

    def side(summary: dict[str, Any]) -> dict[str, Any]:
        keys = ("label", "persona_version", "card_version", "model", "pass_rate", "change")
        return {key: summary[key] for key in keys}

    def diff(x: dict[str, Any] | None, y: dict[str, Any] | None) -> float | None:
        if not x or not y or x["rate"] is None or y["rate"] is None:
            return None
        return round(y["rate"] - x["rate"], 4)

    depths_b = {row["depth"]: row for row in b["by_depth"]}
    return {
        "format": FORMAT_VERSION,
        "persona": a["persona"],
        "config": a["config"],
        "same_user_lines": _user_lines(a) == _user_lines(b),
        "a": side(a),
        "b": side(b),
        "difference": {s: diff(a["pass_rate"][s], b["pass_rate"][s]) for s in _SERIES},
        "by_depth": [
            {
                "depth": row["depth"],
                "a": {s: row[s]["rate"] for s in _SERIES},
                "b": {s: depths_b[row["depth"]][s]["rate"] for s in _SERIES}
                if row["depth"] in depths_b
                else None,
                "difference": {
                    s: diff(row[s], depths_b.get(row["depth"], {}).get(s)) for s in _SERIES
                },
            }
            for row in a["by_depth"]
        ],
    }


def _user_lines(summary: dict[str, Any]) -> list[list[str]]:
    return [[turn["user"] for turn in c["turns"]] for c in summary["conversations"]]


# -- plots ---------------------------------------------------------------------------------


def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure, figure.subplots(rows, cols, squeeze=False)


def _pass_rates(axes: Axes, summary: dict[str, Any], series: str, style: str, name: str) -> bool:
    points = [(row["depth"], row[series]["rate"]) for row in summary["by_depth"]]
    points = [(depth, rate) for depth, rate in points if rate is not None]
    if not points:
        return False
    axes.plot(
        [d for d, _ in points],
        [r for _, r in points],
        style,
        color=_COLOURS[series],
        marker="o",
        markersize=3,
        linewidth=2.2 if series == "overall" else 1.4,
        label=name,
    )
    return True


def _rate_axes(axes: Axes, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title)
    axes.set_xlabel("turn depth (exchanges before the probe)")
    axes.set_ylabel("pass rate")
    axes.set_ylim(-0.03, 1.03)
    axes.grid(alpha=0.3)


def plot_run(summary: dict[str, Any]) -> Figure:
    """Pass rate by depth per kind and overall; below, the replies' flags by depth."""
    figure, grid = _figure(2, 1, 8.0, 7.0)
    top, bottom = grid[0][0], grid[1][0]
    _rate_axes(top, f"{summary['persona']}: probe pass rate by turn depth ({summary['label']})")
    drawn = [s for s in _SERIES if _pass_rates(top, summary, s, "-", s)]
    if drawn:
        top.legend(loc="best", fontsize=8)
    rows = summary["replies_by_depth"]
    bottom.set_title("the conversation's own replies: Greenroom's consistency flags")
    bottom.set_xlabel("turn depth")
    bottom.set_ylim(-0.03, 1.03)
    bottom.grid(alpha=0.3)
    if rows:
        depths = [row["depth"] for row in rows]
        bottom.plot(
            depths,
            [row["contradiction_rate"] for row in rows],
            color="tab:purple",
            label="share with a contradiction over threshold",
        )
        drift = [(row["depth"], row["drift_mean"]) for row in rows if row["drift_mean"] is not None]
        if drift:
            bottom.plot(
                [d for d, _ in drift],
                [v for _, v in drift],
                color="tab:orange",
                label="mean drift (1 - cosine to the voice)",
            )
        bottom.legend(loc="best", fontsize=8)
    return figure


def plot_comparison(a: dict[str, Any], b: dict[str, Any]) -> Figure:
    """One panel per kind and overall: run ``a`` solid, ``b`` dashed."""
    figure, grid = _figure(2, 2, 11.0, 7.5)
    names = _names(a, b)
    for axes, series in zip((cell for row in grid for cell in row), _SERIES, strict=True):
        _rate_axes(axes, series)
        drawn = _pass_rates(axes, a, series, "-", names[0])
        drawn = _pass_rates(axes, b, series, "--", names[1]) or drawn
        if drawn:
            axes.legend(loc="best", fontsize=7)
        else:
            axes.text(0.5, 0.5, "no probes of this kind", ha="center", va="center", color="grey")
    figure.suptitle(f"{a['persona']}: side by side on the same user lines")
    return figure


def _names(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, str]:
    """Legend names: each run's model and card, with the model settings that differ."""
    differ = sorted(k for k in {*a["model"], *b["model"]} if a["model"].get(k) != b["model"].get(k))

    def name(summary: dict[str, Any]) -> str:
        model = summary["model"]
        settings = ", ".join(f"{k} {model.get(k)}" for k in differ if k != "name")
        card = summary["card_version"] or summary["persona_version"]
        if summary["card_version"] and a["card_version"] == b["card_version"]:
            card = f"{card} ({summary['persona_version'][:8]})"
        described = f"{model.get('name')}" + (f" ({settings})" if settings else "")
        return f"{summary['label']}: {described}, card {card}"

    return name(a), name(b)


# -- files ---------------------------------------------------------------------------------


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(descriptor)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: dict[str, Any]) -> None:
    payload = orjson.dumps(data, option=orjson.OPT_INDENT_2)
    _write_atomically(path, lambda name: Path(name).write_bytes(payload + b"\n"))


def _write_png(path: Path, figure: Figure) -> None:
    _write_atomically(path, lambda name: figure.savefig(name, format="png"))


def write_run(summary: dict[str, Any], folder: Path) -> list[Path]:
    """``stability.json`` and ``stability.png`` in ``folder`` (created); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "stability.json", folder / "stability.png"]
    _write_json(paths[0], summary)
    _write_png(paths[1], plot_run(summary))
    return paths


def write_comparison(a: dict[str, Any], b: dict[str, Any], folder: Path) -> list[Path]:
    """``comparison.json`` and ``comparison.png`` in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "comparison.json", folder / "comparison.png"]
    _write_json(paths[0], compare(a, b))
    _write_png(paths[1], plot_comparison(a, b))
    return paths
