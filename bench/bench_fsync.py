"""Watch the disk's ``fdatasync`` latency, e.g. beside ``bench_discord_load.py`` in another shell.

Every turn commits twice before its reply, and each commit waits for PostgreSQL's WAL flush: a
slow sync on the database's disk stalls every turn in flight at once. This writes 8 KB and syncs
it every ``--every-ms``, prints each sync slower than ``--report-ms`` as it happens (seconds since
start), and the percentiles at the end. Target: no sync slower than ``--report-ms`` (50 ms by
default, the Discord load's p99 budget), that is a quiet disk while it watched. Correctness
(exit 1): syncs ran, and the block reads back as written. Figures: ``bench/RESULTS.md``.

    .venv/bin/python bench/bench_fsync.py [--seconds 120] [--folder /var/lib/postgresql]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Verdicts, percentile


def watch(
    folder: Path, seconds: float, every_s: float, report_s: float, verdicts: Verdicts
) -> list[float]:
    """Sync durations in seconds; slow ones are printed as they happen."""
    path = folder / f".bench-fsync-{os.getpid()}"
    block = os.urandom(8192)
    durations: list[float] = []
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            os.pwrite(descriptor, block, 0)
            before = time.perf_counter()
            os.fdatasync(descriptor)
            took = time.perf_counter() - before
            durations.append(took)
            if took > report_s:
                print(f"{before - started:8.2f} s: fdatasync took {took * 1000:.0f} ms", flush=True)
            time.sleep(every_s)
        if durations:
            verdicts.check(
                os.pread(descriptor, len(block), 0) == block,
                f"{path}: the block read back differs from the one written",
            )
    finally:
        os.close(descriptor)
        path.unlink(missing_ok=True)
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--folder", type=Path, default=Path("/var/lib/postgresql"))
    parser.add_argument("--every-ms", type=float, default=5.0)
    parser.add_argument("--report-ms", type=float, default=50.0)
    args = parser.parse_args()
    verdicts = Verdicts()
    durations = watch(
        args.folder, args.seconds, args.every_ms / 1000, args.report_ms / 1000, verdicts
    )
    if verdicts.check(bool(durations), f"no sync ran in {args.seconds:g} s"):
        ms = [d * 1000 for d in durations]
        slow = sum(value > args.report_ms for value in ms)
        verdicts.target(
            "fdatasync",
            f"{len(ms)} syncs: p50 {percentile(ms, 50):.2f} ms, p99 {percentile(ms, 99):.2f} ms, "
            f"p99.9 {percentile(ms, 99.9):.1f} ms, max {max(ms):.1f} ms; {slow} slower than "
            f"{args.report_ms:g} ms",
            f"none slower than {args.report_ms:g} ms",
            slow == 0,
        )
    verdicts.exit()


if __name__ == "__main__":
    main()
