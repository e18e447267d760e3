"""The stability harness: seeded conversations through the real engine, probed in side branches.

In the spirit of Li et al. (2024, "Measuring and controlling persona drift"): a simulated user
talks with the persona, and every ``every`` turns (and before the first) a probe asks
something the card settles; code scores the answer (:mod:`bot.evaluation.scoring`).

The harness is a user of the engine, not a copy of it. Each user line goes through
:meth:`ConversationEngine.respond` and the decision service, as the terminal's do (no actor:
nothing is held, an urgent reply becomes the safety line), so history, memory and the prompt
layout are what a user gets. Probes go through :meth:`ConversationEngine.answer_aside`: the
same prompt and checks, but nothing is stored or remembered and the history window does not
move, so a probe never becomes part of the conversation it measures (Li et al. likewise ask
each probe in a side branch). Without that, every probe answer would sit in the history the
next turns see and teach the persona its own test.

At each probe point one probe of each kind is asked, taking turns through the kind's probes
from an offset the seed picks per conversation.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

from bot.engine import Aside, IncomingMessage, Refusal, Reply
from bot.llm import describe_model
from personas.probes import PROBE_KINDS

from .openings import OPENINGS, USER_NAMES
from .records import ConversationRecord, ProbeRecord, RunResult, TurnRecord
from .scoring import score_answer
from .simulated_user import SimulatedUser, UserLine
from .workspace import TRANSPORT, open_workspace

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from langchain_core.language_models import BaseChatModel

    from bot.engine import ConversationEngine
    from bot.settings import Settings
    from memory import Embedder
    from personas import CharacterCard
    from personas.probes import Probe, ProbeSet

    from .records import StabilityConfig
    from .workspace import Workspace

__all__ = ["play", "run_stability"]

_log = logging.getLogger(__name__)


def _conversation_plan(
    config: StabilityConfig, index: int, probes: ProbeSet
) -> tuple[int, str, dict[str, int]]:
    """Which opening, which user name, and each probe kind's starting offset, from the seed."""
    order = list(range(len(OPENINGS)))
    random.Random(f"openings:{config.seed}").shuffle(order)
    rng = random.Random(f"conversation:{config.seed}:{index}")
    offsets = {kind: rng.randrange(max(1, len(probes.of_kind(kind)))) for kind in PROBE_KINDS}
    return order[index % len(order)], USER_NAMES[index % len(USER_NAMES)], offsets


async def run_stability(
    settings: Settings,
    folder: Path,
    *,
    persona: str,
    config: StabilityConfig,
    model: BaseChatModel,
    user_model: BaseChatModel | None,
    embedder: Embedder | None,
    probes: ProbeSet,
    card: CharacterCard | None = None,
    replay: Sequence[Sequence[str]] | None = None,
    label: str = "a",
    on_turn: Callable[[], None] | None = None,
) -> RunResult:
    """One run on a throwaway runtime in ``folder`` (see :func:`open_workspace`): ``model``
    plays the persona (``card``, if given, replaces its installed card), ``user_model`` the
    user, unless ``replay`` gives the user's lines per conversation (a side-by-side run).
    ``on_turn`` is called after every exchange (progress)."""
    async with open_workspace(
        settings, folder, persona=persona, model=model, embedder=embedder, card=card
    ) as workspace:
        return await play(
            workspace,
            config=config,
            probes=probes,
            user_model=user_model,
            replay=replay,
            label=label,
            on_turn=on_turn,
        )


async def play(
    workspace: Workspace,
    *,
    config: StabilityConfig,
    probes: ProbeSet,
    user_model: BaseChatModel | None,
    replay: Sequence[Sequence[str]] | None = None,
    label: str = "a",
    on_turn: Callable[[], None] | None = None,
) -> RunResult:
    """Play every conversation of ``config`` in ``workspace``, one after another."""
    if replay is None and user_model is None:
        raise ValueError("a run needs a user model, or the user's lines to replay")
    if replay is not None and (
        len(replay) < config.conversations
        or any(len(lines) < config.turns for lines in replay[: config.conversations])
    ):
        raise ValueError("the replayed run is shorter than this one; use the same turns")
    engine = workspace.runtime.engine
    persona = workspace.persona
    name, params = describe_model(engine.model)
    result = RunResult(
        label=label,
        persona=persona.name,
        persona_version=persona.version_hash,
        card_version=persona.card.data.character_version or "",
        model={"name": name, **params},
        user_model=None if replay is not None or user_model is None else _described(user_model),
        config=config,
        probes=probes,
        memory=engine.memory is not None,
    )
    started = time.perf_counter()
    for index in range(config.conversations):
        lines = replay[index] if replay is not None else None
        record = await _conversation(workspace, result, index, probes, user_model, lines, on_turn)
        result.conversations.append(record)
    result.seconds = time.perf_counter() - started
    return result


def _described(model: BaseChatModel) -> dict[str, object]:
    name, params = describe_model(model)
    return {"name": name, **params}


async def _conversation(
    workspace: Workspace,
    result: RunResult,
    index: int,
    probes: ProbeSet,
    user_model: BaseChatModel | None,
    replay: Sequence[str] | None,
    on_turn: Callable[[], None] | None,
) -> ConversationRecord:
    config = result.config
    engine, decisions = workspace.runtime.engine, workspace.runtime.decisions
    persona = workspace.persona
    opening, user_name, offsets = _conversation_plan(config, index, probes)
    record = ConversationRecord(index=index, user_name=user_name, opening=opening)
    scope = f"conversation-{index}"
    user_id = f"{TRANSPORT}:user-{index}"
    simulated = (
        SimulatedUser(
            user_model,
            persona=persona,
            user_name=user_name,
            opening=OPENINGS[opening],
            rng=random.Random(f"user:{config.seed}:{index}"),
            timeout_s=engine.limits.timeout_s,
        )
        if user_model is not None and replay is None
        else None
    )
    transcript: list[tuple[str, str]] = []

    def incoming(text: str, external_id: str | None) -> IncomingMessage:
        return IncomingMessage(
            transport=TRANSPORT,
            scope=scope,
            user_id=user_id,
            user_name=user_name,
            text=text,
            persona=persona.name,
            external_id=external_id,
        )

    for depth in range(config.turns + 1):
        if depth % config.every == 0:
            point = depth // config.every
            for kind in PROBE_KINDS:
                pool = probes.of_kind(kind)
                if pool:
                    probe = pool[(point + offsets[kind]) % len(pool)]
                    clock = time.perf_counter()
                    asked = await _ask(engine, probe, incoming(probe.ask, None), depth)
                    result.probe_s += time.perf_counter() - clock
                    record.probes.append(asked)
        if depth == config.turns:
            break
        clock = time.perf_counter()
        if replay is not None:
            line = UserLine(replay[depth], "replay")
        else:
            assert simulated is not None
            line = await simulated.next_line(transcript)
        result.user_s += time.perf_counter() - clock
        clock = time.perf_counter()
        answered = await engine.respond(incoming(line.text, f"{scope}:{depth}"))
        if isinstance(answered, Reply):
            await decisions.present(answered, hold=False)
            received = workspace.outlet.take(scope)
            fallback, flags = answered.fallback, answered.flags
        elif isinstance(answered, Refusal):
            received, fallback, flags = answered.notice, False, []
        else:  # a fresh conversation is never taken over and never sees a message twice
            raise RuntimeError(f"the engine did not answer turn {depth}: {answered!r}")
        seconds = time.perf_counter() - clock
        result.persona_s += seconds
        transcript += [("user", line.text), ("persona", received)]
        record.turns.append(
            TurnRecord(depth + 1, line.text, line.source, received, fallback, flags, seconds)
        )
        if on_turn is not None:
            on_turn()
    return record


async def _ask(
    engine: ConversationEngine, probe: Probe, message: IncomingMessage, depth: int
) -> ProbeRecord:
    """Ask ``probe`` in a side branch of the conversation and score the answer."""
    clock = time.perf_counter()
    aside = await engine.answer_aside(message)
    seconds = time.perf_counter() - clock
    if isinstance(aside, Aside):
        verdict = score_answer(probe, aside.text, flags=aside.flags, fallback=aside.fallback)
        answer, flags, fallback = aside.text, aside.flags, aside.fallback
        passed, failures = verdict.passed, list(verdict.failures)
    else:
        answer, flags, fallback = "", [], False
        passed, failures = False, [f"the engine did not answer the probe: {aside!r}"]
    return ProbeRecord(
        depth=depth,
        kind=probe.kind,
        probe=probe.label,
        source=probe.source,
        ask=probe.ask,
        answer=answer,
        passed=passed,
        failures=failures,
        flags=flags,
        fallback=fallback,
        seconds=seconds,
    )
