"""``greenroom train`` and ``greenroom eval preferences``: fine-tune and judge a LoRA adapter.

Typer command functions; ``bot/cli.py`` registers them. The work is in :mod:`training`
(TRL's trainers, peft); this module reads the options, finds the base model (the bundled
SmolLM2 GGUF by default, rebuilt once as a plain model under ``data_dir/models``) and prints the
outcome. Bad input (wrong export format for the method, an empty file, a missing adapter
folder, an option out of bounds) ends the command with one line on standard error, exit 2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bot.cli_common import err_console, fail, settings_or_exit
from bot.llm import ModelUnavailableError
from bot.llm.local import bundled_gguf_path

__all__ = ["eval_preferences_command", "installed_bundled_gguf", "train_command"]

_log = logging.getLogger(__name__)

_BASE_HELP = (
    "Base model: a Hugging Face model folder or a GGUF file "
    "(default: the bundled SmolLM2-135M-Instruct)."
)


def installed_bundled_gguf() -> Path | None:
    """The bundled GGUF where it is installed, or ``None``."""
    try:
        return bundled_gguf_path()
    except ModelUnavailableError:
        return None


def _quiet_libraries() -> None:
    """Keep the progress bars, drop transformers' and datasets' info lines."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_warning()
    datasets.logging.set_verbosity_warning()


def _errors() -> tuple[type[Exception], ...]:
    from training.adapters import AdapterError
    from training.base import BaseModelError
    from training.data import TrainingDataError
    from training.trainer import TrainingOptionError

    return (AdapterError, BaseModelError, TrainingDataError, TrainingOptionError)


def train_command(
    method: Annotated[str, typer.Option(help="sft, dpo or kto.", show_default=False)],
    data: Annotated[
        Path,
        typer.Option(help="The export: trl-sft, trl-dpo or trl-kto JSONL.", show_default=False),
    ],
    out: Annotated[
        Path, typer.Option(help="Folder for the adapter and its summary.", show_default=False)
    ],
    base: Annotated[Path | None, typer.Option(help=_BASE_HELP, show_default=False)] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after N optimizer steps (a quick run).")
    ] = None,
    epochs: Annotated[float, typer.Option(help="Passes over the data.")] = 3.0,
    batch_size: Annotated[int, typer.Option(help="Records per step (kto: at least 2).")] = 2,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Learning rate (default: sft 2e-4, dpo and kto 5e-5).", show_default=False
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the adapter's initialisation and order.")] = 0,
) -> None:
    """Fine-tune a LoRA adapter with TRL's SFT, DPO or KTO trainer on a Greenroom export.

    Records longer than the model's context are dropped and counted, never truncated; the
    training summary (records, steps, losses, seconds, peak memory) is written beside the
    adapter as training_summary.json.
    """
    from training.data import check_file
    from training.trainer import TrainOptions, train

    settings = settings_or_exit()
    options = TrainOptions(
        method=method,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        max_steps=max_steps,
        seed=seed,
    )
    try:
        options.check()
        check_file(data, options.method)  # before the base model is found (or rebuilt)
        _quiet_libraries()
        from training.base import resolve_base

        model = resolve_base(
            base, bundled=installed_bundled_gguf(), cache_dir=settings.data_dir / "models"
        )
        # The trainer writes its per-step logs to standard output; results go there, not logs.
        with contextlib.redirect_stdout(sys.stderr):
            summary = train(model, data, out, options)
    except _errors() as error:
        fail(str(error))
    _print_training(summary, out)


def _print_training(summary: dict[str, Any], out: Path) -> None:
    console = Console(highlight=False, soft_wrap=True)
    counts = summary["data"]
    console.print(
        f"trained a {summary['method']} LoRA adapter: {summary['steps']} steps in "
        f"{summary['seconds']:.0f} s, final loss {summary['losses'][-1]['loss']:.4g}, on "
        f"{counts['records_used']} of {counts['records_read']} records"
        if summary["losses"]
        else f"trained a {summary['method']} LoRA adapter: {summary['steps']} steps"
    )
    dropped = counts["dropped_longer_than_context"]
    if dropped:
        console.print(
            f"{dropped} records dropped: longer than the model's context "
            f"({counts['context_tokens']} tokens)"
        )
    console.print(f"wrote {out} (adapter and training_summary.json)")


def eval_preferences_command(
    data: Annotated[
        Path, typer.Option(help="Held-out trl-dpo records (export --split).", show_default=False)
    ],
    adapter: Annotated[
        Path, typer.Option(help="The adapter folder (greenroom train --out).", show_default=False)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Share of held-out pairs whose log-likelihood margin favours the chosen reply, base
    against adapter.

    The margin is log p(chosen) - log p(rejected) given the prompt; the base is the same model
    with the adapter switched off. Pairs longer than the model's context are dropped and
    counted.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from training.adapters import adapter_base, check_adapter
    from training.data import TrainingDataError, check_file
    from training.preferences import evaluate_preferences

    try:
        check_adapter(adapter)
        total = check_file(data, "preferences")
        _quiet_libraries()
        base = adapter_base(adapter, bundled=installed_bundled_gguf())
        with Progress(
            TextColumn("scoring pairs"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            task = progress.add_task("pairs", total=total)
            result = evaluate_preferences(
                adapter, data, base, progress=lambda n: progress.advance(task, n)
            )
    except (TrainingDataError, *_errors()) as error:
        fail(str(error))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    _print_preferences(result)


def _print_preferences(result: dict[str, Any]) -> None:
    table = Table("model", "pairs", "chosen preferred", "accuracy", "mean margin", "median margin")
    for label, key in (("base", "base"), ("with adapter", "with_adapter")):
        score = result[key]
        table.add_row(
            label,
            str(score["pairs"]),
            str(score["chosen_preferred"]),
            f"{score['accuracy']:.1%}",
            f"{score['mean_margin']:+.3f}",
            f"{score['median_margin']:+.3f}",
        )
    console = Console(highlight=False, soft_wrap=True)
    console.print(table)
    changed = result["pairs_changed"]
    console.print(
        f"pairs the adapter now prefers: {changed['now_preferred']}; "
        f"no longer prefers: {changed['no_longer_preferred']}"
    )
    data = result["data"]
    if data["dropped_longer_than_context"]:
        console.print(
            f"{data['dropped_longer_than_context']} pairs dropped: longer than the model's "
            f"context ({data['context_tokens']} tokens)"
        )
