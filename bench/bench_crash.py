"""Crash safety: SIGKILL the bot at chosen points of a turn and of an actor action, restart it,
and check that nothing was lost or sent twice.

The bot runs as its own process (``greenroom run``, fake model, memory off) against the loopback
Discord server in this process. Each trial arms one crash point through ``GREENROOM_CRASH_FILE``
(see :mod:`bot.faults`), drives a user message (and an actor action), waits for the process to
die, starts it again and checks, from the server's recorded messages and the database:

- the user's message has exactly one reply in the channel (answered before the crash, or read
  back by the catch-up after READY and answered then), and one ``sent`` node under its turn;
- an actor action that the server saw acknowledged has its feedback event in the database, and
  the reply the user sees is the actor's text when the action was committed;
- no reply is posted twice anywhere (every bot message in the channel answers a distinct user
  message);
- held candidates resume: a hold whose actor never acted is sent when it times out.

Scenarios: ``turn`` (a bound ``auto`` channel), ``held`` (a ``review`` channel: the candidate is
held, the actor approves or rewrites, or lets it time out), ``regen`` (the actor regenerates a
held candidate: the request is stored before it is acknowledged, and a restart finishes it; the
new candidate's hold then times out) and ``edit`` (an actor rewrites a reply that already went
out: it is edited in place).

Target (issue 7): at least 50 trials. Correctness (exit 1): every trial reaches its crash point
and passes every check above, and no reply is posted twice; each failure is a FAIL line naming
the trial. ERROR lines in the bot's log are counted and shown, not judged (a kill mid-request
may log one).

    .venv/bin/python bench/bench_crash.py [--trials 50] [--backend sqlite|postgresql] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select

from bench.common import Verdicts, loopback_bot_environment, scratch_database
from feedback.channels import ChannelSettingsStore, GuildSettingsStore
from feedback.database import create_engine, migrate, session_factory
from feedback.models import FeedbackEvent, MessageNode
from tests.discord_server import DiscordTestServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from tests.discord_server.models import Channel, Guild, User

__all__ = ["SCENARIO_POINTS", "CrashHarness", "Trial", "TrialResult", "plan", "summarise"]

TARGET_TRIALS = 50

#: The crash points each scenario reaches (see ``bot.faults.CRASH_POINTS``).
SCENARIO_POINTS: dict[str, tuple[str, ...]] = {
    "turn": (
        "turn.received",
        "turn.before_generate",
        "turn.before_commit",
        "turn.after_commit",
        "turn.after_send",
        "turn.after_mark_sent",
    ),
    "held": (
        "turn.after_commit",
        "action.before_commit",
        "action.after_commit",
        "action.after_ack",
        "deliver.before_send",
        "deliver.after_send",
    ),
    "regen": ("action.before_commit", "action.after_commit", "action.after_ack"),
    "edit": (
        "action.before_commit",
        "action.after_commit",
        "action.after_ack",
        "deliver.before_send",
        "deliver.after_send",
    ),
}


@dataclass(frozen=True)
class Trial:
    """One crash: where, in what scenario, and what the actor does (``held``/``edit``)."""

    index: int
    scenario: str
    point: str
    action: str = ""


@dataclass
class TrialResult:
    trial: Trial
    crashed: bool = False
    replies: int = 0
    acknowledged: bool | None = None
    recorded: bool | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def plan(trials: int, seed: int) -> list[Trial]:
    """``trials`` crashes spread over every scenario and point, shuffled by ``seed``."""
    rng = random.Random(seed)
    pairs = [(scenario, point) for scenario, points in SCENARIO_POINTS.items() for point in points]
    chosen = [pairs[i % len(pairs)] for i in range(trials)]
    rng.shuffle(chosen)
    result = []
    for index, (scenario, point) in enumerate(chosen):
        action = ""
        if scenario == "held":
            action = (
                "timeout" if point == "turn.after_commit" else rng.choice(("approve", "rewrite"))
            )
            if point.startswith("deliver.") and rng.random() < 0.3:
                action = "timeout"
        elif scenario == "edit":
            action = "rewrite"
        elif scenario == "regen":
            action = "regen"
        result.append(Trial(index, scenario, point, action))
    return result


class CrashHarness:
    """The loopback server, a database, and the bot process that is killed and restarted."""

    def __init__(self, url: str, folder: Path, *, hold_seconds: float = 2.0) -> None:
        self.url = url
        self.folder = folder
        self.hold_seconds = hold_seconds
        self.crash_file = folder / "crash-at"
        self.log_path = folder / "bot.log"
        self.server = DiscordTestServer(heartbeat_interval_ms=5000, rate_limit=(100_000, 1.0))
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def setup(self) -> None:
        server = self.server
        await server.start()
        self.owner = server.add_user("owner")
        self.guild: Guild = server.add_guild("Crash Test", self.owner)
        self.user: User = server.add_user("mia", global_name="Mia")
        self.actor: User = server.add_user("alice")
        self.role = server.add_role(self.guild, "Actors")
        server.add_member(self.guild, self.user)
        server.add_member(self.guild, self.actor, roles=[self.role])
        self.lounge: Channel = server.add_channel(self.guild, "lounge")
        self.review: Channel = server.add_channel(self.guild, "review")
        self.console: Channel = server.add_channel(self.guild, "console")
        db = create_engine(self.url)
        try:
            await migrate(db)
            sessions = session_factory(db)
            channels = ChannelSettingsStore(sessions)
            guild_key = f"discord:{self.guild.id}"
            await channels.bind(
                f"discord:{self.lounge.id}", persona="Marlowe", guild_key=guild_key, by="bench"
            )
            await channels.bind(
                f"discord:{self.review.id}", persona="Juniper", guild_key=guild_key, by="bench"
            )
            await channels.set_mode(
                f"discord:{self.review.id}", mode="review", guild_key=guild_key, by="bench"
            )
            await GuildSettingsStore(sessions).set_console(
                guild_key,
                channel_id=str(self.console.id),
                actor_role_id=str(self.role.id),
                by="bench",
            )
        finally:
            await db.dispose()

    # -- the bot process --------------------------------------------------------------------

    async def start_bot(self) -> None:
        environment = loopback_bot_environment(
            self.server,
            self.url,
            self.folder,
            GREENROOM_DISCORD__SYNC_COMMANDS="false",
            GREENROOM_CONSOLE__HOLD_SECONDS=str(self.hold_seconds),
            GREENROOM_CONSOLE__ON_TIMEOUT="send",
            GREENROOM_LOG_LEVEL="INFO",
            GREENROOM_CRASH_FILE=str(self.crash_file),
        )
        connected = sum(1 for _ in self.server.requests_to("GET", "/gateway/bot"))
        log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("greenroom")),
            "run",
            env=environment,
            cwd=self.folder,
            stdout=log,
            stderr=log,
        )
        log.close()
        self.starts += 1
        await self.server.wait_until(
            lambda: len(self.server.requests_to("GET", "/gateway/bot")) > connected or None,
            timeout=60,
            what="the bot asking for its gateway",
        )
        await self.server.wait_for_identified(timeout=60)

    async def wait_for_recovery(self, within_s: float = 60) -> None:
        """Wait until the restarted bot has read back its channels and resumed its holds (it
        logs both once per start)."""

        def count(text: str) -> int:
            return self.log_path.read_text(errors="replace").count(text)

        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if count("catch-up after READY") >= self.starts and count("resumed ") >= self.starts:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("the restarted bot did not finish its catch-up")

    async def wait_for_death(self, within_s: float) -> bool:
        """Whether the process died (SIGKILL) within ``within_s`` seconds."""
        assert self.process is not None
        try:
            code = await asyncio.wait_for(self.process.wait(), within_s)
        except TimeoutError:
            return False
        return code == -signal.SIGKILL

    async def stop_bot(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    async def close(self) -> None:
        await self.stop_bot()
        await self.server.stop()

    # -- trials -----------------------------------------------------------------------------

    def _replies_to(self, channel: Channel, user_message: dict[str, Any]) -> list[dict[str, Any]]:
        return [m for m in self.server.channel_history(channel) if _answers(m, user_message)]

    async def _console_message(self, user_message: dict[str, Any]) -> dict[str, Any]:
        """The console message of the candidate stored for ``user_message``."""
        candidate = await self._wait_for_candidate(user_message["id"])

        def find() -> dict[str, Any] | None:
            for message in self.server.channel_history(self.console, include_user_messages=False):
                if _approve_id(message) == candidate:
                    return message
            return None

        return await self.server.wait_until(find, timeout=30, what="the console message")

    async def _wait_for_candidate(self, external_id: str) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = await self._query_candidate(external_id)
            if found is not None:
                return found
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no candidate for message {external_id}")

    async def _query_candidate(self, external_id: str) -> int | None:
        async with self._session() as session:
            turn = await _user_turn(session, external_id)
            if turn is None:
                return None
            return await session.scalar(
                select(MessageNode.id)
                .where(MessageNode.parent_id == turn, MessageNode.origin == "model")
                .order_by(MessageNode.id)
                .limit(1)
            )

    async def run(self, trial: Trial) -> TrialResult:
        """Arm the crash, drive the scenario, restart after the crash, check what is left."""
        result = TrialResult(trial)
        marker = f"trial {trial.index} {trial.scenario} {trial.point}"
        channel = self.lounge if trial.scenario in ("turn", "edit") else self.review
        interaction = None
        rewrite = f"Rewritten by the actor for trial {trial.index}."
        if trial.scenario == "edit":
            # The reply goes out first; the crash is armed for the actor's rewrite.
            message = self.server.send_user_message(channel, self.user, marker)
            await self.server.wait_until(
                lambda: self._replies_to(channel, message) or None, timeout=30, what="a reply"
            )
        self.crash_file.write_text(trial.point)
        if trial.scenario != "edit":
            message = self.server.send_user_message(channel, self.user, marker)
        if trial.scenario in ("held", "edit", "regen") and trial.action != "timeout":
            console_message = await self._console_message(message)
            candidate = _approve_id(console_message)
            if trial.action in ("approve", "regen"):
                interaction = self.server.click_button(
                    console_message, self.actor, f"gr:{trial.action}:{candidate}"
                )
            else:
                opened = self.server.click_button(
                    console_message, self.actor, f"gr:rewrite:{candidate}"
                )
                await self.server.wait_for_interaction_response(opened, timeout=30)
                interaction = self.server.submit_modal(
                    self.actor, f"gr:rewrite-modal:{candidate}", {"text": rewrite}
                )
        result.crashed = await self.wait_for_death(within_s=10 + self.hold_seconds * 3)
        self.crash_file.unlink(missing_ok=True)
        if not result.crashed:
            result.problems.append("the crash point was not reached")
        else:
            await self.start_bot()
            await self.wait_for_recovery()
        expected_text = None
        if interaction is not None:
            result.acknowledged = interaction.responded
            result.recorded = await self._event_recorded(str(interaction.id))
            if result.acknowledged and not result.recorded:
                result.problems.append("an acknowledged action is not in the database")
            if result.recorded and trial.action == "rewrite":
                expected_text = rewrite
        await self._settle(channel, message, expected_text)
        replies = self._replies_to(channel, message)
        result.replies = len(replies)
        if len(replies) != 1:
            result.problems.append(f"{len(replies)} replies to the user's message")
        elif expected_text is not None and expected_text not in replies[0]["content"]:
            result.problems.append("the reply does not carry the committed rewrite")
        sent = await self._sent_nodes(message["id"])
        if sent != 1:
            result.problems.append(f"{sent} sent nodes under the user's turn")
        return result

    async def _settle(
        self, channel: Channel, message: dict[str, Any], expected_text: str | None
    ) -> None:
        """Wait for the reply (and the rewrite) to show, then a moment more for duplicates."""

        def done() -> bool | None:
            replies = self._replies_to(channel, message)
            if expected_text is not None:
                return any(expected_text in m["content"] for m in replies) or None
            return bool(replies) or None

        with contextlib.suppress(TimeoutError):
            await self.server.wait_until(done, timeout=15 + self.hold_seconds * 3, what="reply")
        await asyncio.sleep(1.0)

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[AsyncSession]:
        """A session on the harness's own engine (the bot process has its own)."""
        db: AsyncEngine = create_engine(self.url)
        try:
            async with session_factory(db)() as session:
                yield session
        finally:
            await db.dispose()

    async def _event_recorded(self, key: str) -> bool:
        async with self._session() as session:
            found = await session.scalar(
                select(FeedbackEvent.id).where(FeedbackEvent.idempotency_key == key)
            )
        return found is not None

    async def _sent_nodes(self, external_id: str) -> int:
        async with self._session() as session:
            turn = await _user_turn(session, external_id)
            if turn is None:
                return 0
            sent = await session.scalars(
                select(MessageNode.id).where(
                    MessageNode.parent_id == turn, MessageNode.state == "sent"
                )
            )
            return len(sent.all())

    def duplicate_posts(self) -> int:
        """Bot messages with the same content in one channel (every reply echoes a unique text)."""
        counts: Counter[tuple[str, str]] = Counter()
        for channel in (self.lounge, self.review):
            for message in self.server.channel_history(channel, include_user_messages=False):
                counts[(str(channel.id), message["content"])] += 1
        return sum(count - 1 for count in counts.values() if count > 1)


async def _user_turn(session: AsyncSession, external_id: str) -> int | None:
    return await session.scalar(
        select(MessageNode.id).where(
            MessageNode.role == "user", MessageNode.external_id == external_id
        )
    )


def _approve_id(message: dict[str, Any]) -> int | None:
    for row in message.get("components", []):
        for component in row.get("components", []):
            custom_id = component.get("custom_id", "")
            if custom_id.startswith("gr:approve:"):
                return int(custom_id.rsplit(":", 1)[1])
    return None


def _answers(reply: dict[str, Any], message: dict[str, Any]) -> bool:
    """A bot message replying to ``message`` (guild replies carry a message reference)."""
    reference = reply.get("message_reference") or {}
    return str(reply["author"]["id"]) != str(message["author"]["id"]) and str(
        reference.get("message_id")
    ) == str(message["id"])


def summarise(results: list[TrialResult]) -> str:
    """A table: trials per scenario and point, crashed, acknowledged, recorded, problems."""
    lines = [f"{'scenario':8} {'point':22} {'action':8} {'crash':5} {'ack':5} {'db':5} result"]
    for r in results:
        t = r.trial
        lines.append(
            f"{t.scenario:8} {t.point:22} {t.action:8} {_yn(r.crashed):5} "
            f"{_yn(r.acknowledged):5} {_yn(r.recorded):5} "
            + ("ok" if r.ok else "; ".join(r.problems))
        )
    ok = sum(r.ok for r in results)
    acked = sum(bool(r.acknowledged) for r in results)
    recorded = sum(bool(r.recorded) for r in results)
    lines.append(
        f"{len(results)} trials, {sum(r.crashed for r in results)} crashed, {ok} ok, "
        f"{len(results) - ok} with problems; {acked} acknowledged actions, {recorded} recorded"
    )
    return "\n".join(lines)


def _yn(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


@contextlib.asynccontextmanager
async def crash_harness(backend: str, *, hold_seconds: float = 2.0) -> AsyncIterator[CrashHarness]:
    """A set-up harness with the bot running (and stopped afterwards)."""
    async with scratch_database(backend) as url:
        with tempfile.TemporaryDirectory() as folder:
            harness = CrashHarness(url, Path(folder), hold_seconds=hold_seconds)
            await harness.setup()
            try:
                await harness.start_bot()
                await harness.wait_for_recovery()
                yield harness
            finally:
                await harness.close()


async def main_async(trials: int, backend: str, seed: int, verdicts: Verdicts) -> None:
    started = time.perf_counter()
    async with crash_harness(backend) as harness:
        results = []
        for trial in plan(trials, seed):
            results.append(await harness.run(trial))
            print(f"trial {trial.index}: {'ok' if results[-1].ok else results[-1].problems}")
        duplicates = harness.duplicate_posts()
        log = harness.log_path.read_text(errors="replace")
    print(summarise(results))
    errors = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
    print(
        f"{backend}: {harness.starts} bot starts, {duplicates} duplicated posts, "
        f"{len(errors)} error lines in the bot's log, {time.perf_counter() - started:.0f} s"
    )
    for line in errors[:20]:
        print("  " + line)
    verdicts.target(
        f"{backend}: crash trials",
        f"{len(results)}",
        f">= {TARGET_TRIALS}",
        len(results) >= TARGET_TRIALS,
    )
    for r in results:
        t = r.trial
        verdicts.check(
            r.ok,
            f"trial {t.index} ({t.scenario} at {t.point}, {t.action or 'no action'}): "
            + "; ".join(r.problems),
        )
    verdicts.check(not duplicates, f"{backend}: {duplicates} replies posted twice")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    verdicts = Verdicts()
    asyncio.run(main_async(args.trials, args.backend, args.seed, verdicts))
    verdicts.exit()


if __name__ == "__main__":
    main()
