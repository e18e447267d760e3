"""Engine overhead per turn with an instant fake model, on SQLite and PostgreSQL.

Everything but generation: history load, prompt build, clean-up, the user-turn and reply writes
(``respond``), and separately the delivery to a transport that does nothing, with its
``mark_sent`` write (:meth:`DecisionService.present`). Targets (issue 2), on the whole turn
(``respond`` plus delivery): p50 <= 10 ms, p99 <= 30 ms.

Correctness (exit 1): every timed turn gives a reply with the fake model's text, and the database
ends with exactly one user turn and one reply per turn (warm-up included), each timed reply
``sent`` with the id the transport gave it.

    .venv/bin/python bench/bench_engine.py [--turns 1000] [--conversations 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select

from bench.common import Verdicts, percentile, scratch_database, summary
from bot.decisions import DecisionService
from bot.engine import ConversationEngine, EngineLimits, IncomingMessage, Reply
from bot.llm import FakeChatModel
from feedback.corrections import CorrectionStore
from feedback.database import create_engine, migrate, session_factory
from feedback.models import MessageNode
from feedback.store import ConversationStore
from personas import PersonaRegistry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from bot.decisions import ConversationRef, Delivery

REPLY = "The rain never stops in this town, friend."
WARM_UP_TURNS = 20
TARGET_P50_MS = 10.0
TARGET_P99_MS = 30.0


async def run(backend: str, turns: int, conversations: int, verdicts: Verdicts) -> None:
    async with scratch_database(backend) as url:
        db = create_engine(url)
        await migrate(db)
        sessions = session_factory(db)
        engine = ConversationEngine(
            personas=PersonaRegistry.load(),
            store=ConversationStore(sessions),
            model=FakeChatModel(replies=[REPLY]),
            limits=EngineLimits(),
        )
        decisions = DecisionService(engine=engine, corrections=CorrectionStore(sessions))
        decisions.add_outlet("bench", _Silent())
        respond_s: list[float] = []
        sent_s: list[float] = []
        replies: list[Reply] = []
        for warmup in range(WARM_UP_TURNS):
            await engine.respond(_message(warmup % conversations, "warm up"))
        for turn in range(turns):
            incoming = _message(turn % conversations, f"message number {turn}, how are you?")
            started = time.perf_counter()
            reply = await engine.respond(incoming)
            responded = time.perf_counter()
            if not isinstance(reply, Reply):
                verdicts.check(False, f"{backend}: turn {turn} gave {reply!r}, not a reply")
                continue
            await decisions.present(reply, hold=False)
            respond_s.append(responded - started)
            sent_s.append(time.perf_counter() - responded)
            replies.append(reply)
        total = [a + b for a, b in zip(respond_s, sent_s, strict=True)]
        print(f"{backend:10s} respond   {summary(respond_s)}")
        print(f"{backend:10s} mark_sent {summary(sent_s)}")
        print(f"{backend:10s} both      {summary(total)}")
        p50, p99 = statistics.median(total) * 1000, percentile(total, 99) * 1000
        verdicts.target(
            f"{backend} engine overhead per turn",
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
            f"p50 <= {TARGET_P50_MS:g} ms, p99 <= {TARGET_P99_MS:g} ms",
            p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS,
        )
        await _check_stored(sessions, backend, turns, replies, verdicts)
        await db.dispose()


async def _check_stored(
    sessions: async_sessionmaker[AsyncSession],
    backend: str,
    turns: int,
    replies: list[Reply],
    verdicts: Verdicts,
) -> None:
    """One user turn and one reply stored per turn; every timed reply sent as delivered."""
    expected = WARM_UP_TURNS + turns
    async with sessions() as session:
        by_role = dict(
            (
                await session.execute(
                    select(MessageNode.role, func.count()).group_by(MessageNode.role)
                )
            ).all()
        )
        sent = dict(
            (
                await session.execute(
                    select(MessageNode.id, MessageNode.external_id).where(
                        MessageNode.state == "sent"
                    )
                )
            ).all()
        )
        texts = set(
            (
                await session.scalars(
                    select(MessageNode.content).where(MessageNode.role == "assistant").distinct()
                )
            ).all()
        )
    verdicts.check(
        by_role == {"user": expected, "assistant": expected},
        f"{backend}: stored {by_role}, expected {expected} user and {expected} assistant rows",
    )
    wrong = [r.candidate_id for r in replies if sent.get(r.candidate_id) != str(r.candidate_id)]
    verdicts.check(
        not wrong and len(sent) == len(replies) == turns,
        f"{backend}: {len(sent)} replies sent of {turns} turns; {len(wrong)} timed replies "
        f"not sent as delivered (first {wrong[:3]})",
    )
    verdicts.check(texts == {REPLY}, f"{backend}: stored reply texts {sorted(texts)[:3]}")


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
    verdicts = Verdicts()
    for backend in ("sqlite", "postgresql"):
        asyncio.run(run(backend, args.turns, args.conversations, verdicts))
    verdicts.exit()


if __name__ == "__main__":
    main()
