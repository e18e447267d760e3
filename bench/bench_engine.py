"""Engine overhead per turn with an instant fake model, on SQLite and PostgreSQL.

Everything but generation: history load, prompt build, clean-up, the user-turn and reply writes
(``respond``), and separately the delivery to a transport that does nothing, with its
``mark_sent`` write (:meth:`DecisionService.present`). Targets: p50 <= 10 ms, p99 <= 30 ms.

    .venv/bin/python bench/bench_engine.py [--turns 1000] [--conversations 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import scratch_database, summary
from bot.decisions import DecisionService
from bot.engine import ConversationEngine, EngineLimits, IncomingMessage, Reply
from bot.llm import FakeChatModel
from feedback.corrections import CorrectionStore
from feedback.database import create_engine, migrate, session_factory
from feedback.store import ConversationStore
from personas import PersonaRegistry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from bot.decisions import ConversationRef, Delivery


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
        decisions = DecisionService(
            engine=engine, corrections=CorrectionStore(engine.store._sessions)
        )
        decisions.add_outlet("bench", _Silent())
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
            await decisions.present(reply, hold=False)
            respond_s.append(responded - started)
            sent_s.append(time.perf_counter() - responded)
        total = [a + b for a, b in zip(respond_s, sent_s, strict=True)]
        print(f"{backend:10s} respond   {summary(respond_s)}")
        print(f"{backend:10s} mark_sent {summary(sent_s)}")
        print(f"{backend:10s} both      {summary(total)}")
        await db.dispose()


class _Silent:
    """A transport whose users receive instantly (the cost measured is Greenroom's)."""

    async def deliver(self, delivery: Delivery) -> str | None:
        return str(delivery.node_id)

    async def say(self, conversation: ConversationRef, persona: str, text: str) -> None:
        return None

    @contextlib.asynccontextmanager
    async def waiting(self, conversation: ConversationRef) -> AsyncIterator[None]:
        yield


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
