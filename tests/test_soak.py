"""The soak benchmark in small (``bench/bench_soak.py``): the real bot process under users and
actors for about 20 seconds, then an exact reconciliation of the server's record and the database.

Run just these with ``pytest -k soak``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from bench.bench_soak import MESSAGES, SoakConfig, format_report, run_soak
from bench.common import scratch_database

if TYPE_CHECKING:
    from pathlib import Path

    from tests.discord_server.server import DiscordTestServer

#: 20 users in 4 rooms (2 in review), 3 actors, about 5 messages/s for 20 s.
QUICK = SoakConfig(
    minutes=0.35,
    users=20,
    actors=3,
    rooms=4,
    review_every=2,
    think_s=4.0,
    hold_seconds=3.0,
    warmup_s=5.0,
    sample_s=2.0,
)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_soak_quick_reconciles_exactly(backend: str, tmp_path: Path) -> None:
    async with scratch_database(backend) as url:
        result = await run_soak(QUICK, url, tmp_path / "bot.log", backend)
    report = format_report(result)
    assert result.passed, report
    assert not result.problems, report
    counts = dict(result.counts)
    assert counts["user messages sent"] > 0, report
    assert counts["bot POSTs in user rooms (2xx)"] > 0, report


async def test_soak_reconciliation_catches_a_lost_reply(tmp_path: Path) -> None:
    """A reply the server refuses (403) is a lost reply and an ERROR line: the run fails."""

    def refuse_one_post(server: DiscordTestServer) -> None:
        server.inject_fault("POST", MESSAGES, status=403, times=1)

    config = SoakConfig(
        minutes=0.15, users=6, actors=2, rooms=2, review_every=100, think_s=2.0, warmup_s=2.0
    )
    async with scratch_database("sqlite") as url:
        result = await run_soak(
            config, url, tmp_path / "bot.log", "sqlite", prepare=refuse_one_post
        )
    report = format_report(result)
    assert not result.passed, report
    failed = {check.name for check in result.checks if not check.ok}
    assert "no ERROR/CRITICAL line and no traceback in the bot's log" in failed, report
    assert result.problems, report
