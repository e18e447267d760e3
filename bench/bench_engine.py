"""Engine overhead per turn with an instant fake model, on SQLite and PostgreSQL.

Everything but generation: history load, prompt build, clean-up, the user-turn and reply writes
(``respond``), and separately the ``mark_sent`` write. Targets: p50 <= 10 ms, p99 <= 30 ms.

    .venv/bin/python bench/bench_engine.py [--turns 1000] [--conversations 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import scratch_database, summary
from bot.engine import ConversationEngine, EngineLimits, IncomingMessage, Reply
from bot.llm import FakeChatModel
from feedback.database import create_engine, migrate, session_factory
from feedback.store import ConversationStore
from personas import PersonaRegistry


async def run(backend: str, turns: int, conversations: int) -> None:
    async with scratch_database(backend) as url:
        db = create_engine(url)
        await migrate(db)
        engine = ConversationEngine(
            personas=PersonaRegistry.load(),
            store=ConversationStore(session_factory(db)),
            model=FakeChatModel(replies=["The rain never stops in this town, friend."]),
            limits=EngineLimits(),
        )
        respond_s: list[float] = []
        sent_s: list[float] = []
        for warmup in range(20):
            await engine.respond(_message(warmup % conversations, "warm up"))
        for turn in range(turns):
            incoming = _message(turn % conversations, f"message number {turn}, how are you?")
            started = time.perf_counter()
            reply = await engine.respond(incoming)
            responded = time.perf_counter()
            assert isinstance(reply, Reply)
            await engine.mark_sent(reply, external_id=str(turn))
            respond_s.append(responded - started)
            sent_s.append(time.perf_counter() - responded)
        total = [a + b for a, b in zip(respond_s, sent_s, strict=True)]
        print(f"{backend:10s} respond   {summary(respond_s)}")
        print(f"{backend:10s} mark_sent {summary(sent_s)}")
        print(f"{backend:10s} both      {summary(total)}")
        await db.dispose()


def _message(conversation: int, text: str) -> IncomingMessage:
    return IncomingMessage(
        transport="bench",
        scope=f"bench:{conversation}",
        user_id=f"bench:{conversation}",
        user_name=f"user{conversation}",
        text=text,
        persona="Marlowe",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=20)
    args = parser.parse_args()
    for backend in ("sqlite", "postgresql"):
        asyncio.run(run(backend, args.turns, args.conversations))


if __name__ == "__main__":
    main()
