"""Reviews and gold from the terminal (``/review``, ``/gold``) and ``greenroom gold import``, run
as the installed console script on SQLite."""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING

from tests.test_cli import _run

if TYPE_CHECKING:
    from pathlib import Path

VERDICT = "acceptable=yes unsafe=no overall=4 fidelity=4 voice=3 resonance=4 memory=5"
SAMPLED = {"GREENROOM_MODEL__PROVIDER": "fake", "GREENROOM_REVIEWS__SHARE": "1"}


def _chat(tmp_path: Path, user: str, lines: list[str]) -> tuple[list[str], str]:
    result = _run(
        ["chat", "--persona", "Marlowe", "--user", user],
        tmp_path,
        "\n".join(lines) + "\n",
        **SAMPLED,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines(), result.stderr


def test_the_terminal_reviews_blind_and_marks_gold(tmp_path: Path) -> None:
    _chat(tmp_path, "ann", ["hello", "how are you?"])
    replies, said = _chat(
        tmp_path,
        "bob",
        [
            f"/review {VERDICT}",  # nothing pulled yet
            "/review",
            VERDICT.replace("overall=4", "overall=9").join(["/review ", ""]),
            VERDICT.replace(" memory=5", "").join(["/review ", ""]),
            f"/review {VERDICT}",
            "/review",
            f"/review {VERDICT.replace('acceptable=yes', 'acceptable=no')}",
            "/review",
            "hi",
            "/gold acceptable=no unsafe=yes -- too flat for Marlowe",
            "/gold #999999 acceptable=no unsafe=no",
            "/gold acceptable=no",
            "/review",
        ],
    )
    assert replies == ["Marlowe: You said: hi"]
    assert "Run /review first to get an item to review." in said
    assert "To review (yours until" in said and "  ann: hello\n" in said
    assert "  >> Marlowe's reply: You said: hello\n" in said
    assert "Your verdict: /review acceptable=yes|no unsafe=yes|no overall=1-5 fidelity=1-5" in said
    assert "Not recorded: overall=9: the overall score is a whole number from 1 to 5." in said
    assert "Not recorded: score every dimension; still to score: memory." in said
    assert said.count("Recorded. Run /review for the next item.") == 2
    assert "  ann: how are you?\n" in said
    assert said.count("Nothing to review right now") == 2  # Bob's own chat is not his to review
    assert "Gold verdict stored on reply #" in said
    assert "Not recorded: This reply no longer exists (the conversation was deleted)." in said
    assert "Not recorded: the unsafe flag is missing" in said
    database = sqlite3.connect(tmp_path / "data" / "greenroom.sqlite3")
    reviews = database.execute(
        "SELECT actor_id, acceptable, rating, scores FROM reviews ORDER BY id"
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in reviews] == [("terminal:bob", 1, 4), ("terminal:bob", 0, 4)]
    assert json.loads(reviews[0][3]) == {"fidelity": 4, "voice": 3, "resonance": 4, "memory": 5}
    [gold] = database.execute(
        "SELECT acceptable, unsafe, note, created_by, scores FROM gold_items"
    ).fetchall()
    assert gold[:4] == (0, 1, "too flat for Marlowe", "terminal:bob") and json.loads(gold[4]) == {}
    # Ann gets Bob's gold item like any other: served blind, her verdict scored against it.
    _, ann_said = _chat(tmp_path, "ann", ["/review"])
    assert "  bob: hi\n" in ann_said


def test_gold_import_stores_every_line_or_none(tmp_path: Path) -> None:
    _chat(tmp_path, "ann", ["hello", "how are you?"])
    database = sqlite3.connect(tmp_path / "data" / "greenroom.sqlite3")
    first, second = (
        row[0]
        for row in database.execute(
            "SELECT id FROM messages WHERE role = 'assistant' ORDER BY id"
        ).fetchall()
    )
    [turn] = database.execute("SELECT min(id) FROM messages WHERE role = 'user'").fetchone()
    good = json.dumps({"reply_id": first, "acceptable": True, "unsafe": False, "overall": 4})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join(
            [
                good,
                json.dumps({"reply_id": turn, "acceptable": True, "unsafe": False}),
                '{"reply_id": 12, ',
                json.dumps({"reply_id": second, "acceptable": True, "unsafe": False, "x": 1}),
                json.dumps({"reply_id": second, "acceptable": True, "unsafe": False}),
                json.dumps(
                    {"reply_id": second, "acceptable": 1, "unsafe": False, "scores": {"tone": 3}}
                ),
            ]
        )
        + "\n"
        + "x" * 20_000
        + "\n",
        encoding="utf-8",
    )
    refused = _run(["gold", "import", str(bad), "--by", "lena"], tmp_path)
    assert refused.returncode == 2
    problems = refused.stderr.splitlines()
    assert problems[0] == "error: nothing imported:"
    assert [line.split(":")[0] for line in problems[1:]] == [
        "line 2",
        "line 3",
        "line 4",
        "line 6",
        "line 7",
    ]
    assert f"reply_id {turn}: no reply has this id" in problems[1]
    assert "not a JSON object" in problems[2] and "x: Extra inputs" in problems[3]
    assert "line 6: acceptable: Input should be a valid boolean" in problems[4]
    assert "line 7: longer than 10,000 characters" in problems[5]
    assert database.execute("SELECT count(*) FROM gold_items").fetchone() == (0,)
    good_file = tmp_path / "good.jsonl"
    second_line = {"reply_id": second, "acceptable": False, "unsafe": True, "scores": {"voice": 2}}
    good_file.write_text(good + "\n\n" + json.dumps(second_line) + "\n", encoding="utf-8")
    imported = _run(["gold", "import", str(good_file), "--by", "lena"], tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert f"imported 2 gold verdicts from {good_file} (by terminal:lena)" in imported.stdout
    rows = database.execute(
        "SELECT g.candidate_id, g.acceptable, g.created_by, i.reason, i.gold_id = g.id "
        "FROM gold_items g JOIN review_items i ON i.candidate_id = g.candidate_id ORDER BY 1"
    ).fetchall()
    assert [row[:3] for row in rows] == [(first, 1, "terminal:lena"), (second, 0, "terminal:lena")]
    assert all(row[4] for row in rows)  # the sampled items became gold
    missing = _run(["gold", "import", str(tmp_path / "nope.jsonl")], tmp_path)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
