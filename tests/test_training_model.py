"""The loop on the real bundled SmolLM2-135M-Instruct, as a trainer runs it from the shell:
``greenroom train`` (the GGUF rebuilt as a plain model, TRL's DPO trainer, 2 steps),
``greenroom eval preferences`` and ``greenroom chat --model-adapter``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.train_world import bundled_gguf, export_scenario

if TYPE_CHECKING:
    from feedback.store import ConversationStore

GREENROOM = str(Path(sys.executable).with_name("greenroom"))


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'greenroom.sqlite3'}"


def _run(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    environment.update(
        {
            "GREENROOM_MEMORY__ENABLED": "false",
            "GREENROOM_MODEL__MAX_TOKENS": "24",
            "GREENROOM_CONFIG": str(cwd / "absent.toml"),
            "HF_HUB_OFFLINE": "1",
        }
    )
    return subprocess.run(
        [GREENROOM, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
        check=False,
    )


@pytest.mark.model
async def test_train_evaluate_and_serve_on_smollm2(
    store: ConversationStore, tmp_path: Path
) -> None:
    bundled_gguf()  # skips when the bundled model is not installed
    (dpo,) = await export_scenario(store, tmp_path, "trl-dpo")
    pairs = len(dpo.read_text().splitlines())
    out = tmp_path / "adapter"

    trained = _run(
        ["train", "--method", "dpo", "--data", str(dpo), "--out", str(out), "--max-steps", "2"],
        tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert f"wrote {out}" in trained.stdout
    assert "'loss'" not in trained.stdout and "'loss'" in trained.stderr  # logs on stderr
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["base"]["kind"] == "bundled" and summary["steps"] == 2
    assert summary["data"]["records_used"] == pairs
    assert Path(summary["base"]["folder"]).parent == tmp_path / "data" / "models"

    evaluated = _run(
        ["eval", "preferences", "--data", str(dpo), "--adapter", str(out), "--json"], tmp_path
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = json.loads(evaluated.stdout)
    assert result["base"]["pairs"] == result["with_adapter"]["pairs"] == pairs

    chatted = _run(["chat", "--persona", "Marlowe", "--model-adapter", str(out)], tmp_path, "Hi\n")
    assert chatted.returncode == 0, chatted.stderr[-2000:]
    (line,) = chatted.stdout.splitlines()
    assert line.startswith("Marlowe: ") and len(line) > len("Marlowe: ")
    assert (out / "merged-q8_0.gguf").is_file()
