"""``greenroom train`` and ``eval preferences`` on Greenroom's own exports, on a tiny model.

TRL's real trainers run a couple of steps on a 2-layer model built from a config here (no
download); the exports come from a seeded database through the real export code. The serving
of adapters is in ``test_training_serving.py``.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from bot.cli import app
from tests.train_world import export_scenario_once, tiny_model_folder
from training.base import BaseModel
from training.data import TrainingDataError, prepare
from training.preferences import evaluate_preferences, reply_log_likelihood
from training.trainer import SUMMARY_FILE, TrainingOptionError, TrainOptions, train

if TYPE_CHECKING:
    from pathlib import Path

FORMATS = {"sft": "trl-sft", "dpo": "trl-dpo", "kto": "trl-kto"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> BaseModel:
    folder = tiny_model_folder(tmp_path_factory.mktemp("tiny"))
    return BaseModel("folder", folder, folder)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The scenario exported once per format (training reads files: one backend is enough)."""
    paths = export_scenario_once(tmp_path_factory.mktemp("exports"), *FORMATS.values())
    return dict(zip(FORMATS, paths, strict=True))


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


# -- mapping --------------------------------------------------------------------------------


def test_exports_map_to_trl_rows_without_names_or_ids(
    exports: dict[str, Path], tiny: BaseModel
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.folder)
    sft = prepare(exports["sft"], "sft", tokenizer, context_tokens=2048)
    records = _lines(exports["sft"])
    assert sft.records_read == len(sft.rows) == len(records)
    for row, record in zip(sft.rows, records, strict=True):
        # the reply is the completion; everything before it (examples included) the prompt
        assert row["completion"] == [
            {"role": "assistant", "content": record["messages"][-1]["content"]}
        ]
        assert [m["content"] for m in row["prompt"]] == [
            m["content"] for m in record["messages"][:-1]
        ]
        assert all(set(m) == {"role", "content"} for m in row["prompt"])
    assert sft.persona_versions == {"v-marlowe": len(records)}
    kto = prepare(exports["kto"], "kto", tokenizer, context_tokens=2048)
    assert {row["label"] for row in kto.rows} == {True, False}
    assert max(kto.lengths) == kto.max_length


def test_named_example_and_context_messages_lose_their_names(
    tiny: BaseModel, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    record = {
        "record_id": "rec_1",
        "persona_version": "v1",
        "prompt": [
            {"role": "system", "content": "You are Marlowe."},
            {"role": "user", "content": "Hi.", "name": "example_user"},
            {"role": "assistant", "content": "Evening.", "name": "example_assistant"},
            {"role": "system", "content": "What you remember: rain.", "name": "context"},
            {"role": "user", "content": "Hello"},
        ],
        "chosen": [{"role": "assistant", "content": "Evening, friend."}],
        "rejected": [{"role": "assistant", "content": "Whatever."}],
    }
    path = tmp_path / "dpo.jsonl"
    path.write_text(json.dumps(record) + "\n")
    data = prepare(path, "dpo", AutoTokenizer.from_pretrained(tiny.folder), context_tokens=2048)
    (row,) = data.rows
    assert set(row) == {"prompt", "chosen", "rejected"}
    assert [m["role"] for m in row["prompt"]] == ["system", "user", "assistant", "system", "user"]
    assert all("name" not in m for m in row["prompt"])


# -- training -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(FORMATS))
def test_trl_trainers_train_an_adapter_on_an_export(
    method: str, exports: dict[str, Path], tiny: BaseModel, tmp_path: Path
) -> None:
    out = tmp_path / f"adapter-{method}"
    summary = train(tiny, exports[method], out, TrainOptions(method=method, max_steps=2))
    assert (out / "adapter_config.json").is_file()
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary
    assert summary["steps"] == 2 and len(summary["losses"]) == 2
    assert all(math.isfinite(entry["loss"]) for entry in summary["losses"])
    records = len(_lines(exports[method]))
    assert summary["data"]["records_read"] == summary["data"]["records_used"] == records
    assert summary["base"] == tiny.summary()
    assert summary["peak_rss_mib"] > 0 and summary["seconds_per_step"] > 0
    assert summary["cpu_seconds_per_step"] > 0
    # LoRA's B matrices start at zero: any non-zero one means the optimizer stepped
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in weights.items() if "lora_B" in name]
    assert lora_b and any(float(tensor.abs().max()) > 0 for tensor in lora_b)


def test_records_longer_than_the_context_are_dropped_and_counted(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    short = BaseModel("folder", *(2 * [tiny_model_folder(tmp_path / "short", context=96)]))
    records = _lines(exports["kto"])
    lengths_ok = prepare(exports["kto"], "kto", _tokenizer(short), context_tokens=96)
    assert 0 < lengths_ok.dropped_too_long < len(records)  # the scenario's longest ones
    out = tmp_path / "adapter"
    summary = train(short, exports["kto"], out, TrainOptions(method="kto", max_steps=1))
    data = summary["data"]
    assert data["dropped_longer_than_context"] == lengths_ok.dropped_too_long
    assert data["records_used"] + data["dropped_longer_than_context"] == len(records)
    assert data["max_length"] <= 96
    # every record too long: an error, not an empty run
    long = tmp_path / "long.jsonl"
    record = {**records[0], "prompt": [{"role": "user", "content": "rain " * 200}]}
    long.write_text(json.dumps(record) + "\n")
    with pytest.raises(TrainingDataError, match=r"long\.jsonl: all 1 records are longer"):
        train(short, long, tmp_path / "none", TrainOptions(method="kto"))


def _tokenizer(base: BaseModel) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base.folder)


# -- bad input ------------------------------------------------------------------------------


def test_bad_export_files_are_one_line_errors_naming_the_file(
    exports: dict[str, Path], tiny: BaseModel, tmp_path: Path
) -> None:
    def refused(method: str, path: Path) -> str:
        with pytest.raises(TrainingDataError) as caught:
            train(tiny, path, tmp_path / "out", TrainOptions(method=method))
        message = str(caught.value)
        assert "\n" not in message and str(path) in message
        return message

    assert "a trl-dpo record, but --method sft needs trl-sft" in refused("sft", exports["dpo"])
    assert "--method kto needs trl-kto" in refused("kto", exports["sft"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert "empty (no records)" in refused("dpo", empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(exports["dpo"].read_text() + "{not json\n")
    assert f"line {len(_lines(exports['dpo'])) + 1}: not JSON" in refused("dpo", broken)
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"prompt": [{"role": "user", "content": "x"}], "chosen": []}) + "\n")
    assert "keys ['chosen', 'prompt']" in refused("dpo", odd)
    assert "no such file" in refused("dpo", tmp_path / "absent.jsonl")
    assert not (tmp_path / "out").exists()
    with pytest.raises(TrainingOptionError, match="at least 2 for kto"):
        train(tiny, exports["kto"], tmp_path / "out", TrainOptions(method="kto", batch_size=1))


def test_cli_bad_input_is_one_line_exit_2(
    exports: dict[str, Path], tiny: BaseModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREENROOM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GREENROOM_CONFIG", str(tmp_path / "absent.toml"))
    dpo, out, base = str(exports["dpo"]), str(tmp_path / "out"), str(tiny.folder)
    train_cases = [
        (["--method", "sft", "--data", dpo, "--base", base], "--method sft needs trl-sft"),
        (["--method", "orpo", "--data", dpo, "--base", base], "--method must be one of"),
        (["--method", "dpo", "--data", str(tmp_path / "no.jsonl")], "no.jsonl: no such file"),
        (["--method", "dpo", "--data", dpo, "--epochs", "0"], "--epochs must be above 0"),
        (["--method", "dpo", "--data", dpo, "--base", str(tmp_path)], "no config.json"),
        (["--method", "dpo", "--data", dpo, "--base", dpo], "neither a model folder nor a GGUF"),
    ]
    eval_cases = [
        ([dpo, str(tmp_path / "nowhere")], "nowhere: no such adapter folder"),
        ([dpo, str(tmp_path)], "not an adapter folder (no adapter_config.json"),
    ]
    runs = [(["train", *args, "--out", out], expected) for args, expected in train_cases]
    runs += [
        (["eval", "preferences", "--data", data, "--adapter", adapter], expected)
        for (data, adapter), expected in eval_cases
    ]
    for args, expected in runs:
        code, _, stderr = _cli(*args)
        assert code == 2, (args, stderr)
        assert expected in stderr and stderr.count("\n") == 1, (args, stderr)
    assert not (tmp_path / "out").exists()


def test_cli_trains_and_evaluates_with_results_on_stdout(
    exports: dict[str, Path], tiny: BaseModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREENROOM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GREENROOM_CONFIG", str(tmp_path / "absent.toml"))
    out = tmp_path / "adapter"
    dpo = str(exports["dpo"])
    args = ["--data", dpo, "--out", str(out), "--base", str(tiny.folder), "--max-steps", "1"]
    code, stdout, stderr = _cli("train", "--method", "dpo", *args)
    assert code == 0, stderr
    assert "trained a dpo LoRA adapter: 1 steps" in stdout and f"wrote {out}" in stdout
    assert "'loss'" not in stdout and "'loss'" in stderr  # the trainer's logs: standard error
    code, stdout, stderr = _cli("eval", "preferences", "--data", dpo, "--adapter", str(out))
    assert code == 0, stderr
    assert "with adapter" in stdout and "pairs the adapter now prefers" in stdout
    code, stdout, _ = _cli("eval", "preferences", "--data", dpo, "--adapter", str(out), "--json")
    result = json.loads(stdout)
    assert result["with_adapter"]["pairs"] == len(_lines(exports["dpo"]))


# -- preferences ----------------------------------------------------------------------------


def test_reply_log_likelihood_matches_the_models_own_loss(tiny: BaseModel) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny.folder).eval()
    tokenizer = _tokenizer(tiny)
    prompt = [{"role": "system", "content": "You are Marlowe."}, {"role": "user", "content": "Hi"}]
    reply = [{"role": "assistant", "content": "Evening, friend."}]
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + reply, tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(full[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + reply_ids])
    labels = ids.clone()
    labels[0, : len(prompt_ids)] = -100
    with torch.no_grad():
        mean_nll = float(model(input_ids=ids, labels=labels).loss)
    expected = -mean_nll * len(reply_ids)
    assert reply_log_likelihood(model, tokenizer, prompt, reply) == pytest.approx(expected, 1e-4)


def test_eval_preferences_compares_base_and_adapter(
    exports: dict[str, Path], tiny: BaseModel, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    # a high rate and a few epochs: the tiny model must visibly move toward the chosen replies
    train(tiny, exports["dpo"], out, TrainOptions(method="dpo", epochs=4, learning_rate=1e-2))
    result = evaluate_preferences(out, exports["dpo"], tiny)
    pairs = len(_lines(exports["dpo"]))
    base, adapted = result["base"], result["with_adapter"]
    assert base["pairs"] == adapted["pairs"] == pairs
    assert adapted["mean_margin"] > base["mean_margin"]
    assert adapted["accuracy"] == adapted["chosen_preferred"] / pairs
    changed = result["pairs_changed"]
    assert adapted["chosen_preferred"] - base["chosen_preferred"] == (
        changed["now_preferred"] - changed["no_longer_preferred"]
    )
