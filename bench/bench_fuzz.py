"""The hostile-input fuzz at length: the CI strategies with many more examples.

1. The engine (``tests/test_fuzz_engine.py``): hostile text, over-long, blank and invisible
   messages through ``ConversationEngine.respond`` with a real memory store holding another
   user's secret; then hostile display names.
2. The gateway (``tests/test_fuzz_gateway.py``): the real bot on the loopback Discord server,
   hostile MESSAGE_CREATE contents, then malformed INTERACTION_CREATE payloads; every example
   ends with a liveness check and the no-ping / no-leak / known-notice / database invariants.

Prints, per section, the examples run (shrinking re-runs included), the distinct failures
Hypothesis found (each with its first line) and the wall time. Issue 7 sets no timing target;
its target is correctness: a section where Hypothesis finds a failure prints FAIL and the run
exits 1.

    .venv/bin/python bench/bench_fuzz.py [--engine 2000] [--gateway 500] [--seed 0] [--trace]
        [--only engine,message,interaction]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, seed, settings

from bench.common import Verdicts, scratch_database
from bot.engine import ConversationEngine, EngineLimits
from bot.llm import FakeChatModel
from feedback.database import create_engine, migrate, session_factory
from feedback.store import ConversationStore
from memory import HashingEmbedder, MemoryService
from personas import PersonaRegistry
from tests import test_fuzz_engine as engine_fuzz
from tests.test_fuzz_gateway import fuzz_world, hostile_interactions, hostile_messages

if TYPE_CHECKING:
    from collections.abc import Callable


def _config(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        print_blob=False,
    )


def _run(
    name: str,
    test: Callable[[], None],
    count: Callable[[], int],
    seed_value: int,
    verdicts: Verdicts,
) -> None:
    """Run one Hypothesis test; print examples run, failures found and time; a failure found
    fails ``verdicts``."""
    started = time.perf_counter()
    failures: list[BaseException] = []
    try:
        seed(seed_value)(test)()
    except BaseExceptionGroup as group:
        failures = list(group.exceptions)
    except Exception as error:
        failures = [error]
    elapsed = time.perf_counter() - started
    print(f"{name}: {count()} examples run, {len(failures)} failures found, {elapsed:.1f} s")
    for failure in failures:
        first = (str(failure).strip().splitlines() or [type(failure).__name__])[0]
        print(f"  - {type(failure).__name__}: {first[:300]}")
    sys.stdout.flush()
    verdicts.check(not failures, f"{name}: Hypothesis found {len(failures)} failures")


async def _engine_world(
    url: str, folder: Path
) -> tuple[ConversationEngine, ConversationStore, MemoryService, Any]:
    db = create_engine(url)
    await migrate(db)
    store = ConversationStore(session_factory(db))
    memory = MemoryService.open(path=folder / "chroma", embedder=HashingEmbedder())
    await memory.pin(
        persona="Marlowe", user_id="fuzz:2", text=engine_fuzz.OTHER_USERS_SECRET, source="user"
    )
    engine = ConversationEngine(
        personas=PersonaRegistry.load(),
        store=store,
        model=FakeChatModel(max_tokens=2000),
        memory=memory,
        limits=EngineLimits(max_message_chars=2000),
    )
    return engine, store, memory, db


def bench_engine(examples: int, seed_value: int, verdicts: Verdicts) -> None:
    """The engine fuzz."""
    loop = asyncio.new_event_loop()
    database = scratch_database("sqlite")
    with tempfile.TemporaryDirectory() as folder:
        url = loop.run_until_complete(database.__aenter__())
        engine, store, memory, db = loop.run_until_complete(_engine_world(url, Path(folder)))
        calls = [0]
        respond = engine.respond

        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            return await respond(*args, **kwargs)

        engine.respond = counted  # type: ignore[method-assign]
        try:
            test = engine_fuzz.hostile_text_run(engine, store, loop, _config(examples))
            _run("engine, hostile text", test, lambda: calls[0], seed_value, verdicts)
            calls[0] = 0
            names = _display_name_run(engine, store, loop, _config(max(examples // 10, 50)))
            _run("engine, hostile display names", names, lambda: calls[0], seed_value, verdicts)
        finally:
            memory.close()
            loop.run_until_complete(db.dispose())
            loop.run_until_complete(database.__aexit__(None, None, None))
            loop.close()


def _display_name_run(
    engine: ConversationEngine,
    store: ConversationStore,
    loop: asyncio.AbstractEventLoop,
    config: settings,
) -> Callable[[], None]:
    """The display-name fuzz of ``test_hostile_display_names_never_inject``, same assertions."""
    from hypothesis import given
    from hypothesis import strategies as st

    from bot.engine import IncomingMessage, Reply

    @config
    @given(name=engine_fuzz.HOSTILE_NAMES, scope=st.sampled_from(["dm:1", "channel:1"]))
    def run(name: str, scope: str) -> None:
        incoming = IncomingMessage(
            transport="fuzz-names",
            scope=scope,
            user_id="fuzz:1",
            user_name=name,
            text="hello",
            persona="Marlowe",
        )
        result = loop.run_until_complete(engine.respond(incoming))
        assert isinstance(result, Reply)
        node = loop.run_until_complete(store.get_node(result.candidate_id))
        messages = loop.run_until_complete(store.get_snapshot(node.prompt_snapshot_id)).messages
        assert sum(m["role"] == "system" for m in messages) == 1
        for message in messages:
            for marker in ("<|im_start|>", "<|im_end|>", "[INST]", "\u202e"):
                assert marker not in message["content"], f"{marker!r} from the name {name!r}"
            assert "\nsystem:" not in message["content"].lower()

    return run


def bench_gateway(
    examples: int, seed_value: int, trace: bool, kinds: set[str], verdicts: Verdicts
) -> None:
    """The gateway fuzz on one world per kind."""
    for name, build in (
        ("gateway, MESSAGE_CREATE", hostile_messages),
        ("gateway, INTERACTION_CREATE", hostile_interactions),
    ):
        if name.split()[-1].split("_")[0].lower() not in kinds:
            continue
        with tempfile.TemporaryDirectory() as folder, fuzz_world(Path(folder)) as harness:
            if trace:
                harness.trace = lambda case: print(f"    {case[:200]}", flush=True)
            test = build(harness, _config(examples))
            _run(name, test, lambda: harness.examples, seed_value, verdicts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", type=int, default=2000, help="engine examples")
    parser.add_argument("--gateway", type=int, default=500, help="gateway examples per kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", action="store_true", help="print each gateway case")
    parser.add_argument(
        "--only",
        default="engine,message,interaction",
        help="comma-separated sections to run (engine, message, interaction)",
    )
    args = parser.parse_args()
    sections = set(args.only.split(","))
    logging.basicConfig(level=logging.ERROR, handlers=[logging.NullHandler()])  # counted, quiet
    started = time.perf_counter()
    verdicts = Verdicts()
    if "engine" in sections:
        bench_engine(args.engine, args.seed, verdicts)
    bench_gateway(args.gateway, args.seed, args.trace, sections, verdicts)
    print(f"total: {time.perf_counter() - started:.0f} s")
    verdicts.exit()


if __name__ == "__main__":
    main()
