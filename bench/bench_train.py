"""``greenroom train`` on the bundled SmolLM2-135M: seconds per DPO step, peak memory, and
whether a consistently chosen persona trait moves held-out preference accuracy.

The synthetic but honest case: Marlowe's card says "Short sentences, mostly under ten words.
Dry understatement. No exclamation marks." Conversations of ``--turns`` user messages each are
run through the real engine (the bundled card, its example dialogue and the history window in
every stored prompt, as the bot stores them), the model's reply being an out-of-voice line (a
cheer, then two sentences exclaimed), and an actor rewrites each reply into an in-voice line
saying the same two things at about the same length (the two sentences, flat, and a dry
closer). The replies are built from 15 x 15 short sentences drawn without replacement, so
held-out pairs say other things than the training pairs; only the voice is consistent. The
lengths match on purpose: a margin of summed log-likelihoods favours the shorter reply, so a
long out-of-voice reply loses to a short one before any training (``bench/RESULTS.md``).
The real export writes ``trl-dpo`` records split by conversation (``--split``); ``greenroom
train`` (a subprocess, as a trainer runs it; the base is rebuilt first, outside the timed
process) trains a DPO adapter on the training split, and ``eval preferences`` scores the
held-out split, base against adapter.

Targets: at most 10 s a DPO step (batch 2) at the data's length on 2 threads (so 200 pairs
times 3 epochs train in under an hour here), peak RSS of the training process under 4 GiB.
Correctness (exit 1): every pair is exported, train and test cover them all, the training run
uses every training pair, and the evaluation scores every held-out pair.

    .venv/bin/python bench/bench_train.py [--conversations 40] [--turns 2] [--epochs 2]
        [--lr LR] [--threads 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Verdicts
from bot.engine import ConversationEngine, IncomingMessage, Reply
from bot.llm import FakeChatModel
from bot.llm.local import bundled_gguf_path
from feedback.corrections import Actor, CorrectionStore
from feedback.database import create_engine, migrate, session_factory
from feedback.exports import ExportFilter, export_to_file, split_paths
from feedback.privacy import PrivacyStore
from feedback.store import ConversationStore
from personas import PersonaRegistry
from training.base import resolve_base

TARGET_STEP_S = 10.0
TARGET_RSS_MIB = 4096
SECRET = b"bench-train"
GREENROOM = str(Path(sys.executable).with_name("greenroom"))

_SUBJECTS = [
    "The rain",
    "Dot's coffee",
    "The client",
    "My landlord",
    "The phone",
    "The city",
    "A tail",
    "The cop on Alder",
    "My hat",
    "The night shift",
    "The diner",
    "Your brother",
    "The file",
    "Room 3",
    "The neon sign",
]
_PREDICATES = [
    "kept me up all night",
    "was late again",
    "smelled like trouble",
    "came back with a bill",
    "never rang twice",
    "looks tired tonight",
    "followed me to the joint",
    "knows more than he says",
    "has seen better days",
    "started at ten sharp",
    "ran out of pie",
    "owes me forty dollars",
    "was thinner than promised",
    "had nothing worth mentioning",
    "buzzed until dawn",
]
_CLOSERS = ["Nothing new.", "Same as always.", "Could be worse.", "That's the night.", "Figures."]
_CHEERS = ["Oh wow!", "Guess what!", "Big news!", "Hooray!", "Oh my!"]
_USER_LINES = [
    "How was your night?",
    "Any news on the case?",
    "What's new at the office?",
    "Tell me something about your day.",
    "Did anything happen on Alder Street?",
    "What did you see out there?",
    "Anything I should know?",
    "How are things at the diner?",
    "Quiet night?",
    "What's the word on the street?",
]


def _replies(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """``(out of voice, in voice)`` pairs saying the same two things at about the same length
    (summed log-likelihoods favour shorter replies), no sentence reused: in voice, the two
    sentences and a dry closer; out of voice, a cheer and the two sentences exclaimed."""
    sentences = [f"{s} {p}." for s in _SUBJECTS for p in _PREDICATES]
    rng.shuffle(sentences)
    if 2 * count > len(sentences):
        raise SystemExit(f"at most {len(sentences) // 2} replies; lower --conversations/--turns")
    pairs = []
    for index in range(count):
        first, second = sentences[2 * index], sentences[2 * index + 1]
        in_voice = f"{first} {second} {rng.choice(_CLOSERS)}"
        cheer = f"{rng.choice(_CHEERS)} {first[:-1]}! {second[:-1]}!"
        pairs.append((cheer, in_voice))
    return pairs


async def _build(folder: Path, conversations: int, turns: int, seed: int) -> dict[str, Any]:
    """Run the conversations through the engine, rewrite every reply, export with a split."""
    rng = random.Random(seed)
    replies = _replies(rng, conversations * turns)
    engine_db = create_engine(f"sqlite+aiosqlite:///{folder / 'greenroom.sqlite3'}")
    await migrate(engine_db)
    sessions = session_factory(engine_db)
    store = ConversationStore(sessions)
    corrections = CorrectionStore(sessions)
    engine = ConversationEngine(
        personas=PersonaRegistry.load([]),
        store=store,
        model=FakeChatModel(replies=[gush for gush, _ in replies]),
    )
    actor = Actor("terminal:actor", "Actor")
    rewritten = 0
    for conversation in range(conversations):
        user = f"terminal:user{conversation}"
        await PrivacyStore(sessions).set_consent(user, True)
        for turn in range(turns):
            reply = await engine.respond(
                IncomingMessage(
                    transport="terminal",
                    scope=f"user{conversation}",
                    user_id=user,
                    user_name=f"user{conversation}",
                    text=rng.choice(_USER_LINES),
                    persona="Marlowe",
                )
            )
            assert isinstance(reply, Reply)
            _, in_voice = replies[conversation * turns + turn]
            outcome = await corrections.rewrite(
                reply.candidate_id, actor=actor, text=in_voice, key=f"r{conversation}-{turn}"
            )
            rewritten += outcome.status == "done"
    out = folder / "dpo.jsonl"
    split = {"train": 0.7, "test": 0.3}
    counts = await export_to_file(
        sessions,
        "trl-dpo",
        ExportFilter(),
        out,
        split=split,
        seed=seed,
        pseudonym_secret=SECRET,
        progress=None,
    )
    await engine_db.dispose()
    paths = split_paths(out, split)
    named = {name: str(path) for name, path in paths.items()}
    return {"rewritten": rewritten, "counts": counts, "paths": named}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a greenroom command at low priority; its progress bars go to standard error."""
    done = subprocess.run(
        ["nice", GREENROOM, *args], stdout=subprocess.PIPE, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"greenroom {args[0]} failed (exit {done.returncode})")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=40)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="Keep the files in DIR.")
    args = parser.parse_args()
    verdicts = Verdicts()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-train-"))
    folder.mkdir(parents=True, exist_ok=True)
    pairs = args.conversations * args.turns

    built = asyncio.run(_build(folder, args.conversations, args.turns, args.seed))
    counts = built["counts"]
    print(f"pairs built: {pairs}; exported: train {counts['train']}, test {counts['test']}")
    verdicts.check(built["rewritten"] == pairs, f"{built['rewritten']} of {pairs} rewrites")
    verdicts.check(counts["train"] + counts["test"] == pairs, f"export counts {counts}")

    data_dir = folder / "data"
    base = resolve_base(None, bundled=bundled_gguf_path(), cache_dir=data_dir / "models")
    print(f"base: {base.folder}")
    env = {
        **os.environ,
        "GREENROOM_DATA_DIR": str(data_dir),
        "GREENROOM_CONFIG": str(folder / "absent.toml"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(args.threads),
    }
    adapter = folder / "adapter"
    train_args = ["train", "--method", "dpo", "--data", built["paths"]["train"]]
    train_args += ["--out", str(adapter), "--epochs", str(args.epochs)]
    if args.lr is not None:
        train_args += ["--lr", str(args.lr)]
    print(_run(train_args, env).stdout.strip())
    summary = json.loads((adapter / "training_summary.json").read_text())
    data = summary["data"]
    print(
        f"training: {summary['steps']} steps, lr {summary['options']['learning_rate']:g}, "
        f"records {data['records_used']}, tokens max {data['max_length']} "
        f"mean {data['mean_length']:.0f}, loss first {summary['losses'][0]['loss']:.4f} "
        f"last {summary['losses'][-1]['loss']:.4f}"
    )
    verdicts.check(data["records_used"] == counts["train"], f"trained on {data['records_used']}")
    verdicts.target(
        "DPO step, batch 2, LoRA r16, SmolLM2-135M f32",
        f"{summary['seconds_per_step']:.2f} s at {data['max_length']} tokens max",
        f"<= {TARGET_STEP_S:g} s",
        summary["seconds_per_step"] <= TARGET_STEP_S,
    )
    print(f"CPU seconds a step (all threads): {summary['cpu_seconds_per_step']:.2f}")
    verdicts.target(
        "peak RSS of the training process",
        f"{summary['peak_rss_mib']:.0f} MiB",
        f"< {TARGET_RSS_MIB} MiB",
        summary["peak_rss_mib"] < TARGET_RSS_MIB,
    )

    eval_args = ["eval", "preferences", "--data", built["paths"]["test"]]
    evaluated = _run([*eval_args, "--adapter", str(adapter), "--json"], env)
    result = json.loads(evaluated.stdout)
    before, after = result["base"], result["with_adapter"]
    verdicts.check(after["pairs"] == counts["test"], f"scored {after['pairs']} held-out pairs")
    for label, score in (("before (base)", before), ("after (adapter)", after)):
        print(
            f"held-out preference accuracy {label}: {score['accuracy']:.1%} "
            f"({score['chosen_preferred']}/{score['pairs']}), mean margin "
            f"{score['mean_margin']:+.2f}, median {score['median_margin']:+.2f}"
        )
    print(f"pairs changed: {result['pairs_changed']}")
    held_out = [json.loads(line) for line in Path(built["paths"]["test"]).read_text().splitlines()]
    chosen = sum(len(r["chosen"][0]["content"]) for r in held_out) / len(held_out)
    rejected = sum(len(r["rejected"][0]["content"]) for r in held_out) / len(held_out)
    print(f"held-out reply length, characters: chosen {chosen:.0f}, rejected {rejected:.0f}")
    print(f"files: {folder}")
    verdicts.exit()


if __name__ == "__main__":
    main()
