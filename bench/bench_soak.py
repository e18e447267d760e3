"""Soak: many users and actors for minutes against the real bot process; everything reconciles.

The bot runs as its own process (``greenroom run``: fake echoing model, memory off, so no
embedder at all; PostgreSQL or SQLite; log level INFO, its stdout and stderr captured to a file).
This process runs the loopback Discord server (``tests/discord_server``), the simulated users and
the simulated actors, samples the bot's RSS (``/proc/<pid>/status`` VmRSS) every few seconds and,
once the bot has stopped, reconciles what the server recorded with what the database holds.

The world: one guild with a console channel and an actor role (set with ``GuildSettingsStore``
before the bot starts, as ``/console setup`` would), ``--rooms`` text channels bound to the three
bundled personas, every ``--review-every``-th one in ``review`` mode (replies held for an actor up
to ``--hold-seconds``, then dropped for a holding line: ``console.on_timeout = drop``; ``send`` is
an option), the others ``auto`` (sent at once, mirrored to the console).

Users (open loop, steady load): each of ``--users`` members posts in its room, waits an
exponential think time (mean ``--think`` s) and posts again, whether or not it was answered, until
``--minutes`` have passed. Actors: ``--actors`` members with the actor role watch the console
channel (the console messages the server stored) and take the next message from a shared queue
after a reaction time of 0.2-1 s. Each console message is given a plan when it appears, drawn from
a shuffled deck so every kind of action happens in any run long enough to go through one deck:
held candidates are approved (sometimes with a second actor clicking at the same time, or the same
click delivered twice), rewritten (button, modal, submit), regenerated (then the new candidate
approved or left to time out), rated or tagged then approved, taken over, or left to time out;
candidates already sent in ``auto`` rooms are mostly left alone, sometimes rated, tagged,
confirmed, rewritten (the sent message is edited in place) or regenerated and the new candidate
approved (edited in place too). A takeover: click Take over, read the thread from the answer,
speak two or three times as the persona in that thread, click Release.

After the load, actors finish their queue, the holds run out and the traffic stops; the bot gets
SIGTERM and must exit 0. Then the reconciliation, exactly (no tolerance anywhere):

* Stored once: every message a user sent is one user turn in the database (``messages`` row,
  ``role = user``, ``external_id`` = the Discord message id); no other user turns.
* Exactly one user-visible reply per user message, where the reply is, from the product's
  semantics: the one ``sent`` assistant node under that user turn (the model's candidate sent as
  it is, approved, sent when the hold ran out, regenerated then approved, or an actor's rewrite;
  a rewrite of a reply already sent replaces it, the old node turns ``replaced`` and the message
  is edited in place, so it is still one reply), or, when the hold ran out with
  ``on_timeout = drop``, the one ``dropped`` candidate with its holding line; or none when the
  conversation was taken over (the turn stays ``pending``, the model is silent and the user's
  message must be mirrored once into the console thread, where the actor answers as they see
  fit). Takeover messages are accounted for separately. On the server: the sent node's message
  exists in that room, its POST referenced the user's message, its content now is the node's
  content; exactly one bot POST (takeover messages aside) references each user message; none
  references a dropped or taken-over one.
* POSTs: the set of bot messages POSTed in the rooms equals the union of the ``external_id`` ids
  of ``sent`` nodes plus one holding line per ``timeout_drop`` (same room, the persona's exact
  holding line for that candidate); no POST claimed twice, no sent node without its POST.
  Edits: PATCHes in the rooms equal the ``replaced`` nodes, one each, on the inherited message.
* Actors: every interaction the server saw acknowledged as a success has exactly one
  ``feedback_events`` row with ``idempotency_key`` = the interaction id and the right kind
  (approve and modal submit: deferred update; regenerate: the "New candidate" follow-up; rate,
  tags, release: their confirmation; takeover: the deferred answer); every refused one has none;
  every event keyed by an interaction id belongs to an acknowledged interaction we sent; every
  message an actor typed in a takeover thread has one ``takeover_message`` event (key
  ``msg:<id>``), one ``sent`` node and one room POST. No candidate has two decisions.
* Nothing left ``held`` or ``approved``; ``candidate`` rows only as regenerated alternatives of
  a sent reply that nobody approved.
* The bot's log has no ERROR or CRITICAL line and no traceback; no request hit an unknown route.
* Memory (a gate only for runs of 3 minutes or more): the least-squares slope of RSS after the
  warm-up is at most 1 MB/min.

Each gated check that fails prints a FAIL line naming it and the run exits 1. The auto rooms'
reply latency is reported without a target (issue 7 sets none; the load bench has one).

    .venv/bin/python bench/bench_soak.py [--minutes 10] [--users 200] [--actors 10] \
        [--backend postgresql|sqlite] [--log bot.log]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import discord
from sqlalchemy import select

from bench.common import Verdicts, loopback_bot_environment, percentile, scratch_database
from feedback.channels import ChannelSettingsStore, GuildSettingsStore
from feedback.database import create_engine, migrate, session_factory
from feedback.models import Conversation, FeedbackEvent, MessageNode
from personas import PersonaRegistry
from tests.discord_server import DiscordTestServer

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.discord_server.models import Channel, User
    from tests.discord_server.server import InteractionRecord, RecordedRequest

__all__ = ["Check", "SoakConfig", "SoakResult", "format_report", "main", "run_soak"]

MESSAGES = "/channels/{channel_id}/messages"
MESSAGE = "/channels/{channel_id}/messages/{message_id}"
PERSONAS = ("Marlowe", "Juniper", "Captain Vex")
TAGS = ("in-character", "funny", "too-long", "wrong-tone", "good-timing")
_LOG_LEVEL = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) ")
_THREAD = re.compile(r"<#(\d+)>")
_NEW_CANDIDATE = re.compile(r"New candidate #(\d+)")

#: Plans for a held candidate (review room), one deck: each appears this many times.
HELD_DECK = {
    "approve": 8,
    "approve_double": 1,
    "approve_redeliver": 1,
    "rewrite": 4,
    "regen_approve": 2,
    "regen_ignore": 1,
    "rate_approve": 2,
    "tags_approve": 1,
    "takeover": 1,
    "ignore": 4,
}
#: Plans for a candidate already sent (auto room).
SENT_DECK = {
    "ignore": 40,
    "rate": 2,
    "tags": 1,
    "approve": 1,
    "rewrite": 2,
    "regen_approve": 1,
    "takeover": 1,
}
#: What a successful answer to each kind of interaction looks like, and the event it records.
EVENT_KIND = {
    "approve": "approve",
    "rewrite_submit": "rewrite",
    "regen": "regenerate",
    "rate": "rate",
    "tags": "rate",
    "takeover": "takeover",
    "release": "release",
}


@dataclass
class SoakConfig:
    """One soak run. The defaults are the full benchmark."""

    minutes: float = 10.0
    users: int = 200
    actors: int = 10
    rooms: int = 20
    review_every: int = 4
    think_s: float = 15.0
    hold_seconds: float = 4.0
    on_timeout: str = "drop"
    warmup_s: float = 60.0
    sample_s: float = 5.0
    interaction_deadline: float = 3.0
    max_takeovers: int = 2
    seed: int = 1


@dataclass
class Check:
    """One reconciliation check; ``gate`` False: a target, reported PASS or MISS, not part of
    the run's verdict."""

    name: str
    ok: bool
    detail: str
    gate: bool = True


@dataclass
class SoakResult:
    config: SoakConfig
    backend: str
    checks: list[Check]
    counts: list[tuple[str, Any]]
    problems: list[str]
    rss: list[tuple[float, float]]
    rss_summary: dict[str, float]
    log_path: Path
    load_seconds: float
    latency: dict[str, float]
    latency_by_minute: list[str]

    @property
    def passed(self) -> bool:
        return all(check.ok for check in self.checks if check.gate)


@dataclass
class UserMessage:
    id: int
    room_id: int
    text: str
    sent_ns: int


@dataclass
class Click:
    """An interaction an actor caused (``record.id`` is the interaction id)."""

    record: InteractionRecord
    kind: str
    actor: int
    redelivered: bool = False


@dataclass
class ConsoleItem:
    message_id: int
    candidate_id: int
    conversation_id: int
    held: bool
    plan: str
    seen: float


@dataclass
class Simulation:
    """Users and actors driving the server; what they did is kept for the reconciliation."""

    server: DiscordTestServer
    config: SoakConfig
    console: Channel
    rooms: list[Channel]
    users: list[User]
    actors: list[User]
    messages: list[UserMessage] = field(default_factory=list)
    clicks: list[Click] = field(default_factory=list)
    thread_messages: dict[int, int] = field(default_factory=dict)  # id -> thread id
    notes: Counter[str] = field(default_factory=Counter)
    plans: Counter[str] = field(default_factory=Counter)
    queue: asyncio.Queue[ConsoleItem | None] = field(default_factory=asyncio.Queue)
    takeovers_running: int = 0
    stop_watch: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: asyncio.Task[None] | None = None
    actor_tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._decks: dict[bool, list[str]] = {True: [], False: []}
        self._deck_rng = random.Random(self.config.seed)

    # -- users -----------------------------------------------------------------------------

    async def user_loop(self, index: int, until: float) -> None:
        rng = random.Random(self.config.seed * 100_003 + index)
        user, room = self.users[index], self.rooms[index % len(self.rooms)]
        turn = 0
        pause = rng.uniform(0, self.config.think_s)
        while time.monotonic() + pause < until:
            await asyncio.sleep(pause)
            text = f"u{index} m{turn}: hello from {user.username}, turn {turn}"
            message = self.server.send_user_message(room, user, text)
            self.messages.append(
                UserMessage(int(message["id"]), room.id, text, time.perf_counter_ns())
            )
            turn += 1
            pause = rng.expovariate(1 / self.config.think_s)

    # -- actors ----------------------------------------------------------------------------

    def _plan(self, held: bool) -> str:
        deck = self._decks[held]
        if not deck:
            source = HELD_DECK if held else SENT_DECK
            deck.extend(plan for plan, n in source.items() for _ in range(n))
            self._deck_rng.shuffle(deck)
        return deck.pop()

    async def watch_console(self) -> None:
        """New console messages (as the server stored them) become work for the actors."""
        seen = 0
        while not self.stop_watch.is_set():
            ids = self.server.channel_messages.get(self.console.id, [])
            for message_id in ids[seen:]:
                item = self._item(message_id)
                if item is not None:
                    self.plans[("held " if item.held else "sent ") + item.plan] += 1
                    if item.plan != "ignore":
                        self.queue.put_nowait(item)
            seen = len(ids)
            await asyncio.sleep(0.05)

    def _item(self, message_id: int) -> ConsoleItem | None:
        message = self.server.messages.get(message_id)
        if message is None or not message.get("embeds"):
            return None
        custom_ids = _custom_ids(message)
        candidate = next((c for c in custom_ids if c.startswith("gr:approve:")), None)
        conversation = next((c for c in custom_ids if c.startswith("gr:takeover:")), None)
        if candidate is None or conversation is None:
            return None
        fields = {f["name"]: f["value"] for f in message["embeds"][0].get("fields", [])}
        held = fields.get("Status", "").startswith("held")
        return ConsoleItem(
            message_id,
            int(candidate.rsplit(":", 1)[1]),
            int(conversation.rsplit(":", 1)[1]),
            held,
            self._plan(held),
            time.monotonic(),
        )

    async def actor_loop(self, index: int) -> None:
        rng = random.Random(self.config.seed * 7919 + index)
        while True:
            item = await self.queue.get()
            if item is None:
                return
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            try:
                await self._act(index, item, rng)
            except ValueError as error:  # the control is gone (e.g. regenerated meanwhile)
                self.notes[f"click skipped: {str(error)[:60]}"] += 1
            except TimeoutError:
                self.notes["an interaction or its follow-up was never answered"] += 1

    async def _act(self, actor: int, item: ConsoleItem, rng: random.Random) -> None:
        plan = item.plan
        cid = item.candidate_id
        if plan == "takeover":
            if self.takeovers_running >= self.config.max_takeovers:
                self.notes["takeover turned into approve (too many running)"] += 1
                plan = "approve" if item.held else "rate"
            else:
                await self._takeover(actor, item, rng)
                return
        if plan in ("approve", "approve_double", "approve_redeliver"):
            await self._approve(actor, item, cid, plan)
        elif plan == "rewrite":
            await self._rewrite(actor, item, cid, rng)
        elif plan in ("regen_approve", "regen_ignore"):
            fresh = await self._regenerate(actor, item, cid)
            if fresh is not None and plan == "regen_approve":
                await asyncio.sleep(rng.uniform(0.2, 0.8))
                await self._approve(actor, item, fresh, "approve")
        elif plan in ("rate", "rate_approve"):
            await self._select(actor, item, f"gr:rate:{cid}", "rate", [str(rng.randint(1, 5))])
            if plan == "rate_approve":
                await self._approve(actor, item, cid, "approve")
        elif plan in ("tags", "tags_approve"):
            tags = rng.sample(TAGS, rng.randint(1, 2))
            await self._select(actor, item, f"gr:tags:{cid}", "tags", tags)
            if plan == "tags_approve":
                await self._approve(actor, item, cid, "approve")

    async def _answered(self, record: InteractionRecord) -> InteractionRecord:
        deadline = self.config.interaction_deadline or 25.0
        return await self.server.wait_for_interaction_response(record, timeout=deadline + 5)

    def _click(self, actor: int, item: ConsoleItem, custom_id: str, kind: str) -> Click:
        message = self.server.messages[item.message_id]
        record = self.server.click_button(message, self.actors[actor], custom_id)
        click = Click(record, kind, actor)
        self.clicks.append(click)
        return click

    async def _approve(self, actor: int, item: ConsoleItem, cid: int, plan: str) -> None:
        click = self._click(actor, item, f"gr:approve:{cid}", "approve")
        if plan == "approve_double":
            other = (actor + 1) % len(self.actors)
            self._click(other, item, f"gr:approve:{cid}", "approve")
        elif plan == "approve_redeliver":
            self.server.gateway.dispatch("INTERACTION_CREATE", click.record.payload)
            click.redelivered = True
        await self._answered(click.record)

    async def _rewrite(self, actor: int, item: ConsoleItem, cid: int, rng: random.Random) -> None:
        click = self._click(actor, item, f"gr:rewrite:{cid}", "rewrite_open")
        record = await self._answered(click.record)
        if record.response_type != 9:
            return
        await asyncio.sleep(rng.uniform(0.3, 1.0))
        text = f"Rewritten by actor{actor} for candidate {cid}: the persona says it better."
        submitted = self.server.submit_modal(
            self.actors[actor], f"gr:rewrite-modal:{cid}", {"text": text}
        )
        self.clicks.append(Click(submitted, "rewrite_submit", actor))
        await self._answered(submitted)

    async def _regenerate(self, actor: int, item: ConsoleItem, cid: int) -> int | None:
        click = self._click(actor, item, f"gr:regen:{cid}", "regen")
        record = await self._answered(click.record)
        if record.response_type != 5:
            return None
        await self.server.wait_until(
            lambda: record.followup_message_ids,
            what="the regenerate's follow-up message",
            timeout=30,
        )
        followup = self.server.messages.get(record.followup_message_ids[0], {})
        found = _NEW_CANDIDATE.search(str(followup.get("content")))
        return int(found.group(1)) if found else None

    async def _select(
        self, actor: int, item: ConsoleItem, custom_id: str, kind: str, values: list[str]
    ) -> None:
        message = self.server.messages[item.message_id]
        record = self.server.select_option(message, self.actors[actor], custom_id, values)
        self.clicks.append(Click(record, kind, actor))
        await self._answered(record)

    async def _takeover(self, actor: int, item: ConsoleItem, rng: random.Random) -> None:
        self.takeovers_running += 1
        try:
            click = self._click(actor, item, f"gr:takeover:{item.conversation_id}", "takeover")
            record = await self._answered(click.record)
            if record.response_type != 5:
                return
            await self.server.wait_until(
                lambda: record.followup_message_ids,
                what="the takeover's follow-up message naming its thread",
                timeout=30,
            )
            followup = self.server.messages.get(record.followup_message_ids[0], {})
            found = _THREAD.search(str(followup.get("content")))
            if found is not None:
                thread = self.server.channels[int(found.group(1))]
                for n in range(rng.randint(2, 3)):
                    await asyncio.sleep(rng.uniform(0.8, 2.0))
                    text = f"actor{actor} speaking as the persona, line {n}"
                    sent = self.server.send_user_message(thread, self.actors[actor], text)
                    self.thread_messages[int(sent["id"])] = thread.id
            else:
                self.notes["takeover without a thread"] += 1
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            release = self._click(actor, item, f"gr:release:{item.conversation_id}", "release")
            await self._answered(release.record)
        finally:
            self.takeovers_running -= 1


def _custom_ids(message: dict[str, Any]) -> list[str]:
    return [
        component.get("custom_id", "")
        for row in message.get("components") or []
        for component in row.get("components") or []
    ]


# -- the bot process --------------------------------------------------------------------------


async def _start_bot(
    server: DiscordTestServer, url: str, folder: Path, config: SoakConfig, log: Any
) -> asyncio.subprocess.Process:
    environment = loopback_bot_environment(
        server,
        url,
        folder,
        GREENROOM_CONSOLE__HOLD_SECONDS=str(config.hold_seconds),
        GREENROOM_CONSOLE__ON_TIMEOUT=config.on_timeout,
        GREENROOM_LOG_LEVEL="INFO",
    )
    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("greenroom")),
        "run",
        env=environment,
        cwd=folder,
        stdout=log,
        stderr=log,
    )


def rss_mb(pid: int) -> float | None:
    """The resident set size of a process in MB (``VmRSS``), or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) / 1024 if found else None


async def _sample_rss(
    pid: int, every: float, started: float, out: list[tuple[float, float]]
) -> None:
    while True:
        value = rss_mb(pid)
        if value is None:
            return
        out.append((time.monotonic() - started, value))
        await asyncio.sleep(every)


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB), in MB per minute."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] / 60 for p in points]
    ys = [p[1] for p in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


# -- the run -----------------------------------------------------------------------------------


async def run_soak(
    config: SoakConfig,
    url: str,
    log_path: Path,
    backend: str = "",
    *,
    prepare: Callable[[DiscordTestServer], None] | None = None,
) -> SoakResult:
    """Set up the world on ``url`` (an empty database), run the load, reconcile.

    ``prepare`` is called with the server once the bot is connected, before the load (e.g. to
    inject faults and see that the reconciliation catches what they break).
    """
    server = DiscordTestServer(
        heartbeat_interval_ms=5000,
        rate_limit=(100_000, 1.0),
        interaction_deadline=config.interaction_deadline or None,
    )
    await server.start()
    try:
        return await _run(server, config, url, log_path, backend, prepare)
    finally:
        await server.stop()


async def _run(
    server: DiscordTestServer,
    config: SoakConfig,
    url: str,
    log_path: Path,
    backend: str,
    prepare: Callable[[DiscordTestServer], None] | None,
) -> SoakResult:
    owner = server.add_user("owner")
    guild = server.add_guild("Soak Test", owner)
    console = server.add_channel(guild, "console")
    role = server.add_role(guild, "Actors")
    actors = [server.add_user(f"actor{i}") for i in range(config.actors)]
    for actor in actors:
        server.add_member(guild, actor, roles=[role])
    rooms = [server.add_channel(guild, f"room-{i}") for i in range(config.rooms)]
    users = [server.add_user(f"user{i}") for i in range(config.users)]
    for user in users:
        server.add_member(guild, user)
    review = {room.id for i, room in enumerate(rooms) if i % config.review_every == 0}

    db = create_engine(url)
    await migrate(db)
    sessions = session_factory(db)
    bindings = ChannelSettingsStore(sessions)
    for index, room in enumerate(rooms):
        key = f"discord:{room.id}"
        await bindings.bind(key, persona=PERSONAS[index % 3], guild_key=None, by="soak")
        mode = "review" if room.id in review else "auto"
        await bindings.set_mode(key, mode=mode, guild_key=None, by="soak")
    await GuildSettingsStore(sessions).set_console(
        f"discord:{guild.id}", channel_id=str(console.id), actor_role_id=str(role.id), by="soak"
    )
    await db.dispose()

    sim = Simulation(server, config, console, rooms, users, actors)
    rss: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as folder, log_path.open("wb") as log:
        bot = await _start_bot(server, url, Path(folder), config, log)
        try:
            await server.wait_for_identified(timeout=120)
            await server.wait_for_request(
                method="PUT", route="/applications/{application_id}/commands", timeout=120
            )
            await asyncio.sleep(1.0)
            if prepare is not None:
                prepare(server)
            started = time.monotonic()
            sampler = asyncio.create_task(_sample_rss(bot.pid, config.sample_s, started, rss))
            load_seconds = await _load(sim, started)
            await _drain(sim)
        finally:
            with contextlib.suppress(ProcessLookupError):
                bot.send_signal(signal.SIGTERM)
            try:
                exit_code = await asyncio.wait_for(bot.wait(), 90)
            except TimeoutError:
                bot.kill()
                exit_code = await bot.wait()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler

    db = create_engine(url)
    try:
        snapshot = await _load_db(db)
    finally:
        await db.dispose()
    log_text = await asyncio.to_thread(log_path.read_text, errors="replace")
    csv = "seconds,rss_mb\n" + "".join(f"{at:.1f},{mb:.2f}\n" for at, mb in rss)
    await asyncio.to_thread(log_path.with_suffix(".rss.csv").write_text, csv)
    checks, counts, problems = reconcile(sim, snapshot, review, log_text, exit_code)
    after = [p for p in rss if p[0] >= config.warmup_s] or rss
    rss_summary = {
        "start": after[0][1] if after else 0.0,
        "end": after[-1][1] if after else 0.0,
        "max": max((p[1] for p in rss), default=0.0),
        "slope": _slope(after),
        "samples": float(len(rss)),
    }
    long_run = config.minutes >= 3
    checks.append(
        Check(
            "bot RSS after warm-up",
            rss_summary["slope"] <= 1.0,
            f"{rss_summary['start']:.1f} -> {rss_summary['end']:.1f} MB, "
            f"slope {rss_summary['slope']:+.2f} MB/min (target slope <= 1 MB/min"
            + ("; gated on runs of 3 min or more)" if long_run else "; not gated: under 3 min)"),
            gate=long_run,
        )
    )
    latency, by_minute = _latency(sim, review)
    return SoakResult(
        config=config,
        backend=backend,
        checks=checks,
        counts=counts,
        problems=problems,
        rss=rss,
        rss_summary=rss_summary,
        log_path=log_path,
        load_seconds=load_seconds,
        latency=latency,
        latency_by_minute=by_minute,
    )


async def _load(sim: Simulation, started: float) -> float:
    config = sim.config
    until = started + config.minutes * 60
    sim.watcher = asyncio.create_task(sim.watch_console())
    sim.actor_tasks = [asyncio.create_task(sim.actor_loop(i)) for i in range(len(sim.actors))]
    await asyncio.gather(*(sim.user_loop(i, until) for i in range(len(sim.users))))
    return time.monotonic() - started


async def _drain(sim: Simulation) -> None:
    """Let actors finish their queue and holds run out, then wait for the traffic to stop."""
    server = sim.server
    await asyncio.sleep(1.0)
    for _ in sim.actor_tasks:
        sim.queue.put_nowait(None)
    await asyncio.gather(*sim.actor_tasks)
    sim.stop_watch.set()
    if sim.watcher is not None:
        await sim.watcher
    await asyncio.sleep(sim.config.hold_seconds + 1.0)
    deadline = time.monotonic() + 120
    quiet_since, seen = time.monotonic(), len(server.requests)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        busy = [
            r
            for r in server.requests[seen:]
            if r.route != "/channels/{channel_id}/typing" or r.status == 0
        ]
        pending = any(r.status == 0 for r in server.requests[-50:])
        seen = len(server.requests)
        if busy or pending:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 3.0:
            return
    sim.notes["traffic did not stop within 120 s of the end"] += 1


# -- the database ------------------------------------------------------------------------------


@dataclass
class DbSnapshot:
    nodes: list[MessageNode]
    events: list[FeedbackEvent]
    conversations: dict[int, Conversation]


async def _load_db(db: Any) -> DbSnapshot:
    sessions = session_factory(db)
    async with sessions() as session:
        nodes = list((await session.scalars(select(MessageNode).order_by(MessageNode.id))).all())
        events = list(
            (await session.scalars(select(FeedbackEvent).order_by(FeedbackEvent.id))).all()
        )
        conversations = {c.id: c for c in (await session.scalars(select(Conversation))).all()}
    return DbSnapshot(nodes, events, conversations)


# -- reconciliation ----------------------------------------------------------------------------


def _ok(request: RecordedRequest) -> bool:
    return 200 <= request.status < 300


def _ids(external_id: str | None) -> list[int]:
    return [int(part) for part in (external_id or "").split()]


def _prefix(persona: str) -> str:
    return f"**{discord.utils.escape_markdown(persona)}:** "


def reconcile(
    sim: Simulation,
    db: DbSnapshot,
    review: set[int],
    log_text: str,
    exit_code: int,
) -> tuple[list[Check], list[tuple[str, Any]], list[str]]:
    """Compare the server's record, the simulation's record and the database, exactly."""
    server = sim.server
    problems: list[str] = []
    checks: list[Check] = []
    counts: list[tuple[str, Any]] = []
    room_ids = {room.id for room in sim.rooms}
    bot_id = server.bot_user.id
    personas = PersonaRegistry.load()

    def problem(text: str) -> None:
        problems.append(text)

    users_by_external: dict[int, list[MessageNode]] = defaultdict(list)
    for node in db.nodes:
        if node.role == "user":
            users_by_external[int(node.external_id or 0)].append(node)
    children: dict[int, list[MessageNode]] = defaultdict(list)
    for node in db.nodes:
        if node.role == "assistant" and node.parent_id is not None:
            children[node.parent_id].append(node)
    events_by_key = {e.idempotency_key: e for e in db.events if e.idempotency_key}
    decisions: Counter[int] = Counter()
    for event in db.events:
        decision = ("approve", "rewrite", "regenerate", "timeout_send", "timeout_drop")
        if event.kind in decision and event.candidate_id is not None:
            decisions[event.candidate_id] += 1

    # -- what the server saw the bot do in the rooms -------------------------------------------
    room_posts = [
        r
        for r in server.requests
        if r.method == "POST" and r.route == MESSAGES and int(r.params["channel_id"]) in room_ids
    ]
    room_patches = [
        r
        for r in server.requests
        if r.method == "PATCH" and r.route == MESSAGE and int(r.params["channel_id"]) in room_ids
    ]
    room_deletes = [
        r
        for r in server.requests
        if r.method == "DELETE" and r.route == MESSAGE and int(r.params["channel_id"]) in room_ids
    ]
    failed = [r for r in room_posts + room_patches + room_deletes if not _ok(r)]
    posted = {int(r.response["id"]): r for r in room_posts if _ok(r)}

    # -- 1. every user message stored once -----------------------------------------------------
    sent_ids = {m.id for m in sim.messages}
    lost_turns = [m for m in sim.messages if not users_by_external.get(m.id)]
    duplicate_turns = [m for m in sim.messages if len(users_by_external.get(m.id, [])) > 1]
    strangers = [k for k in users_by_external if k not in sent_ids]
    for m in lost_turns[:10]:
        problem(f"user message {m.id} ({m.text!r}) has no user turn in the database")
    for m in duplicate_turns[:10]:
        rows = [(n.id, n.state) for n in users_by_external[m.id]]
        problem(f"user message {m.id} is stored {len(rows)} times: {rows}")
    checks.append(
        Check(
            "every user message stored as exactly one user turn",
            not lost_turns and not duplicate_turns and not strangers,
            f"{len(sim.messages)} sent, {len(lost_turns)} lost, {len(duplicate_turns)} "
            f"duplicated, {len(strangers)} unknown",
        )
    )

    # -- 2. exactly one user-visible reply per user message ------------------------------------
    claimed: dict[int, MessageNode] = {}
    double_claims: list[int] = []
    for node in db.nodes:
        if node.role == "assistant" and node.state == "sent":
            for message_id in _ids(node.external_id):
                if message_id in claimed:
                    double_claims.append(message_id)
                claimed[message_id] = node
    references: dict[int, list[int]] = defaultdict(list)
    for message_id, request in posted.items():
        node = claimed.get(message_id)
        if node is not None and node.origin == "takeover":
            continue
        reference = (request.json or {}).get("message_reference") or {}
        if reference.get("message_id"):
            references[int(reference["message_id"])].append(message_id)

    kinds: Counter[str] = Counter()
    expected_holding: Counter[tuple[int, str]] = Counter()
    lost: list[str] = []
    duplicated: list[str] = []
    wrong: list[str] = []
    threads_mirror: dict[int, list[str]] = defaultdict(list)
    for request in server.requests:
        if request.method == "POST" and request.route == MESSAGES and _ok(request):
            channel = server.channels.get(int(request.params["channel_id"]))
            if channel is not None and channel.type.is_thread:
                threads_mirror[channel.id].append(str((request.json or {}).get("content")))
    rejected_by_regen = {
        e.candidate_id for e in db.events if e.kind == "regenerate" and e.candidate_id
    }
    for message in sim.messages:
        turns = users_by_external.get(message.id, [])
        if len(turns) != 1:
            continue
        turn = turns[0]
        answers = [c for c in children.get(turn.id, []) if c.origin != "takeover"]
        sent = [c for c in answers if c.state == "sent"]
        dropped = [c for c in answers if c.state == "dropped"]
        refs = references.get(message.id, [])
        where = f"user message {message.id} (turn {turn.id}, room {message.room_id})"
        if len(sent) == 1 and not dropped:
            node = sent[0]
            ids = _ids(node.external_id)
            if node.origin == "rewrite":
                kind = "an actor's rewrite"
            elif node.decided_by is None:
                kind = "the candidate, sent at once (auto)"
            elif node.decided_by == "timeout":
                kind = "the candidate, sent when the hold ran out"
            elif any(c.id in rejected_by_regen for c in answers):
                kind = "a regenerated candidate, approved"
            else:
                kind = "the candidate, approved by an actor"
            if any(c.state == "replaced" for c in answers):
                kind += " (edited in place)"
            kinds[kind] += 1
            if not ids or any(i not in posted for i in ids):
                lost.append(f"{where}: sent node {node.id} claims {ids}, not all POSTed")
            elif len(refs) != 1 or refs[0] != ids[0]:
                duplicated.append(f"{where}: {len(refs)} bot POSTs reference it: {refs}")
            else:
                stored = server.messages.get(ids[0])
                persona = db.conversations[node.conversation_id].persona
                expected = _prefix(persona) + node.content
                if stored is None or int(stored["author"]["id"]) != bot_id:
                    wrong.append(f"{where}: message {ids[0]} is gone from the server")
                elif int(stored["channel_id"]) != message.room_id:
                    wrong.append(f"{where}: reply {ids[0]} is in another channel")
                elif len(ids) == 1 and stored["content"] != expected:
                    wrong.append(
                        f"{where}: reply {ids[0]} reads {stored['content']!r}, the database "
                        f"says {expected!r}"
                    )
        elif not sent and len(dropped) == 1:
            node = dropped[0]
            kinds["a holding line (hold ran out, dropped)"] += 1
            line = personas.get(node.author_name).holding_line(seed=node.id)
            expected_holding[(message.room_id, _prefix(node.author_name) + line)] += 1
            if refs:
                duplicated.append(f"{where}: dropped, yet bot POSTs {refs} reference it")
        elif not answers and turn.state == "pending":
            kinds["none: conversation taken over (mirrored to the thread)"] += 1
            thread = db.conversations[turn.conversation_id].console_thread_id
            mirrored = [c for c in threads_mirror.get(int(thread or 0), []) if message.text in c]
            if len(mirrored) != 1:
                lost.append(f"{where}: taken over, mirrored {len(mirrored)} times to the thread")
            if refs:
                duplicated.append(f"{where}: taken over, yet bot POSTs {refs} reference it")
        else:
            states = [(c.id, c.origin, c.state, c.decided_by) for c in answers]
            target = duplicated if len(sent) > 1 or (sent and dropped) else lost
            target.append(f"{where}: turn state {turn.state}, replies {states}, POSTs {refs}")
    for text in lost[:15] + duplicated[:15] + wrong[:15]:
        problem(text)
    for kind, n in sorted(kinds.items()):
        counts.append((f"answered by {kind}", n))
    checks.append(
        Check(
            "every user message got exactly one user-visible reply",
            not lost and not duplicated and not wrong,
            f"{sum(kinds.values())} classified, {len(lost)} lost, {len(duplicated)} duplicated, "
            f"{len(wrong)} wrong on the server",
        )
    )

    # -- 3. POSTs and edits in the rooms equal what the database says was sent ------------------
    holding_posts: Counter[tuple[int, str]] = Counter()
    for message_id, request in posted.items():
        if message_id not in claimed:
            holding_posts[
                (int(request.params["channel_id"]), str(request.json.get("content")))
            ] += 1
    unposted = sorted(i for i in claimed if i not in posted)
    extra_posts = holding_posts - expected_holding
    missing_lines = expected_holding - holding_posts
    timeout_drops = sum(e.kind == "timeout_drop" for e in db.events)
    dropped_nodes = sum(n.role == "assistant" and n.state == "dropped" for n in db.nodes)
    for (room, content), n in list(extra_posts.items())[:10]:
        problem(f"room {room}: {n} bot POST(s) no sent node claims: {content!r}")
    for (room, content), n in list(missing_lines.items())[:10]:
        problem(f"room {room}: {n} holding line(s) expected, not POSTed: {content!r}")
    for message_id in unposted[:10]:
        problem(f"sent node {claimed[message_id].id} claims message {message_id}, never POSTed")
    for message_id in double_claims[:10]:
        problem(f"message {message_id} is claimed by two sent nodes")
    counts += [
        ("bot POSTs in user rooms (2xx)", len(posted)),
        ("  claimed by sent nodes' external ids", sum(1 for i in posted if i in claimed)),
        ("  holding lines", sum(holding_posts.values())),
        ("sent assistant nodes", len({n.id for n in claimed.values()})),
        ("timeout_drop events / dropped nodes", f"{timeout_drops} / {dropped_nodes}"),
    ]
    checks.append(
        Check(
            "room POSTs == sent nodes' external ids + one holding line per timeout_drop",
            not unposted
            and not extra_posts
            and not missing_lines
            and not double_claims
            and timeout_drops == dropped_nodes == sum(expected_holding.values()),
            f"{len(posted)} POSTs; {len(unposted)} claimed but not POSTed, "
            f"{sum(extra_posts.values())} unclaimed, {sum(missing_lines.values())} holding lines "
            f"missing, {len(double_claims)} double claims",
        )
    )
    replaced = [n for n in db.nodes if n.role == "assistant" and n.state == "replaced"]
    patched: Counter[int] = Counter(int(r.params["message_id"]) for r in room_patches if _ok(r))
    bad_replaced = []
    for node in replaced:
        ids = _ids(node.external_id)
        heirs = [claimed.get(i) for i in ids]
        if not ids or any(h is None or h.parent_id != node.parent_id for h in heirs):
            bad_replaced.append(f"replaced node {node.id} ({ids}) has no sent sibling holding them")
    expected_patches: Counter[int] = Counter(i for n in replaced for i in _ids(n.external_id))
    for text in bad_replaced[:10]:
        problem(text)
    if patched != expected_patches:
        diff = (patched - expected_patches) + (expected_patches - patched)
        problem(f"room PATCHes differ from replaced nodes on messages {sorted(diff)[:10]}")
    counts += [
        ("bot PATCHes (edits in place) in user rooms (2xx)", sum(patched.values())),
        ("replaced nodes", len(replaced)),
        ("bot DELETEs in user rooms", len(room_deletes)),
        ("bot requests in user rooms that failed", len(failed)),
    ]
    for request in failed[:10]:
        problem(f"{request.method} {request.path} -> {request.status}: {request.response}")
    checks.append(
        Check(
            "room PATCHes == replaced nodes (rewrites of sent replies edit in place)",
            patched == expected_patches and not bad_replaced and not room_deletes and not failed,
            f"{sum(patched.values())} PATCHes, {len(replaced)} replaced nodes, "
            f"{len(failed)} failed requests",
        )
    )

    # -- 4. every candidate mirrored to the console once ---------------------------------------
    console_posts = {
        int(r.response["id"])
        for r in server.requests
        if r.method == "POST"
        and r.route == MESSAGES
        and int(r.params["channel_id"]) == sim.console.id
        and _ok(r)
        and (r.json or {}).get("embeds")
    }
    regen_results = {e.result_id for e in db.events if e.kind == "regenerate"}
    originals = [
        n
        for n in db.nodes
        if n.role == "assistant" and n.origin in ("model", "fallback") and n.id not in regen_results
    ]
    refs = Counter(n.console_ref for n in originals)
    unmirrored = [
        n.id
        for n in originals
        if not n.console_ref
        or n.console_ref.partition("/")[0] != str(sim.console.id)
        or int(n.console_ref.partition("/")[2]) not in console_posts
        or refs[n.console_ref] > 1
    ]
    for node_id in unmirrored[:10]:
        problem(f"candidate {node_id} has no console message of its own")
    checks.append(
        Check(
            "every candidate has exactly one console message (console POSTs == candidates)",
            not unmirrored and len(console_posts) == len(originals),
            f"{len(originals)} candidates, {len(console_posts)} console POSTs, "
            f"{len(unmirrored)} without their own",
        )
    )

    # -- 5. actors: acknowledged interactions and feedback events --------------------------------
    acknowledged: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    unanswered: Counter[str] = Counter()
    missing_events: list[str] = []
    stray_events: list[str] = []
    our_keys: set[str] = set()
    redelivered = 0
    for click in sim.clicks:
        record = click.record
        key = str(record.id)
        our_keys.add(key)
        redelivered += click.redelivered
        success = _succeeded(server, click)
        event = events_by_key.get(key)
        expected_kind = EVENT_KIND.get(click.kind)
        if success is None:
            unanswered[click.kind] += 1
            continue
        if success:
            acknowledged[click.kind] += 1
            if expected_kind is None:
                continue
            if event is None or event.kind != expected_kind:
                found = event.kind if event else None
                missing_events.append(
                    f"{click.kind} interaction {key} by actor{click.actor} acknowledged, "
                    f"event {found!r}"
                )
        else:
            refused[click.kind] += 1
            if event is not None:
                stray_events.append(
                    f"{click.kind} interaction {key} refused, yet event {event.id} ({event.kind})"
                )
    numeric_events = [e for e in db.events if (e.idempotency_key or "").isdigit()]
    unknown_events = [e for e in numeric_events if e.idempotency_key not in our_keys]
    for event in unknown_events[:10]:
        stray_events.append(f"event {event.id} ({event.kind}) for an interaction nobody sent")
    thread_events = {
        e.idempotency_key: e for e in db.events if (e.idempotency_key or "").startswith("msg:")
    }
    takeover_lost = []
    for message_id in sim.thread_messages:
        event = thread_events.get(f"msg:{message_id}")
        node = (
            next((n for n in db.nodes if n.id == event.result_id), None)
            if event is not None
            else None
        )
        if event is None or node is None or node.state != "sent":
            answers = [
                str((r.json or {}).get("content"))[:80]
                for r in server.requests
                if r.method == "POST"
                and r.route == MESSAGES
                and int(r.params["channel_id"]) == sim.thread_messages[message_id]
                and ((r.json or {}).get("message_reference") or {}).get("message_id")
                == str(message_id)
            ]
            takeover_lost.append(
                f"takeover message {message_id} in thread {sim.thread_messages[message_id]}: "
                f"event {event.id if event else None}, node "
                f"{(node.id, node.state) if node else None}, the bot answered it {answers}"
            )
        elif not all(i in posted for i in _ids(node.external_id)):
            takeover_lost.append(f"takeover message {message_id}: node {node.id} not POSTed")
    extra_thread = [k for k in thread_events if int(k[4:]) not in sim.thread_messages]
    takeover_nodes = sum(n.origin == "takeover" for n in db.nodes)
    for text in missing_events[:10] + stray_events[:10] + takeover_lost[:10]:
        problem(text)
    twice = [cid for cid, n in decisions.items() if n > 1]
    for cid in twice[:10]:
        problem(f"candidate {cid} has {decisions[cid]} decision events")
    for kind in (
        "approve",
        "rewrite_open",
        "rewrite_submit",
        "regen",
        "rate",
        "tags",
        "takeover",
        "release",
    ):
        counts.append(
            (
                f"interactions {kind}: acknowledged / refused / unanswered",
                f"{acknowledged[kind]} / {refused[kind]} / {unanswered[kind]}",
            )
        )
    counts.append(("same click delivered twice", redelivered))
    counts.append(
        (
            "actor messages in takeover threads / takeover nodes",
            f"{len(sim.thread_messages)} / {takeover_nodes}",
        )
    )
    event_kinds = Counter(e.kind for e in db.events)
    counts.append(
        ("feedback events", ", ".join(f"{k} {n}" for k, n in sorted(event_kinds.items())))
    )
    checks.append(
        Check(
            "every acknowledged interaction has its one feedback event; refused ones none",
            not missing_events and not stray_events,
            f"{sum(acknowledged.values())} acknowledged, {sum(refused.values())} refused, "
            f"{len(missing_events)} without event, {len(stray_events)} stray events",
        )
    )
    checks.append(
        Check(
            "every takeover thread message: one event, one sent node, one room POST",
            not takeover_lost and not extra_thread and takeover_nodes == len(sim.thread_messages),
            f"{len(sim.thread_messages)} typed, {len(takeover_lost)} lost, "
            f"{len(extra_thread)} extra, {takeover_nodes} takeover nodes",
        )
    )
    checks.append(
        Check(
            "no candidate decided twice",
            not twice,
            f"{len(decisions)} decided candidates, {len(twice)} decided more than once",
        )
    )
    checks.append(
        Check(
            "every interaction answered in time (deadline)",
            not unanswered,
            f"{sum(unanswered.values())} unanswered: {dict(unanswered)}",
            gate=False,
        )
    )

    # -- 6. nothing left in flight ---------------------------------------------------------------
    states = Counter(n.state for n in db.nodes if n.role == "assistant")
    stray_candidates = [
        n.id
        for n in db.nodes
        if n.role == "assistant" and n.state == "candidate" and n.id not in regen_results
    ]
    counts.append(
        ("assistant nodes by state", ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    )
    for node_id in stray_candidates[:10]:
        problem(f"candidate {node_id} was never sent, held or decided")
    checks.append(
        Check(
            "nothing left held, approved-but-undelivered or undelivered",
            states["held"] == 0 and states["approved"] == 0 and not stray_candidates,
            f"held {states['held']}, approved {states['approved']}, "
            f"stray candidates {len(stray_candidates)}",
        )
    )

    # -- 7. the bot's log and exit -----------------------------------------------------------------
    levels: Counter[str] = Counter()
    error_lines = []
    for line in log_text.splitlines():
        found = _LOG_LEVEL.match(line)
        if found:
            levels[found["level"]] += 1
            if found["level"] in ("ERROR", "CRITICAL"):
                error_lines.append(line)
    tracebacks = sum(line.startswith("Traceback") for line in log_text.splitlines())
    for line in error_lines[:10]:
        problem(f"log: {line[:300]}")
    warnings = Counter(
        re.sub(r"\d+", "N", line.split(": ", 1)[-1])[:90]
        for line in log_text.splitlines()
        if (m := _LOG_LEVEL.match(line)) and m["level"] == "WARNING"
    )
    counts.append(
        ("bot log lines by level", ", ".join(f"{k} {v}" for k, v in sorted(levels.items())))
    )
    for text, n in warnings.most_common(5):
        counts.append((f"  WARNING x{n}", text))
    checks.append(
        Check(
            "no ERROR/CRITICAL line and no traceback in the bot's log",
            not error_lines and tracebacks == 0,
            f"{len(error_lines)} ERROR/CRITICAL lines, {tracebacks} tracebacks",
        )
    )
    unknown = server.unknown_requests
    checks.append(
        Check(
            "bot exited 0 on SIGTERM; no request to an unknown route",
            exit_code == 0 and not unknown,
            f"exit code {exit_code}, {len(unknown)} unknown requests",
        )
    )
    for note, n in sorted(sim.notes.items()):
        counts.append((f"simulation: {note}", n))
    counts.insert(0, ("user messages sent", len(sim.messages)))
    counts.insert(
        1,
        (
            "console messages posted",
            len(server.channel_history(sim.console, include_user_messages=False)),
        ),
    )
    counts.insert(2, ("actor plans", ", ".join(f"{k} {v}" for k, v in sorted(sim.plans.items()))))
    return checks, counts, problems


def _succeeded(server: DiscordTestServer, click: Click) -> bool | None:
    """Whether the bot answered the interaction as a success; None: never answered."""
    record = click.record
    if record.response_type is None:
        return None
    content = str((record.response_data or {}).get("content") or "")
    followups = [server.messages.get(i, {}) for i in record.followup_message_ids]
    follow = " ".join(str(m.get("content") or "") for m in followups)
    if click.kind in ("approve", "rewrite_submit"):
        return record.response_type == 6
    if click.kind == "rewrite_open":
        return record.response_type == 9
    if click.kind == "regen":
        return record.response_type == 5 and bool(_NEW_CANDIDATE.search(follow))
    if click.kind == "takeover":
        return record.response_type == 5
    if click.kind == "rate":
        return content.startswith("Rated ")
    if click.kind == "tags":
        return content.startswith("Tagged: ")
    if click.kind == "release":
        return content.startswith("Released:")
    raise ValueError(click.kind)


def _latency(sim: Simulation, review: set[int]) -> tuple[dict[str, float], list[str]]:
    """Auto rooms: from MESSAGE_CREATE to the reply's POST (ms), overall and per minute."""
    sent = {m.id: m for m in sim.messages if m.room_id not in review}
    start = min((m.sent_ns for m in sim.messages), default=0)
    values = []
    by_minute: dict[int, list[float]] = defaultdict(list)
    for request in sim.server.requests:
        if request.method != "POST" or request.route != MESSAGES:
            continue
        reference = (request.json or {}).get("message_reference") or {}
        message = sent.pop(int(reference.get("message_id") or 0), None)
        if message is not None:
            value = (request.received_ns - message.sent_ns) / 1e6
            values.append(value)
            by_minute[int((message.sent_ns - start) / 60e9)].append(value)
    if not values:
        return {}, []
    series = [
        f"{minute}:{percentile(found, 50):.0f}/{percentile(found, 99):.0f}"
        for minute, found in sorted(by_minute.items())
    ]
    summary = {"p50": percentile(values, 50), "p99": percentile(values, 99), "n": len(values)}
    return summary, series


def format_report(result: SoakResult) -> str:
    config = result.config
    reviewed = len(range(0, config.rooms, config.review_every))
    lines = [
        f"soak on {result.backend or 'the given database'}: {config.users} users, "
        f"{config.actors} actors, {config.rooms} rooms ({reviewed} in review), "
        f"{result.load_seconds / 60:.1f} min of load, think {config.think_s:.0f} s, "
        f"hold {config.hold_seconds:g} s then {config.on_timeout}",
        "",
        "counts:",
    ]
    width = max(len(label) for label, _ in result.counts)
    lines += [f"  {label:<{width}}  {value}" for label, value in result.counts]
    rss = result.rss_summary
    lines += [
        "",
        f"bot RSS: start (after {config.warmup_s:g} s warm-up) {rss['start']:.1f} MB, "
        f"end {rss['end']:.1f} MB, max {rss['max']:.1f} MB, slope {rss['slope']:+.2f} MB/min "
        f"({rss['samples']:.0f} samples every {config.sample_s:g} s)",
    ]
    if result.latency:
        lines.append(
            f"auto-room reply latency (disturbed by other load on this machine): "
            f"p50 {result.latency['p50']:.0f} ms, p99 {result.latency['p99']:.0f} ms "
            f"(n={result.latency['n']:.0f}); "
            f"{result.counts[0][1] / max(result.load_seconds, 1):.1f} user messages/s"
        )
    if result.latency_by_minute:
        lines.append(
            "auto-room reply latency by minute (min:p50/p99 ms): "
            + "  ".join(result.latency_by_minute)
        )
    if result.rss:
        marks = []
        for minute in range(int(result.rss[-1][0] // 60) + 1):
            at, value = min(result.rss, key=lambda point: abs(point[0] - minute * 60))
            marks.append(f"{at / 60:.0f}:{value:.1f}")
        lines.append("bot RSS by minute (min:MB): " + "  ".join(marks))
    lines += ["", "checks:"]
    for check in result.checks:
        verdict = "PASS" if check.ok else ("FAIL" if check.gate else "MISS")
        lines.append(f"  {check.name}: {check.detail}: {verdict}")
    if result.problems:
        lines += ["", "problems (first of each kind):"]
        lines += [f"  - {p}" for p in result.problems]
    lines += [
        "",
        f"bot log: {result.log_path}; RSS samples: {result.log_path.with_suffix('.rss.csv')}",
        "PASS" if result.passed else "FAIL",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = SoakConfig()
    parser.add_argument("--minutes", type=float, default=defaults.minutes)
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--actors", type=int, default=defaults.actors)
    parser.add_argument("--rooms", type=int, default=defaults.rooms)
    parser.add_argument("--review-every", type=int, default=defaults.review_every)
    parser.add_argument("--think", type=float, default=defaults.think_s, help="mean seconds")
    parser.add_argument("--hold-seconds", type=float, default=defaults.hold_seconds)
    parser.add_argument("--on-timeout", choices=["drop", "send"], default=defaults.on_timeout)
    parser.add_argument("--warmup", type=float, default=defaults.warmup_s, help="seconds")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--log", type=Path, default=Path("soak-bot.log"))
    args = parser.parse_args()
    config = SoakConfig(
        minutes=args.minutes,
        users=args.users,
        actors=args.actors,
        rooms=args.rooms,
        review_every=args.review_every,
        think_s=args.think,
        hold_seconds=args.hold_seconds,
        on_timeout=args.on_timeout,
        warmup_s=args.warmup,
        seed=args.seed,
    )

    async def go() -> SoakResult:
        async with scratch_database(args.backend) as url:
            return await run_soak(config, url, args.log.resolve(), args.backend)

    result = asyncio.run(go())
    print(format_report(result))
    verdicts = Verdicts()
    for check in result.checks:
        if check.gate:
            verdicts.check(check.ok, f"{check.name}: {check.detail}")
    verdicts.exit()


if __name__ == "__main__":
    main()
