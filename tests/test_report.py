"""The quality report: aggregates on both databases, agreement, actors, PNGs and the page."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from PIL import Image
from sqlalchemy import update

from feedback.corrections import CorrectionStore
from feedback.models import MessageNode
from feedback.redact import pseudonym
from feedback.report import ReportData, ReportError, collect_report_data, write_report
from tests.factories import ALICE_ACTOR, BOB_ACTOR, add_turn
from tests.review_factories import Verdict, add_reviewed_turn
from tests.test_exports import build_scenario

if TYPE_CHECKING:
    from pathlib import Path

    from feedback.store import ConversationStore

SECRET = b"report-secret"

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", reliability data with
# missing values: 4 observers, 12 units. Published: nominal .743, ordinal .815, interval .849.
_OBSERVERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]
_UNITS = [[v for v in column if v is not None] for column in zip(*_OBSERVERS, strict=True)]


def test_live_rating_agreement_comes_from_the_libraries() -> None:
    """The report's figures on live ratings are the libraries' (ordinal alpha .815, Gwet's
    AC1 .7754 on the published example)."""
    live = ReportData(rating_units=[unit for unit in _UNITS if unit]).live_agreement
    assert live.alpha == pytest.approx(0.815, abs=5e-4)
    assert live.ac1 == pytest.approx(0.7754, abs=5e-5)
    assert ReportData(rating_units=[[3, 3], [4, 4], [1, 1]]).live_agreement.alpha == 1.0
    assert ReportData().live_agreement.alpha is None  # nothing pairable
    assert ReportData(rating_units=[[1, 5], [5, 1]]).live_agreement.alpha < 0


async def _flagged_scene(store: ConversationStore) -> None:
    corrections = CorrectionStore(store._sessions)
    await build_scenario(store, corrections)
    flagged = await add_turn(store, state="held", text="remember me?", reply="Never met you.")
    async with store._sessions() as session:
        await session.execute(
            update(MessageNode)
            .where(MessageNode.id == flagged.candidate_id)
            .values(
                flags=[
                    {"kind": "contradiction", "score": 0.9, "over_threshold": True},
                    {"kind": "drift", "score": 0.1, "over_threshold": False},
                ]
            )
        )
        await session.commit()
    await corrections.rewrite(flagged.candidate_id, actor=BOB_ACTOR, text="Of course.", key="f")
    await corrections.rate(flagged.candidate_id, actor=ALICE_ACTOR, rating=1, key="fa")
    await corrections.rate(flagged.candidate_id, actor=BOB_ACTOR, rating=2, key="fb")
    for index, scores in enumerate(([4, 4, 5], [2, 3, 2])):
        verdicts = [
            Verdict(f"discord:r{n}", {"fidelity": value, "voice": 3}, acceptable=value > 2)
            for n, value in enumerate(scores)
        ]
        await add_reviewed_turn(store._sessions, store, verdicts, user_id=f"discord:u{index}")


async def test_collects_the_aggregates(store: ConversationStore) -> None:
    await _flagged_scene(store)
    data = await collect_report_data(store._sessions, persona=None, pseudonym_secret=SECRET)
    assert set(data.ratings_by_day) == {"Marlowe"}
    [(total, count)] = data.ratings_by_day["Marlowe"].values()
    assert (total, count) == (5 + 4 + 2 + 4 + 1 + 1 + 2, 7)
    assert data.tags == {"in-character": 1, "funny": 1}
    # depth: turns 1..7 in one DM; reviewed: all but turn 5; rewritten: turns 1 and 7
    assert data.depth["1"] == [1, 1] and data.depth["5"] == [0, 0] and data.depth["7"] == [1, 1]
    assert data.depth["2"] == [1, 0]
    assert sorted(sorted(unit) for unit in data.rating_units) == [[1, 2], [4, 5]]
    alice = pseudonym(ALICE_ACTOR.id, SECRET, prefix="actor")
    assert data.actors[alice]["rewrite"] == 1 and "discord:9001" not in data.actors
    assert data.flag_verdicts["contradiction"] == {"rewrite": 1}
    assert "drift" not in data.flag_verdicts  # under its threshold
    assert data.flag_verdicts["none"]["rewrite"] == 1
    only = await collect_report_data(store._sessions, persona="Vesper", pseudonym_secret=SECRET)
    assert only.ratings_by_day == {} and only.rating_units == []
    assert only.actor_stats == [] and only.agreement_series[1] == []
    figures = {figure.name: figure for figure in data.review_agreement}
    assert figures["fidelity"].units == 2 and figures["voice"].ac1 == 1.0
    freq, series = data.agreement_series
    assert freq == "D" and len(series) == 1
    names = {name for name, stats in data.actor_stats if stats.reviews}
    assert names == {pseudonym(f"discord:r{n}", SECRET, prefix="actor") for n in range(3)}
    r0 = dict(data.actor_stats)[pseudonym("discord:r0", SECRET, prefix="actor")]
    assert (r0.reviews, r0.compared, r0.agreeing) == (2, 2, 2)


async def test_writes_valid_pngs_and_the_page(store: ConversationStore, tmp_path: Path) -> None:
    await _flagged_scene(store)
    out = tmp_path / "report"
    page = await write_report(store._sessions, out, pseudonym_secret=SECRET)
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [
        "actor_activity.png",
        "actor_reliability.png",
        "agreement.png",
        "agreement_over_time.png",
        "flags_vs_verdicts.png",
        "ratings_over_time.png",
        "rewrite_rate_by_depth.png",
        "tag_counts.png",
    ]
    for png in pngs:
        with Image.open(png) as image:
            image.verify()
            assert image.format == "PNG" and image.size in {(800, 450), (900, 500)}
    text = page.read_text(encoding="utf-8")
    assert all(f'src="{png.name}"' in text for png in pngs)
    assert "flagged contradiction: rewritten" in text and "discord:" not in text
    assert "<h2>Agreement per day (AC1 / alpha, items), latest 12</h2>" in text
    assert "<h2>Actors</h2>" in text and "<h2>Reviewers&#x27; agreement per dimension</h2>" in text
    assert pseudonym("discord:r1", SECRET, prefix="actor") in text
    assert not list(out.glob(".*"))  # no temporary files left


async def test_empty_database_still_renders(store: ConversationStore, tmp_path: Path) -> None:
    page = await write_report(store._sessions, tmp_path / "r", pseudonym_secret=SECRET)
    assert page.is_file() and len(list((tmp_path / "r").glob("*.png"))) == 8


async def test_unwritable_folder(store: ConversationStore, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ReportError, match="it is a file"):
        await write_report(store._sessions, tmp_path / "afile", pseudonym_secret=SECRET)
    with pytest.raises(ReportError, match="cannot write the report"):
        await write_report(store._sessions, tmp_path / "afile" / "sub", pseudonym_secret=SECRET)
