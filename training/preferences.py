"""``greenroom eval preferences``: does the adapter prefer what the actors chose?

For each held-out ``trl-dpo`` pair (``greenroom export --split`` keeps whole conversations out
of training), the margin is log p(chosen | prompt) - log p(rejected | prompt), each the sum of
the reply's token log-probabilities after the chat template, as DPO scores replies. A pair
counts for a model when its margin is above 0. The base is the same model with the adapter
switched off, so the two columns differ by the adapter alone.

Pairs longer than the model's context are dropped and counted, as in training. Scoring runs
one sequence at a time on the CPU: about two forward passes per pair and model.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean, median
from typing import TYPE_CHECKING, Any

from training.adapters import load_with_adapter
from training.base import model_context
from training.data import check_file, prepare

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from training.base import BaseModel

__all__ = ["PreferenceScore", "evaluate_preferences", "reply_log_likelihood"]


@dataclass(frozen=True)
class PreferenceScore:
    """One model's margins on the held-out pairs."""

    margins: tuple[float, ...]

    @property
    def pairs(self) -> int:
        return len(self.margins)

    @property
    def preferred(self) -> int:
        """Pairs whose margin favours the chosen reply."""
        return sum(margin > 0 for margin in self.margins)

    @property
    def accuracy(self) -> float:
        return self.preferred / self.pairs if self.pairs else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "chosen_preferred": self.preferred,
            "accuracy": round(self.accuracy, 4),
            "mean_margin": round(fmean(self.margins), 4) if self.margins else None,
            "median_margin": round(median(self.margins), 4) if self.margins else None,
        }


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def reply_log_likelihood(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: list[dict[str, str]],
    reply: list[dict[str, str]],
) -> float:
    """Sum of the reply's token log-probabilities given the prompt, as TRL tokenizes a
    conversational pair: the prompt with the generation prompt, then the rest of the templated
    conversation."""
    import torch

    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + reply, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template does not keep the prompt as a prefix")
    prompt_ids = _ids(tokenizer, prompt_text)
    reply_ids = _ids(tokenizer, full_text[len(prompt_text) :])
    ids = torch.tensor([prompt_ids + reply_ids], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    targets = torch.tensor(reply_ids, device=model.device).unsqueeze(1)
    return float(log_probs.gather(1, targets).sum())


def evaluate_preferences(
    adapter: Path,
    data_path: Path,
    base: BaseModel,
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Base and adapter margins on the pairs of ``data_path``, with the data's counts.

    ``progress`` is called with the number of pairs scored (for both models) after each pair.
    Raises :class:`~training.adapters.AdapterError` or
    :class:`~training.data.TrainingDataError` (one line each) before any scoring.
    """
    check_file(data_path, "preferences")  # before the model loads: a wrong file fails at once
    model, tokenizer = load_with_adapter(adapter, base)
    data = prepare(data_path, "preferences", tokenizer, context_tokens=model_context(model.config))
    base_margins: list[float] = []
    adapter_margins: list[float] = []

    def margin(row: dict[str, Any]) -> float:
        return reply_log_likelihood(model, tokenizer, row["prompt"], row["chosen"]) - (
            reply_log_likelihood(model, tokenizer, row["prompt"], row["rejected"])
        )

    for row in data.rows:
        adapter_margins.append(margin(row))
        with model.disable_adapter():
            base_margins.append(margin(row))
        if progress is not None:
            progress(1)
    return {
        "data": data.summary(),
        "adapter": str(adapter),
        "base_model": base.summary(),
        "base": PreferenceScore(tuple(base_margins)).summary(),
        "with_adapter": PreferenceScore(tuple(adapter_margins)).summary(),
        "pairs_changed": {
            "now_preferred": sum(
                b <= 0 < a for b, a in zip(base_margins, adapter_margins, strict=True)
            ),
            "no_longer_preferred": sum(
                a <= 0 < b for b, a in zip(base_margins, adapter_margins, strict=True)
            ),
        },
    }
