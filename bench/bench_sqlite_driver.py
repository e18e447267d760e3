"""What feedback.sqlite_driver buys on SQLite: engine turn overhead with and without it, side by
side in one run (issue #23, part 5).

Each side is a fresh SQLite database behind the same engine, decision service and instant fake
model as ``bench/bench_engine.py``; "without" is the same engine built with plain aiosqlite
(``use_single_trip_cursors`` skipped). Two loads, the sides alternating in rounds so the shared
machine's noise hits both alike:

* sequential: one turn at a time (respond + present), as ``bench_engine.py`` measures;
* concurrent: ``--concurrent`` conversations taking turns at once on the one pooled connection
  (a busy bot), each turn's latency measured.

Target: the decision rule of the issue, the patch stays only if it cuts p50 or p99 turn time by
at least ``--keep-if`` (default 1.5x). Correctness: every turn must store its user turn and reply
(counted in the database at the end); a missing or extra row exits non-zero.

    .venv/bin/python bench/bench_sqlite_driver.py [--turns 300] [--rounds 4] [--concurrent 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

import feedback.database as database
from bot.decisions import DecisionService
from bot.engine import ConversationEngine, EngineLimits, IncomingMessage, Reply
from bot.llm import FakeChatModel
from feedback.corrections import CorrectionStore
from feedback.store import ConversationStore
from personas import PersonaRegistry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from bot.decisions import ConversationRef, Delivery

SIDES = ("with", "without")


class _Silent:
    """A transport whose users receive instantly (the cost measured is Greenroom's)."""

    async def deliver(self, delivery: Delivery) -> str | None:
        return str(delivery.node_id)

    async def say(self, conversation: ConversationRef, persona: str, text: str) -> None:
        return None

    @contextlib.asynccontextmanager
    async def waiting(self, conversation: ConversationRef) -> AsyncIterator[None]:
        yield


class _Side:
    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.url = f"sqlite+aiosqlite:///{folder / name}.sqlite3"
        self.turns = 0

    async def start(self) -> None:
        original = database.use_single_trip_cursors
        if self.name == "without":
            database.use_single_trip_cursors = lambda engine: None
        try:
            self.db = database.create_engine(self.url)
        finally:
            database.use_single_trip_cursors = original
        await database.migrate(self.db)
        self.engine = ConversationEngine(
            personas=PersonaRegistry.load(),
            store=ConversationStore(database.session_factory(self.db)),
            model=FakeChatModel(replies=["The rain never stops in this town, friend."]),
            limits=EngineLimits(),
        )
        self.decisions = DecisionService(
            engine=self.engine, corrections=CorrectionStore(self.engine.store._sessions)
        )
        self.decisions.add_outlet("bench", _Silent())

    async def turn(self, conversation: int, number: int) -> float:
        incoming = IncomingMessage(
            transport="bench",
            scope=f"bench:{conversation}",
            user_id=f"bench:{conversation}",
            user_name=f"user{conversation}",
            text=f"message number {number}, how are you?",
            persona="Marlowe",
        )
        started = time.perf_counter()
        reply = await self.engine.respond(incoming)
        if not isinstance(reply, Reply):
            raise SystemExit(f"FAIL: {self.name}: turn {number} gave {reply!r}, not a reply")
        await self.decisions.present(reply, hold=False)
        self.turns += 1
        return time.perf_counter() - started

    async def stored_rows(self) -> int:
        async with self.db.connect() as connection:
            return int((await connection.execute(text("SELECT count(*) FROM messages"))).scalar())


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))] * 1000


async def _sequential(side: _Side, turns: int, conversations: int, offset: int) -> list[float]:
    return [await side.turn(n % conversations, offset + n) for n in range(turns)]


async def _concurrent(side: _Side, turns: int, conversations: int, offset: int) -> list[float]:
    async def one(conversation: int) -> list[float]:
        return [
            await side.turn(conversation, offset + n)
            for n in range(conversation, turns, conversations)
        ]

    parts = await asyncio.gather(*(one(c) for c in range(conversations)))
    return [value for part in parts for value in part]


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as folder:
        sides = {name: _Side(name, Path(folder)) for name in SIDES}
        for side in sides.values():
            await side.start()
            for warm in range(20):
                await side.turn(warm % args.conversations, -1 - warm)
        loads = {"sequential": _sequential, "concurrent": _concurrent}
        timings = {(load, name): [] for load in loads for name in SIDES}
        cpu = dict.fromkeys(timings, 0.0)
        offset = 0
        for round_ in range(args.rounds):
            order = SIDES if round_ % 2 == 0 else SIDES[::-1]
            for load, measure in loads.items():
                width = args.conversations if load == "sequential" else args.concurrent
                for name in order:
                    started = time.process_time()
                    timings[load, name] += await measure(sides[name], args.turns, width, offset)
                    cpu[load, name] += time.process_time() - started
                offset += args.turns
        print(
            f"SQLite engine turn (respond + present), {args.rounds} rounds x {args.turns} turns "
            f"a side and load, sides alternating"
        )
        keep = False
        for load in loads:
            for name in SIDES:
                values = timings[load, name]
                print(
                    f"  {load:10s} {name:7s} p50 {_p(values, 50):6.2f} ms, "
                    f"p99 {_p(values, 99):6.2f} ms, mean {statistics.fmean(values) * 1000:6.2f} ms"
                    f"; CPU {cpu[load, name] / len(values) * 1000:5.2f} ms a turn (n={len(values)})"
                )
            with_, without = timings[load, "with"], timings[load, "without"]
            p50 = _p(without, 50) / _p(with_, 50)
            p99 = _p(without, 99) / _p(with_, 99)
            cpu_ratio = cpu[load, "without"] / cpu[load, "with"]
            gain = max(p50, p99) >= args.keep_if
            keep |= gain
            print(
                f"  {load:10s} without/with: p50 {p50:.2f}x, p99 {p99:.2f}x, CPU {cpu_ratio:.2f}x "
                f"[target to keep the patch >= {args.keep_if}x: {'PASS' if gain else 'MISS'}]"
            )
        print(f"verdict: {'keep and pin the patch' if keep else 'remove the patch'}")
        failed = 0
        for side in sides.values():
            rows = await side.stored_rows()
            if rows != 2 * side.turns:
                print(f"FAIL: {side.name}: {rows} turns stored for {side.turns} exchanges")
                failed += 1
            await side.db.dispose()
        return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--keep-if", type=float, default=1.5)
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
