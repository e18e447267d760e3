"""What exports and API pages say of each record's quality, the review filters, the dataset card.

One scene: three consenting users' turns, each approved live by an actor.

- turn A: scored live by ``lee`` (fidelity 3) and reviewed by ann (fidelity 4), bob (5) and
  cy (4, not acceptable): consensus fidelity 4, 2 of 3 acceptable;
- turn B: reviewed by ann and bob (fidelity 2, overall 3, both acceptable), ``voice`` 5 by bob;
- turn C: no review.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
import typer
import yaml
from huggingface_hub import DatasetCard
from typer.testing import CliRunner

from bot.cli_trainer import actors_app, export_command
from feedback.api import create_app
from feedback.corrections import Actor
from feedback.database import session_factory
from feedback.exports import ExportError, ExportFilter, export_to_file
from feedback.exports.filters import check_dimensions
from feedback.redact import pseudonym
from feedback.rubric import DEFAULT_DIMENSIONS, Rubric
from feedback.tokens import create_token
from feedback.trust import UNMEASURED_TRUST, load_trust
from tests.factories import ALICE_ACTOR, add_turn, stores
from tests.review_factories import Verdict, add_reviewed_turn
from tests.test_api import Api, assert_error, bearer, consent

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from feedback.store import ConversationStore

SECRET = b"quality-secret-of-16+"
LIVE = ALICE_ACTOR.id


async def build_scene(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """The three turns; their sent replies' ids by name."""
    conversations, corrections = stores(sessions)
    await consent(sessions, "discord:1", "discord:2", "discord:3")
    ids = {}
    for name, user in (("A", "discord:1"), ("B", "discord:2"), ("C", "discord:3")):
        turn = await add_turn(conversations, user_id=user, text=f"turn {name}", state="held")
        await corrections.approve(turn.candidate_id, actor=ALICE_ACTOR, key=f"a{name}")
        await conversations.mark_sent(turn.candidate_id, external_id=f"m{name}")
        ids[name] = turn.candidate_id
        if name == "A":
            rubric = Rubric.of(DEFAULT_DIMENSIONS)
            scores = rubric.check({"fidelity": 3}, unsafe=False)
            await corrections.score(
                turn.candidate_id, actor=Actor("discord:lee", "Lee"), scores=scores, key="s"
            )
            verdicts = [
                Verdict("discord:ann", {"fidelity": 4}, rating=4),
                Verdict("discord:bob", {"fidelity": 5}, rating=5),
                Verdict("discord:cy", {"fidelity": 4}, rating=2, acceptable=False),
            ]
            await add_reviewed_turn(
                sessions, conversations, verdicts, turn=turn, live_actor_id=LIVE, status="accepted"
            )
        elif name == "B":
            verdicts = [
                Verdict("discord:ann", {"fidelity": 2}, rating=3),
                Verdict("discord:bob", {"fidelity": 2, "voice": 5}, rating=3),
            ]
            await add_reviewed_turn(
                sessions, conversations, verdicts, turn=turn, live_actor_id=LIVE
            )
    return ids


async def _sft(sessions: async_sessionmaker[AsyncSession], tmp_path: Path, **filters: Any):
    out = tmp_path / "sft.jsonl"
    trust = await load_trust(sessions)
    await export_to_file(
        sessions, "trl-sft", ExportFilter(**filters), out, pseudonym_secret=SECRET, trust=trust
    )
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


async def test_records_carry_quality(db_engine: AsyncEngine, tmp_path: Path) -> None:
    sessions = session_factory(db_engine)
    await build_scene(sessions)
    trust = await load_trust(sessions)
    records = await _sft(sessions, tmp_path)
    assert [record["messages"][-2]["content"] for record in records] == [
        "turn A",
        "turn B",
        "turn C",
    ]
    a, b, c = (record["quality"] for record in records)
    assert a["scores"] == {"fidelity": 4}  # median of 3, 4, 5, 4 (live and reviews)
    assert (a["scored_by"], a["reviews"], a["review_status"]) == (4, 3, "accepted")
    assert (a["acceptable"], a["agreement"], a["rating"], a["unsafe"]) == (True, 0.6667, 4, False)
    deciders = [LIVE, "discord:lee", "discord:ann", "discord:bob", "discord:cy"]
    assert a["actors"] == [
        {"actor": pseudonym(actor, SECRET, prefix="actor"), "trust": round(trust.of(actor), 4)}
        for actor in deciders
    ]
    assert a["trust"] == round(sum(round(trust.of(x), 4) for x in deciders) / 5, 4)
    assert trust.of(LIVE) == UNMEASURED_TRUST  # live decisions alone do not measure an actor
    assert b["scores"] == {"fidelity": 2, "voice": 5}
    assert (b["reviews"], b["agreement"], b["acceptable"]) == (2, 1.0, True)
    assert c["scores"] is None and c["reviews"] == 0 and c["review_status"] is None
    assert c["agreement"] is None and c["trust"] == UNMEASURED_TRUST


@pytest.mark.parametrize(
    ("filters", "kept"),
    [
        ({"min_reviews": 2}, ["A", "B"]),
        ({"min_reviews": 3}, ["A"]),
        ({"min_agreement": 0.6}, ["A", "B"]),
        ({"min_agreement": 0.7}, ["B"]),
        ({"dimensions": ("fidelity>=4",)}, ["A"]),
        ({"dimensions": ("fidelity<3", "voice=5")}, ["B"]),
        ({"dimensions": ("fidelity>4",)}, []),
        ({"dimensions": ("overall>=4",)}, ["A"]),
        ({"min_trust": 0.0}, ["A", "B", "C"]),
        ({"min_trust": 0.99}, []),
    ],
)
async def test_review_filters(
    db_engine: AsyncEngine, tmp_path: Path, filters: dict[str, Any], kept: list[str]
) -> None:
    sessions = session_factory(db_engine)
    await build_scene(sessions)
    records = await _sft(sessions, tmp_path, **filters)
    assert [record["messages"][-2]["content"][-1] for record in records] == kept


async def test_min_trust_keeps_replies_of_trusted_deciders(
    db_engine: AsyncEngine, tmp_path: Path
) -> None:
    sessions = session_factory(db_engine)
    await build_scene(sessions)
    by_turn = {
        r["messages"][-2]["content"][-1]: r["quality"] for r in await _sft(sessions, tmp_path)
    }
    threshold = (by_turn["A"]["trust"] + by_turn["B"]["trust"]) / 2
    low, high = sorted(("A", "B"), key=lambda name: by_turn[name]["trust"])
    records = await _sft(sessions, tmp_path, min_trust=threshold)
    assert [record["messages"][-2]["content"][-1] for record in records] == [high]
    assert by_turn[low]["trust"] < threshold


def test_bad_filter_values_say_what_is_wrong() -> None:
    cases = [
        ({"min_reviews": 0}, "--min-reviews is 1 to 100, not 0"),
        ({"min_agreement": 1.5}, "--min-agreement is a number from 0 to 1, not 1.5"),
        ({"min_trust": float("nan")}, "--min-trust is a number from 0 to 1"),
        ({"dimensions": ("fidelity",)}, "is not NAME OP SCORE"),
        ({"dimensions": ("fidelity>=9",)}, "the score is a whole number 1 to 5, not '9'"),
        ({"dimensions": ("Fidelity>=4",)}, "'Fidelity' is not a dimension name"),
        ({"dimensions": ("fidelity>=4",) * 17}, "at most 16 --dimension rules"),
    ]
    for filters, message in cases:
        with pytest.raises(ExportError, match=message.replace("(", r"\(")):
            ExportFilter(**filters)
    with pytest.raises(ExportError, match="unknown dimension 'fidelty'; use one of: fidelity"):
        check_dimensions(ExportFilter(dimensions=("fidelty>=4",)), ["fidelity", "voice"])


# -- the API --------------------------------------------------------------------------------


@pytest.fixture
async def api(db_engine: AsyncEngine) -> AsyncIterator[Api]:
    sessions = session_factory(db_engine)
    app = create_app(sessions, pseudonym_secret=SECRET, dimensions=["fidelity", "voice"])
    read = bearer(await create_token(sessions, "reader", "read"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield Api(client, sessions, read, read)


async def test_api_pages_carry_quality_and_filter(api: Api) -> None:
    await build_scene(api.sessions)
    page = (await api.get("/v1/corrections", format="trl-kto")).json()
    assert [record["quality"]["reviews"] for record in page["records"]] == [3, 2, 0]
    assert page["manifest"]["filters"]["dimensions"] == []
    response = await api.client.get(
        "/v1/corrections",
        params=[("format", "trl-sft"), ("dimension", "fidelity>=2"), ("dimension", "voice>4")],
        headers=api.read,
    )
    records = response.json()["records"]
    assert [record["quality"]["scores"] for record in records] == [{"fidelity": 2, "voice": 5}]
    assert response.json()["manifest"]["filters"]["dimensions"] == ["fidelity>=2", "voice>4"]
    page = (await api.get("/v1/corrections", format="oasst", min_reviews=3)).json()
    assert len(page["records"]) == 1 and page["records"][0]["quality"]["reviews"] == 3
    reply = page["records"][0]["prompt"]["replies"][0]
    assert reply["quality"]["scores"] == {"fidelity": 4}


@pytest.mark.parametrize(
    ("params", "fragments"),
    [
        ({"min_reviews": 0}, ["min_reviews"]),
        ({"min_agreement": 2}, ["min_agreement"]),
        ({"min_trust": "high"}, ["min_trust"]),
        ({"dimension": "fidelity=>4"}, ["dimension", "whole number 1 to 5"]),
        ({"dimension": "fidelty>=4"}, ["unknown dimension 'fidelty'", "fidelity, overall"]),
    ],
)
async def test_api_refuses_bad_filters(
    api: Api, params: dict[str, Any], fragments: list[str]
) -> None:
    response = await api.get("/v1/corrections", format="trl-sft", **params)
    assert_error(response, 422, "invalid_request", *fragments)


# -- the CLI and the dataset card -----------------------------------------------------------


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GREENROOM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GREENROOM_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("GREENROOM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GREENROOM_DATABASE_URL", db_url)
    monkeypatch.setenv("GREENROOM_PRIVACY__PSEUDONYM_SECRET", SECRET.decode())


@pytest.fixture
async def scene(store: ConversationStore) -> dict[str, int]:
    return await build_scene(store._sessions)


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("export")(export_command)
    app.add_typer(actors_app, name="actors")
    return app


def test_export_writes_a_dataset_card_that_loads(
    cli_env: None, scene: dict[str, int], tmp_path: Path
) -> None:
    out = tmp_path / "export" / "sft.jsonl"
    out.parent.mkdir()
    args = ["--format", "trl-sft", "--out", str(out), "--split", "train=0.5,test=0.5"]
    filters = ["--min-reviews", "2", "--dimension", "fidelity>=2"]
    result = CliRunner().invoke(_cli(), ["export", *args, *filters])
    assert result.exit_code == 0, result.stderr
    card_path = out.parent / "README.md"
    assert f"wrote the dataset card {card_path}" in result.stdout
    said = " ".join(result.stdout.split())
    assert "1 the reply does not reach --min-reviews, --min-agreement, --min-trust" in said
    text = card_path.read_text("utf-8")
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    green = header["greenroom"]
    assert header["pretty_name"] == "Greenroom trl-sft export"
    assert header["size_categories"] == ["n<1K"]
    splits = header["configs"][0]["data_files"]
    assert {split["split"]: split["path"] for split in splits} == {
        "train": "sft.train.jsonl",
        "test": "sft.test.jsonl",
    }
    assert sum(green["records"].values()) == 2
    assert green["filters"]["min_reviews"] == 2
    assert green["filters"]["dimensions"] == ["fidelity>=2"]
    assert [d["name"] for d in green["rubric"]["dimensions"]][:2] == ["fidelity", "voice"]
    assert len(green["rubric"]["version"]) == 12
    figures = {row["name"]: row for row in green["agreement"]}
    assert figures["fidelity"]["units"] == 2 and figures["fidelity"]["ratings"] == 5
    assert set(figures) >= {"fidelity", "voice", "overall", "acceptable", "unsafe"}
    assert green["reviews"] == 5 and green["actors"] == 3
    assert "consent" in green["consent_basis"] and green["erasure_cursor"]
    assert green["turns_skipped"] == {"quality": 1}  # turn C: no review
    assert "## Agreement between reviewers" in text and "## Consent basis" in text
    assert DatasetCard.load(card_path).data.to_dict()["greenroom"] == green


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-agreement", "1.5"], "--min-agreement is a number from 0 to 1, not 1.5"),
        (["--min-reviews", "0"], "--min-reviews is 1 to 100, not 0"),
        (["--dimension", "fidelty>=4"], "unknown dimension 'fidelty'"),
        (["--dimension", "fidelity>=0"], "the score is a whole number 1 to 5, not '0'"),
    ],
)
def test_export_refuses_bad_filters(
    cli_env: None, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "x.jsonl"
    result = CliRunner().invoke(_cli(), ["export", "--format", "trl-sft", "--out", str(out), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert not out.exists() and not (tmp_path / "README.md").exists()


def test_actors_stats_prints_the_table(cli_env: None, scene: dict[str, int]) -> None:
    result = CliRunner().invoke(_cli(), ["actors", "stats"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.stderr
    ann = pseudonym("discord:ann", SECRET, prefix="actor")
    row = next(line for line in result.stdout.splitlines() if ann in line)
    assert "100% of 2" in row  # ann agreed with both consensuses
    assert "discord:ann" not in result.stdout
    cy = next(
        line
        for line in result.stdout.splitlines()
        if pseudonym("discord:cy", SECRET, prefix="actor") in line
    )
    assert "0% of 1" in cy
