"""``greenroom train``: a LoRA adapter fine-tuned by TRL's own trainers on a Greenroom export.

A thin wrapper: the export is mapped to TRL's conversational format (:mod:`training.data`), and
TRL's ``SFTTrainer``, ``DPOTrainer`` or ``KTOTrainer`` trains a peft LoRA adapter on the base
model (:mod:`training.base`); no training loop is written here. DPO and KTO use the base with
the adapter switched off as their reference model.

CPU defaults, and why: float32 (no bf16 on most CPUs), no gradient checkpointing (a 135M model
fits in memory; recomputing costs time), ``max_length`` = the longest kept record, so TRL never
truncates a record (longer ones were dropped and counted), batches of 2 (KTO compares each reply
with another in its batch, so it needs at least 2), 3 epochs, LoRA rank 16 on every linear
layer. The adapter (``adapter_config.json``, ``adapter_model.safetensors``), the tokenizer and
``training_summary.json`` are written to the output folder.
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.base import load_base, model_context
from training.data import METHODS, check_file, prepare

if TYPE_CHECKING:
    from training.base import BaseModel
    from training.data import PreparedData

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "SUMMARY_FILE",
    "TrainOptions",
    "TrainingOptionError",
    "train",
]

_log = logging.getLogger(__name__)

#: The file written beside the adapter.
SUMMARY_FILE = "training_summary.json"
#: Learning rates for a LoRA adapter: SFT moves further per step than the preference losses.
DEFAULT_LEARNING_RATES: dict[str, float] = {"sft": 2e-4, "dpo": 5e-5, "kto": 5e-5}
#: Bounds on the options (a trainer's input has limits, too).
MAX_EPOCHS = 100
MAX_BATCH_SIZE = 256
MAX_STEPS = 1_000_000


class TrainingOptionError(Exception):
    """An option is out of its bounds; the message is one line naming it."""


@dataclass(frozen=True)
class TrainOptions:
    """How to train; see the module docstring for the defaults."""

    method: str
    epochs: float = 3.0
    batch_size: int = 2
    #: ``None``: :data:`DEFAULT_LEARNING_RATES` of the method.
    learning_rate: float | None = None
    #: Stop after this many optimizer steps (a quick run); ``None``: run the epochs.
    max_steps: int | None = None
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    #: DPO and KTO: how far the policy may move from the reference.
    beta: float = 0.1

    def check(self) -> None:
        """Raise :class:`TrainingOptionError` for an option out of bounds."""
        if self.method not in METHODS:
            raise TrainingOptionError(
                f"--method must be one of {', '.join(METHODS)}, not {self.method!r}"
            )
        if not 0 < self.epochs <= MAX_EPOCHS:
            raise TrainingOptionError(f"--epochs must be above 0 and at most {MAX_EPOCHS}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise TrainingOptionError(f"--batch-size must be 1 to {MAX_BATCH_SIZE}")
        if self.method == "kto" and self.batch_size < 2:
            raise TrainingOptionError(
                "--batch-size must be at least 2 for kto (it compares replies within a batch)"
            )
        if self.learning_rate is not None and not 0 < self.learning_rate <= 1:
            raise TrainingOptionError("--lr must be above 0 and at most 1")
        if self.max_steps is not None and not 1 <= self.max_steps <= MAX_STEPS:
            raise TrainingOptionError(f"--max-steps must be 1 to {MAX_STEPS:,}")

    @property
    def lr(self) -> float:
        return self.learning_rate or DEFAULT_LEARNING_RATES[self.method]


def _trl_config(options: TrainOptions, out: Path, data: PreparedData) -> Any:
    """The TRL config of the method, with the CPU defaults of the module docstring."""
    from trl import DPOConfig, KTOConfig, SFTConfig

    common: dict[str, Any] = {
        "output_dir": str(out),
        "num_train_epochs": options.epochs,
        "max_steps": options.max_steps or -1,
        "per_device_train_batch_size": options.batch_size,
        "learning_rate": options.lr,
        "max_length": data.max_length,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "fp16": False,
        "activation_checkpointing": False,
        "seed": options.seed,
        "data_seed": options.seed,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "disable_tqdm": False,
    }
    if options.method == "sft":
        return SFTConfig(**common, completion_only_loss=True)
    if options.method == "dpo":
        return DPOConfig(**common, beta=options.beta)
    return KTOConfig(**common, beta=options.beta)


def _lora(options: TrainOptions) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules="all-linear",
    )


def prepare_for(base: BaseModel, data_path: Path, method: str) -> tuple[Any, Any, PreparedData]:
    """The base model, its tokenizer, and the export read for ``method`` at the model's
    context."""
    check_file(data_path, method)  # before the model loads: a wrong file fails at once
    model, tokenizer = load_base(base.folder)
    data = prepare(data_path, method, tokenizer, context_tokens=model_context(model.config))
    return model, tokenizer, data


def train(base: BaseModel, data_path: Path, out: Path, options: TrainOptions) -> dict[str, Any]:
    """Train an adapter into ``out`` and return the summary written beside it.

    Raises :class:`TrainingOptionError`, :class:`~training.data.TrainingDataError` or
    :class:`~training.base.BaseModelError` (one line each) before any training starts.
    """
    options.check()
    if out.exists() and not out.is_dir():
        raise TrainingOptionError(f"--out {out} is a file; give a folder for the adapter")
    model, tokenizer, data = prepare_for(base, data_path, options.method)
    if options.method == "kto" and len(data.rows) < options.batch_size:
        raise TrainingOptionError(
            f"{data_path}: kto needs at least --batch-size ({options.batch_size}) records, "
            f"and {len(data.rows)} are left"
        )
    from datasets import Dataset
    from trl import DPOTrainer, KTOTrainer, SFTTrainer

    trainer_class = {"sft": SFTTrainer, "dpo": DPOTrainer, "kto": KTOTrainer}[options.method]
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    trainer = trainer_class(
        model=model,
        args=_trl_config(options, out, data),
        train_dataset=Dataset.from_list(data.rows),
        processing_class=tokenizer,
        peft_config=_lora(options),
    )
    cpu_before = _cpu_seconds()
    result = trainer.train()
    cpu = _cpu_seconds() - cpu_before
    elapsed = time.perf_counter() - started
    runtime = float(result.metrics.get("train_runtime", elapsed))
    trainer.save_model(str(out))
    losses = [
        {"step": entry["step"], "loss": entry["loss"]}
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    summary = {
        "method": options.method,
        "base": base.summary(),
        "data": data.summary(),
        "options": {**asdict(options), "learning_rate": options.lr},
        "steps": trainer.state.global_step,
        "epochs_done": round(float(trainer.state.epoch or 0.0), 4),
        "train_loss": result.training_loss,
        "losses": losses,
        "seconds": round(elapsed, 2),
        "seconds_per_step": round(runtime / max(trainer.state.global_step, 1), 3),
        # CPU time says more than wall time on a shared machine
        "cpu_seconds_per_step": round(cpu / max(trainer.state.global_step, 1), 3),
        "peak_rss_mib": _peak_rss_mib(),
        "versions": _versions(),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _cpu_seconds() -> float:
    """User and system CPU seconds of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mib() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {name: version(name) for name in ("torch", "transformers", "trl", "peft")}
    return {**found, "python": platform.python_version()}
