"""``greenroom export`` as the lead registers it: options, dry run, bad input (exit 2, no file)."""

from __future__ import annotations

import json
import os
import stat
from typing import TYPE_CHECKING

import pytest
import typer
from typer.testing import CliRunner

from bot.cli_trainer import export_command, report_command
from bot.runtime import pseudonym_secret
from bot.settings import ConfigError, load_settings
from feedback.corrections import CorrectionStore
from tests.test_exports import build_scenario

if TYPE_CHECKING:
    from pathlib import Path

    from feedback.store import ConversationStore


PSEUDONYM_SECRET_ENV = "GREENROOM_PRIVACY__PSEUDONYM_SECRET"


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("export")(export_command)
    app.command("report")(report_command)
    return app


@pytest.fixture
def env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith("GREENROOM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GREENROOM_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("GREENROOM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GREENROOM_DATABASE_URL", db_url)
    monkeypatch.setenv(PSEUDONYM_SECRET_ENV, "cli-secret-of-16-chars")
    return {}


@pytest.fixture
async def filled(store: ConversationStore) -> None:
    await build_scenario(store, CorrectionStore(store._sessions))


def _invoke(app: typer.Typer, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_export_writes_the_file_and_says_so(
    app: typer.Typer, env: dict[str, str], filled: None, tmp_path: Path
) -> None:
    out = tmp_path / "sft.jsonl"
    code, stdout, _ = _invoke(app, "export", "--format", "openai-sft", "--out", str(out))
    assert code == 0 and f"wrote 4 openai-sft records to {out}" in stdout
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and all("messages" in json.loads(line) for line in lines)


def test_export_with_split_filters_and_tags(
    app: typer.Typer, env: dict[str, str], filled: None, tmp_path: Path
) -> None:
    out = tmp_path / "dpo.jsonl"
    code, stdout, _ = _invoke(
        app,
        "export",
        "--format",
        "trl-dpo",
        "--out",
        str(out),
        "--split",
        "train=0.5,test=0.5",
        "--seed",
        "3",
        "--since",
        "2000-01-01",
        "--persona",
        "Marlowe",
    )
    assert code == 0, stdout
    assert {p.name for p in tmp_path.iterdir()} >= {"dpo.train.jsonl", "dpo.test.jsonl"}
    code, stdout, _ = _invoke(
        app,
        "export",
        "--format",
        "trl-kto",
        "--out",
        str(out),
        "--tags",
        "funny,in-character",
    )
    assert code == 0 and "wrote 1 trl-kto records" in stdout


def test_dry_run_prints_counts_per_format_and_persona(
    app: typer.Typer, env: dict[str, str], filled: None, tmp_path: Path
) -> None:
    code, stdout, _ = _invoke(app, "export", "--dry-run")
    assert code == 0
    rows = [line.split("│")[1:4] for line in stdout.splitlines() if "Marlowe" in line]
    counts = {cells[0].strip(): int(cells[2].strip()) for cells in rows}
    assert counts == {
        "openai-sft": 4,
        "openai-dpo": 3,
        "trl-sft": 4,
        "trl-dpo": 3,
        "trl-kto": 8,
        "oasst": 5,
    }
    assert list(tmp_path.glob("*.jsonl")) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "csv"], "unknown format 'csv'; use one of: openai-sft"),
        (["--since", "2025-02-01", "--until", "2025-01-01"], "the time range is empty"),
        (["--since", "yesterday"], "--since 'yesterday' is not an ISO 8601 date"),
        (["--split", "train=0.9,test=0.2"], "--split fractions add up to 1.1, not 1"),
        (["--split", "train:0.9"], "bad --split part 'train:0.9'"),
        (["--split", "train=0.9,test=x"], "--split fraction 'x' is not a number"),
        (["--min-rating", "9"], "--min-rating is 1 to 5, not 9"),
        (["--tags", "shiny"], "unknown tag 'shiny'"),
        (["--out", "{missing}/x.jsonl"], "the folder"),
        (["--out", "{file}/x.jsonl"], "the folder"),
        (["--out", "{folder}"], "it is a folder"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_file(
    app: typer.Typer,
    env: dict[str, str],
    filled: None,
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "afile").write_text("x")
    (work / "afolder").mkdir()
    names = {
        "missing": str(work / "nope"),
        "file": str(work / "afile"),
        "folder": str(work / "afolder"),
    }
    args = [arg.format(**names) for arg in args]
    defaults = {"--format": "trl-sft", "--out": str(work / "out.jsonl")}
    for option, value in defaults.items():
        if option not in args:
            args = [option, value, *args]
    code, _, stderr = _invoke(app, "export", *args)
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in work.iterdir()) == ["afile", "afolder"]


def test_missing_format_or_out(app: typer.Typer, env: dict[str, str], tmp_path: Path) -> None:
    code, _, stderr = _invoke(app, "export", "--out", str(tmp_path / "x.jsonl"))
    assert code == 2 and "--format is required" in stderr
    code, _, stderr = _invoke(app, "export", "--format", "oasst")
    assert code == 2 and "--out is required" in stderr


def test_pseudonym_secret_file_is_created_once_with_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PSEUDONYM_SECRET_ENV, raising=False)
    monkeypatch.setenv("GREENROOM_CONFIG", str(tmp_path / "absent.toml"))
    settings = load_settings(data_dir=tmp_path / "data")
    first = pseudonym_secret(settings)
    path = tmp_path / "data" / "pseudonym.key"
    assert len(first) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pseudonym_secret(settings) == first
    monkeypatch.setenv(PSEUDONYM_SECRET_ENV, "from-the-environment")
    assert pseudonym_secret(load_settings()) == b"from-the-environment"
    monkeypatch.setenv(PSEUDONYM_SECRET_ENV, "short")
    with pytest.raises(ConfigError, match="at least 16"):
        pseudonym_secret(load_settings())


def test_report_command_writes_the_page(
    app: typer.Typer, env: dict[str, str], filled: None, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    code, stdout, _ = _invoke(app, "report", "--out", str(out), "--persona", "Marlowe")
    assert code == 0 and "index.html" in stdout and (out / "index.html").is_file()
    (tmp_path / "afile").write_text("x")
    code, _, stderr = _invoke(app, "report", "--out", str(tmp_path / "afile"))
    assert code == 2 and "it is a file" in stderr
