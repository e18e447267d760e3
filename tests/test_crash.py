"""SIGKILL at points of a turn and of an actor action: nothing lost, nothing sent twice.

The quick version of ``bench/bench_crash.py`` (which runs 50 and more trials): the real bot as its
own process against the loopback Discord server, killed at the riskiest points and restarted.
"""

from __future__ import annotations

import pytest

from bench.bench_crash import Trial, crash_harness, summarise

TRIALS = {
    "sqlite": [
        Trial(0, "turn", "turn.after_send"),
        Trial(1, "regen", "action.after_ack", "regen"),
        Trial(2, "held", "action.after_commit", "approve"),
        Trial(3, "edit", "deliver.after_send", "rewrite"),
    ],
    "postgresql": [
        Trial(0, "turn", "turn.after_commit"),
        Trial(1, "held", "deliver.after_send", "timeout"),
        Trial(2, "held", "action.after_ack", "rewrite"),
        Trial(3, "edit", "action.after_commit", "rewrite"),
    ],
}


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_crashes_lose_nothing_and_send_nothing_twice(backend: str) -> None:
    async with crash_harness(backend) as harness:
        results = [await harness.run(trial) for trial in TRIALS[backend]]
        duplicates = harness.duplicate_posts()
        log = harness.log_path.read_text(errors="replace")
    assert all(result.crashed for result in results), summarise(results)
    assert all(result.ok for result in results), summarise(results)
    assert duplicates == 0
    assert "Traceback" not in log, log[-3000:]
    # Acknowledged actions were recorded; at least one trial exercised each side.
    assert any(result.acknowledged for result in results)
