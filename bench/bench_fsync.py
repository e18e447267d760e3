"""Watch the disk's ``fdatasync`` latency, e.g. beside ``bench_discord_load.py`` in another shell.

Every turn commits twice before its reply, and each commit waits for PostgreSQL's WAL flush: a
slow sync on the database's disk stalls every turn in flight at once. This writes 8 KB and syncs
it every ``--every-ms``, prints each sync slower than ``--report-ms`` as it happens (seconds since
start), and the percentiles at the end. Measured on these machines (2026-11-26, under
``/var/lib/postgresql``): p50 0.23 ms, p99 2.7 ms, max 215 ms.

    .venv/bin/python bench/bench_fsync.py [--seconds 120] [--folder /var/lib/postgresql]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile


def watch(folder: Path, seconds: float, every_s: float, report_s: float) -> list[float]:
    """Sync durations in seconds; slow ones are printed as they happen."""
    path = folder / f".bench-fsync-{os.getpid()}"
    block = os.urandom(8192)
    durations: list[float] = []
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
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
    durations = watch(args.folder, args.seconds, args.every_ms / 1000, args.report_ms / 1000)
    ms = [d * 1000 for d in durations]
    print(
        f"{len(ms)} syncs: p50 {percentile(ms, 50):.2f} ms, p99 {percentile(ms, 99):.2f} ms, "
        f"p99.9 {percentile(ms, 99.9):.1f} ms, max {max(ms):.1f} ms"
    )


if __name__ == "__main__":
    main()
