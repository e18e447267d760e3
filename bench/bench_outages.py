"""Dependency outages under steady load: PostgreSQL stopped, the model endpoint failing, the
Chroma server killed, each for ``--outage`` seconds (20 by default).

The real bot (in this process, on the real discord.py client) talks to the loopback Discord
server; ``--users`` simulated users each mention it in a channel of their own every
``--interval`` seconds, before, during and after the outage. Every scenario has its own
PostgreSQL cluster (``initdb`` in a temp folder, stopped with ``pg_ctl stop -m fast``), an
OpenAI-compatible endpoint on loopback (``error``: HTTP 500; ``hang``: no answer until the
1 s deadline) and, for the Chroma scenario, a ``chroma run`` server killed with SIGKILL and
started again on the same data.

Per scenario it reports messages sent, answered, lost (no reply by the end), duplicated (more
than one reply), degraded replies (fallback lines, replies without memory), and the recovery
time: from the dependency coming back to the first normal reply after it (for PostgreSQL also
until every held message was answered). ``/healthz`` is polled every 0.25 s to show when the
bot said it was degraded and when healthy again.

Issue 7 sets no timing target; its targets are correctness (exit 1, a FAIL line per failure):
per scenario, no message lost and none answered twice, the outage seen (degraded replies for the
model and Chroma, held messages for PostgreSQL), a normal reply after the dependency returns
(recovered by itself), and ``/healthz`` 503 during the outage then 200 after it.

    .venv/bin/python bench/bench_outages.py [--outage 20] [--users 6] [--interval 2]
        [--scenarios postgres,model-error,model-hang,chroma]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.common import Verdicts
from bot.llm import FakeChatModel, build_chat_model
from bot.settings import ModelSettings
from feedback.database import create_engine, migrate
from feedback.models import MessageNode
from memory import HashingEmbedder, MemoryService
from tests.bot_world import running_bot
from tests.discord_server import DiscordTestServer
from tests.discord_server.fixtures import point_discord_py_at
from tests.outage_services import (
    ChromaServer,
    FakeOpenAIEndpoint,
    PgCluster,
    free_port,
    pg_tools_missing,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from langchain_core.language_models import BaseChatModel

    from tests.bot_world import World
    from tests.discord_server.models import Channel, User

__all__ = ["main"]

_log = logging.getLogger(__name__)

MESSAGES = "/channels/{channel_id}/messages"
SCENARIOS = ("postgres", "model-error", "model-hang", "chroma")


@dataclass
class Outcome:
    """What one scenario measured (times in seconds, from the load's start)."""

    scenario: str
    sent: int = 0
    answered: int = 0
    lost: int = 0
    duplicated: int = 0
    degraded: int = 0
    down_at: float = 0.0
    back_at: float = 0.0
    first_normal_after_back: float | None = None
    backlog_cleared_after_back: float | None = None
    #: Slowest first reply to a message sent during the outage (held, fallback or no memory).
    max_latency_during: float | None = None
    health_503_after_down: float | None = None
    health_200_after_back: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Sent:
    """One user message: its id, when it was sent, and the replies that referenced it."""

    message_id: str
    at: float
    replies: list[tuple[float, str]] = field(default_factory=list)


class Load:
    """Users mentioning the bot at a steady pace, each in a channel of their own."""

    def __init__(self, world: World, users: int, interval_s: float) -> None:
        self.world = world
        self.interval_s = interval_s
        #: The server stamps requests with ``perf_counter_ns``: the same clock here.
        self.started = time.perf_counter()
        self.sent: dict[str, Sent] = {}
        server = world.server
        self.pairs: list[tuple[User, Channel]] = []
        for index in range(users):
            user = server.add_user(f"user{index}")
            server.add_member(world.guild, user)
            self.pairs.append((user, server.add_channel(world.guild, f"room-{index}")))
        self._seen_requests = 0
        self._stop = asyncio.Event()

    def now(self) -> float:
        return time.perf_counter() - self.started

    async def run(self) -> None:
        """Send until :meth:`stop`; users are spread evenly over the interval."""
        server = self.world.server
        mention = f"<@{server.bot_user.id}>"

        async def user_loop(index: int, user: User, channel: Channel) -> None:
            await asyncio.sleep(self.interval_s * index / len(self.pairs))
            count = 0
            while not self._stop.is_set():
                message = server.send_user_message(
                    channel, user, f"{mention} message {count} from {user.username} about Biscuit"
                )
                self.sent[str(message["id"])] = Sent(str(message["id"]), self.now())
                count += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval_s)

        await asyncio.gather(*(user_loop(i, u, c) for i, (u, c) in enumerate(self.pairs)))

    def stop(self) -> None:
        self._stop.set()

    def collect(self) -> None:
        """Attach the bot's reply POSTs (recorded by the server) to the messages they answer."""
        requests = self.world.server.requests_to("POST", MESSAGES)
        for request in requests[self._seen_requests :]:
            if request.status != 200 or not isinstance(request.json, dict):
                continue
            reference = (request.json.get("message_reference") or {}).get("message_id")
            sent = self.sent.get(str(reference))
            if sent is None:
                continue
            at = request.received_ns / 1e9 - self.started
            sent.replies.append((at, str(request.json.get("content", ""))))
        self._seen_requests = len(requests)


async def _healthz(url: str) -> int | None:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(url) as response,
        ):
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def _poll_health(url: str, load: Load, seen: list[tuple[float, int | None]]) -> None:
    while True:
        seen.append((load.now(), await _healthz(url)))
        await asyncio.sleep(0.25)


async def _flags_by_user_message(world: World) -> dict[str, list[dict[str, Any]]]:
    """The flags of the candidate stored for each user message (by its Discord id)."""
    from sqlalchemy import select
    from sqlalchemy.orm import aliased

    parent = aliased(MessageNode)
    async with world.bot.sessions() as session:
        rows = (
            await session.execute(
                select(parent.external_id, MessageNode.flags, MessageNode.origin)
                .join(parent, MessageNode.parent_id == parent.id)
                .where(MessageNode.role == "assistant", parent.role == "user")
            )
        ).all()
    found: dict[str, list[dict[str, Any]]] = {}
    for external_id, flags, origin in rows:
        found[str(external_id)] = [*(flags or []), {"kind": "origin", "origin": origin}]
    return found


async def _scenario(
    name: str,
    *,
    outage_s: float,
    users: int,
    interval_s: float,
    warmup_s: float,
    after_s: float,
    drain_s: float,
    work: Path,
) -> Outcome:
    outcome = Outcome(name)
    server = DiscordTestServer(heartbeat_interval_ms=5000, rate_limit=(100_000, 1.0))
    await server.start()
    cluster = PgCluster()  # its own temp folder, which the postgres OS user can enter
    await asyncio.to_thread(cluster.init)
    endpoint = FakeOpenAIEndpoint()
    chroma: ChromaServer | None = None
    memory: MemoryService | None = None
    model: BaseChatModel = FakeChatModel()
    db = create_engine(cluster.url)
    health_port = free_port()
    try:
        await migrate(db)
        await endpoint.start()
        if name.startswith("model"):
            # The provider's and the engine's deadline: 1 s (running_bot reads the environment).
            os.environ["GREENROOM_MODEL__TIMEOUT_S"] = "1"
            os.environ["GREENROOM_BENCH_OPENAI_KEY"] = "sk-bench"
            model = build_chat_model(
                ModelSettings(
                    provider="openai",
                    name="bench",
                    base_url=endpoint.base_url,
                    api_key_env="GREENROOM_BENCH_OPENAI_KEY",
                    timeout_s=1.0,
                )
            )
        if name == "chroma":
            chroma = ChromaServer(work / "chroma")
            await asyncio.to_thread(chroma.start)
            memory = MemoryService.open(
                host=chroma.host, port=chroma.port, embedder=HashingEmbedder(), timeout_s=2.0
            )
        folder = work / f"bot-{name}"
        folder.mkdir()
        with point_discord_py_at(server):
            async with running_bot(
                server,
                db,
                folder,
                model=model,
                memory=memory,
                discord={"db_retry_s": 120},
                health={"port": health_port},
            ) as world:
                await _drive(
                    name,
                    world,
                    outcome,
                    cluster=cluster,
                    endpoint=endpoint,
                    chroma=chroma,
                    outage_s=outage_s,
                    users=users,
                    interval_s=interval_s,
                    warmup_s=warmup_s,
                    after_s=after_s,
                    drain_s=drain_s,
                    health_url=f"http://127.0.0.1:{health_port}/healthz",
                )
    finally:
        os.environ.pop("GREENROOM_MODEL__TIMEOUT_S", None)
        if memory is not None:
            memory.close()
        if chroma is not None:
            await asyncio.to_thread(chroma.kill)
        await endpoint.stop()
        await db.dispose()
        await asyncio.to_thread(cluster.destroy)
        await server.stop()
    return outcome


async def _drive(
    name: str,
    world: World,
    outcome: Outcome,
    *,
    cluster: PgCluster,
    endpoint: FakeOpenAIEndpoint,
    chroma: ChromaServer | None,
    outage_s: float,
    users: int,
    interval_s: float,
    warmup_s: float,
    after_s: float,
    drain_s: float,
    health_url: str,
) -> None:
    load = Load(world, users, interval_s)
    health: list[tuple[float, int | None]] = []
    sending = asyncio.create_task(load.run())
    polling = asyncio.create_task(_poll_health(health_url, load, health))
    stop_dependency: Callable[[], Awaitable[None]]
    start_dependency: Callable[[], Awaitable[None]]
    if name == "postgres":

        async def stop_dependency() -> None:
            await asyncio.to_thread(cluster.stop, "fast")

        async def start_dependency() -> None:
            await asyncio.to_thread(cluster.start)

    elif name.startswith("model"):
        mode = "error" if name == "model-error" else "hang"

        async def stop_dependency() -> None:
            await endpoint.set_mode(mode)

        async def start_dependency() -> None:
            await endpoint.set_mode("ok")

    else:
        assert chroma is not None

        async def stop_dependency() -> None:
            await asyncio.to_thread(chroma.kill)

        async def start_dependency() -> None:
            await asyncio.to_thread(chroma.start)

    try:
        await asyncio.sleep(warmup_s)
        outcome.down_at = load.now()
        await stop_dependency()
        await asyncio.sleep(outage_s)
        await start_dependency()
        outcome.back_at = load.now()
        await asyncio.sleep(after_s)
    finally:
        load.stop()
        await sending
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline:
        load.collect()
        if all(sent.replies for sent in load.sent.values()):
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(1.0)  # a duplicate would arrive just after the first reply
    load.collect()
    polling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await polling
    flags = await _flags_by_user_message(world)
    _summarise(name, load, outcome, flags, health)


def _is_degraded(name: str, flags: list[dict[str, Any]]) -> bool:
    if name.startswith("model"):
        return any(f.get("kind") == "generation_failed" for f in flags)
    if name == "chroma":
        return any(f.get("kind") == "memory_unavailable" for f in flags)
    return False


def _summarise(
    name: str,
    load: Load,
    outcome: Outcome,
    flags: dict[str, list[dict[str, Any]]],
    health: list[tuple[float, int | None]],
) -> None:
    outcome.sent = len(load.sent)
    outcome.answered = sum(1 for s in load.sent.values() if s.replies)
    outcome.lost = outcome.sent - outcome.answered
    outcome.duplicated = sum(1 for s in load.sent.values() if len(s.replies) > 1)
    outcome.degraded = sum(
        1
        for s in load.sent.values()
        if s.replies and _is_degraded(name, flags.get(s.message_id, []))
    )
    back = outcome.back_at
    normal_after = sorted(
        reply_at
        for s in load.sent.values()
        for reply_at, _content in s.replies[:1]
        if reply_at >= back and not _is_degraded(name, flags.get(s.message_id, []))
    )
    if normal_after:
        outcome.first_normal_after_back = normal_after[0] - back
    held = [s for s in load.sent.values() if outcome.down_at <= s.at < back]
    if held and all(s.replies for s in held):
        cleared = max(s.replies[0][0] for s in held) - back
        # Only a held backlog is answered after the dependency returns (PostgreSQL).
        outcome.backlog_cleared_after_back = cleared if cleared >= 0 else None
        outcome.max_latency_during = max(s.replies[0][0] - s.at for s in held)
    down_503 = [t for t, status in health if t >= outcome.down_at and status == 503]
    if down_503:
        outcome.health_503_after_down = down_503[0] - outcome.down_at
    up_200 = [t for t, status in health if t >= back and status == 200]
    if up_200:
        outcome.health_200_after_back = up_200[0] - back
    if name == "postgres":
        outcome.notes.append(f"{outcome.sent - len(held)} sent outside the outage")
        outcome.notes.append(f"{len(held)} sent during it")
    if name == "chroma" and not any(flags.values()):
        outcome.notes.append("no flags stored")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(outcomes: list[Outcome], outage_s: float) -> str:
    header = (
        "| scenario | sent | answered | lost | duplicated | degraded replies | slowest reply to "
        "a message sent during the outage (s) | first normal reply after back (s) | held "
        "messages all answered after back (s) | /healthz 503 after down (s) | /healthz 200 "
        "after back (s) |"
    )
    lines = [f"Outage length: {outage_s:g} s", "", header, "|" + "---|" * 11]
    for o in outcomes:
        lines.append(
            f"| {o.scenario} | {o.sent} | {o.answered} | {o.lost} | {o.duplicated} | "
            f"{o.degraded} | {_fmt(o.max_latency_during)} | {_fmt(o.first_normal_after_back)} | "
            f"{_fmt(o.backlog_cleared_after_back)} | {_fmt(o.health_503_after_down)} | "
            f"{_fmt(o.health_200_after_back)} |"
        )
    return "\n".join(lines)


async def _run(args: argparse.Namespace) -> list[Outcome]:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="greenroom-outages-") as folder:
        for name in args.scenarios:
            work = Path(folder) / name
            work.mkdir()
            print(f"running {name} ...", file=sys.stderr, flush=True)
            outcome = await _scenario(
                name,
                outage_s=args.outage,
                users=args.users,
                interval_s=args.interval,
                warmup_s=args.warmup,
                after_s=args.after,
                drain_s=args.drain,
                work=work,
            )
            print(f"  {outcome}", file=sys.stderr, flush=True)
            outcomes.append(outcome)
    return outcomes


def main() -> None:
    """Run the scenarios and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=20.0, help="seconds each outage lasts")
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument(
        "--interval", type=float, default=2.0, help="seconds between a user's messages"
    )
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument(
        "--after", type=float, default=15.0, help="load after the dependency is back"
    )
    parser.add_argument(
        "--drain", type=float, default=150.0, help="most seconds to wait for replies"
    )
    parser.add_argument(
        "--scenarios",
        type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
        default=list(SCENARIOS),
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    missing = pg_tools_missing()
    if missing:
        parser.error(f"cannot start a private PostgreSQL cluster: {missing}")
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    outcomes = asyncio.run(_run(args))
    print(_table(outcomes, args.outage))
    verdicts = Verdicts()
    for outcome in outcomes:
        _check(outcome, verdicts)
    verdicts.exit()


def _check(o: Outcome, verdicts: Verdicts) -> None:
    """One scenario's correctness: nothing lost or doubled, the outage seen, recovered."""
    verdicts.check(o.sent > 0, f"{o.scenario}: no message sent")
    verdicts.check(not o.lost, f"{o.scenario}: {o.lost} of {o.sent} messages lost (no reply)")
    verdicts.check(not o.duplicated, f"{o.scenario}: {o.duplicated} messages answered twice")
    if o.scenario == "postgres":
        verdicts.check(
            o.backlog_cleared_after_back is not None,
            f"{o.scenario}: no message held through the outage and answered after it",
        )
    else:
        verdicts.check(o.degraded > 0, f"{o.scenario}: no degraded reply during the outage")
    verdicts.check(
        o.first_normal_after_back is not None,
        f"{o.scenario}: no normal reply after the dependency returned",
    )
    verdicts.check(
        o.health_503_after_down is not None, f"{o.scenario}: /healthz never said 503 while down"
    )
    verdicts.check(
        o.health_200_after_back is not None, f"{o.scenario}: /healthz never said 200 after it"
    )


if __name__ == "__main__":
    main()
