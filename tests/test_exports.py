"""Training-data exports on SQLite and PostgreSQL: tree reading, pairs, consent, filters, splits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import update

from feedback.corrections import CorrectionStore
from feedback.exports import (
    FORMATS,
    ExportError,
    ExportFilter,
    dry_run_counts,
    export_to_file,
    iter_records,
    iter_turn_trees,
    progress_total,
    record_to_jsonl,
)
from feedback.exports import tree as tree_module
from feedback.models import ChannelSetting, GuildSetting, MessageNode, UserPrivacy
from feedback.redact import pseudonym
from tests.factories import ALICE_ACTOR, BOB_ACTOR, Turn, add_turn, snapshot_for

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from feedback.exports import TurnTree
    from feedback.store import ConversationStore

SECRET = b"test-secret"


@dataclass(frozen=True)
class Scenario:
    """Ids of the turns built by :func:`build_scenario`."""

    rewritten: Turn
    rewrite_id: int
    regenerated: Turn
    regenerated_new_id: int
    rated: Turn
    rated_pair: Turn
    rated_pair_new_id: int
    unreviewed: Turn
    low: Turn


@pytest.fixture
def sessions(store: ConversationStore) -> async_sessionmaker[AsyncSession]:
    return store._sessions


@pytest.fixture
def corrections(sessions: async_sessionmaker[AsyncSession]) -> CorrectionStore:
    return CorrectionStore(sessions)


async def set_consent(
    sessions: async_sessionmaker[AsyncSession], user_id: str, consent: bool | None
) -> None:
    async with sessions() as session:
        session.add(UserPrivacy(user_id=user_id, consent=consent))
        await session.commit()


async def _regenerate(corrections: CorrectionStore, turn: Turn, text: str, key: str) -> int:
    outcome = await corrections.regenerate(
        turn.candidate_id,
        actor=ALICE_ACTOR,
        text=text,
        snapshot=snapshot_for("Marlowe", [{"role": "user", "content": "again"}]),
        flags=[],
        hold_until=datetime.now(UTC) + timedelta(minutes=5),
        key=key,
    )
    assert outcome.status == "done" and outcome.result_id is not None
    return outcome.result_id


async def build_scenario(
    store: ConversationStore, corrections: CorrectionStore, *, user_id: str = "discord:1"
) -> Scenario:
    """Six turns in one DM: rewrite, regenerate+approve, rated, rated pair, unreviewed, low."""
    await set_consent(store._sessions, user_id, True)
    rewritten = await add_turn(
        store, user_id=user_id, state="held", text="mail me at ann@example.com", reply="Evening."
    )
    rewrite = await corrections.rewrite(
        rewritten.candidate_id, actor=ALICE_ACTOR, text="Evening, ann. Call <@1234>.", key="r1"
    )
    assert rewrite.result_id is not None
    await store.mark_sent(rewrite.result_id, "m1")

    regenerated = await add_turn(
        store, user_id=user_id, state="held", text="tell me a story", reply="No."
    )
    new_id = await _regenerate(corrections, regenerated, "Once, in the rain...", "g1")
    await corrections.approve(new_id, actor=BOB_ACTOR, key="a1")
    await store.mark_sent(new_id, "m2")

    rated = await add_turn(store, user_id=user_id, state="sent", text="who are you", reply="Me.")
    await corrections.rate(
        rated.candidate_id, actor=ALICE_ACTOR, rating=5, tags=["in-character"], key="t1"
    )
    await corrections.rate(rated.candidate_id, actor=BOB_ACTOR, rating=4, tags=["funny"], key="t2")

    rated_pair = await add_turn(store, user_id=user_id, state="held", text="why", reply="Because.")
    await corrections.rate(rated_pair.candidate_id, actor=BOB_ACTOR, rating=2, key="t3")
    pair_new = await _regenerate(corrections, rated_pair, "Because the city lies.", "g2")
    await corrections.rate(pair_new, actor=BOB_ACTOR, rating=4, key="t4")
    await corrections.approve(pair_new, actor=ALICE_ACTOR, key="a2")
    await store.mark_sent(pair_new, "m4")

    unreviewed = await add_turn(store, user_id=user_id, state="sent", text="ok", reply="Sure.")
    low = await add_turn(store, user_id=user_id, state="sent", text="bye", reply="Whatever.")
    await corrections.rate(low.candidate_id, actor=ALICE_ACTOR, rating=1, key="t5")
    return Scenario(
        rewritten,
        rewrite.result_id,
        regenerated,
        new_id,
        rated,
        rated_pair,
        pair_new,
        unreviewed,
        low,
    )


async def _trees(sessions: async_sessionmaker[AsyncSession], **filters: Any) -> list[TurnTree]:
    trees: list[TurnTree] = []
    async for page in iter_turn_trees(sessions, ExportFilter(**filters), batch_size=2):
        trees.extend(page)
    return trees


async def _records(
    sessions: async_sessionmaker[AsyncSession], fmt: str, **filters: Any
) -> list[tuple[int, dict[str, Any]]]:
    return [
        item
        async for item in iter_records(
            sessions, fmt, ExportFilter(**filters), pseudonym_secret=SECRET
        )
    ]


# -- the tree -------------------------------------------------------------------------------


async def test_tree_reading_keeps_siblings_sent_and_labels(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    scenario = await build_scenario(store, corrections)
    trees = {tree.user_turn_id: tree for tree in await _trees(store._sessions)}
    assert list(trees) == sorted(trees) and len(trees) == 6

    rewritten = trees[scenario.rewritten.user_turn_id]
    assert [node.origin for node in rewritten.replies] == ["model", "rewrite"]
    original, rewrite = rewritten.replies
    assert original.state == "rejected" and original.rejected_by == ALICE_ACTOR.id
    assert rewrite.rewrite_of == original.id and rewrite.is_final
    assert rewritten.final is rewrite
    assert rewrite.snapshot_id == original.snapshot_id is not None

    regenerated = trees[scenario.regenerated.user_turn_id]
    old, new = regenerated.replies
    assert old.replaced_by == new.id and new.approved_by == [BOB_ACTOR.id]
    assert old.snapshot_id != new.snapshot_id and regenerated.final is new

    rated = trees[scenario.rated.user_turn_id].replies[0]
    assert rated.mean_rating == 4.5 and rated.tag_counts == {"in-character": 1, "funny": 1}
    assert trees[scenario.unreviewed.user_turn_id].reviewed is False
    snapshot = trees[scenario.rated.user_turn_id].snapshot_for(rated)
    assert snapshot is not None and snapshot.messages[-1] == {
        "role": "user",
        "content": "who are you",
    }


async def test_paging_resumes_after_a_key(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    await build_scenario(store, corrections)
    everything = await _records(store._sessions, "trl-kto")
    keys = [key for key, _ in everything]
    assert keys == sorted(keys)
    first_key = keys[0]
    rest = [
        item
        async for item in iter_records(
            store._sessions, "trl-kto", ExportFilter(), pseudonym_secret=SECRET, after_id=first_key
        )
    ]
    assert rest == [item for item in everything if item[0] > first_key]


# -- what each format holds ------------------------------------------------------------------


async def test_sft_takes_endorsed_sent_replies_only(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    await build_scenario(store, corrections)
    replies = [
        record["messages"][-1]["content"]
        for _, record in await _records(store._sessions, "openai-sft")
    ]
    # rewrite, approved regeneration, rated 4.5, approved and rated 4; not unreviewed or rated 1
    assert replies == [
        "Evening, name_" + pseudonym("ann", SECRET, prefix="name")[5:] + ". Call [mention].",
        "Once, in the rain...",
        "Me.",
        "Because the city lies.",
    ]
    _, first = (await _records(store._sessions, "trl-sft"))[0]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["messages"][1]["content"] == "mail me at [email]"


async def test_dpo_pairs_from_rewrite_regenerate_and_ratings(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    scenario = await build_scenario(store, corrections)
    pairs = [
        (key, record["chosen"][0]["content"], record["rejected"][0]["content"])
        for key, record in await _records(store._sessions, "trl-dpo")
    ]
    assert [(key, rejected) for key, _, rejected in pairs] == [
        (scenario.rewritten.user_turn_id, "Evening."),
        (scenario.regenerated.user_turn_id, "No."),
        (scenario.rated_pair.user_turn_id, "Because."),  # once, though also ordered by ratings
    ]
    assert pairs[1][1] == "Once, in the rain..."
    openai = [record for _, record in await _records(store._sessions, "openai-dpo")]
    assert openai[0]["non_preferred_output"] == [{"role": "assistant", "content": "Evening."}]
    assert openai[0]["input"]["messages"][-1]["role"] == "user"


async def test_rating_pairs_among_siblings(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    await set_consent(store._sessions, "discord:1", True)
    turn = await add_turn(store, state="held", reply="First.")
    second = await _regenerate(corrections, turn, "Second.", "g")
    await corrections.rate(turn.candidate_id, actor=ALICE_ACTOR, rating=3, key="1")
    await corrections.rate(second, actor=ALICE_ACTOR, rating=5, key="2")
    await corrections.rate(second, actor=BOB_ACTOR, rating=4, key="3")
    # second is not approved: no "pick" pair, but ratings order the two siblings
    pairs = [
        (r["chosen"][0]["content"], r["rejected"][0]["content"])
        for _, r in await _records(store._sessions, "trl-dpo")
    ]
    assert pairs == [("Second.", "First.")]
    assert await _records(store._sessions, "trl-dpo", min_rating=5) == []


async def test_kto_labels(store: ConversationStore, corrections: CorrectionStore) -> None:
    await build_scenario(store, corrections)
    labelled = [
        (record["completion"][0]["content"], record["label"])
        for _, record in await _records(store._sessions, "trl-kto")
    ]
    assert ("Evening.", False) in labelled and ("No.", False) in labelled
    assert ("Me.", True) in labelled and ("Whatever.", False) in labelled
    assert ("Because.", False) in labelled and ("Because the city lies.", True) in labelled
    assert all(text != "Sure." for text, _ in labelled)  # unreviewed: no verdict


async def test_oasst_trees_rank_label_and_pseudonymise(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    scenario = await build_scenario(store, corrections)
    trees = {key: record for key, record in await _records(store._sessions, "oasst")}
    assert scenario.unreviewed.user_turn_id not in trees
    tree = trees[scenario.rewritten.user_turn_id]
    assert tree["system"] == "You are Marlowe." and tree["persona"] == "Marlowe"
    prompt = tree["prompt"]
    assert prompt["role"] == "prompter" and prompt["user_id"] == pseudonym("discord:1", SECRET)
    by_origin = {reply["origin"]: reply for reply in prompt["replies"]}
    assert by_origin["rewrite"]["rank"] == 0 and by_origin["rewrite"]["sent"] is True
    assert by_origin["rewrite"]["user_id"] == pseudonym(ALICE_ACTOR.id, SECRET, prefix="actor")
    assert by_origin["model"]["rank"] == 1 and by_origin["model"]["synthetic"] is True
    assert by_origin["model"]["model_name"] == "fake"

    rated = trees[scenario.rated.user_turn_id]["prompt"]
    # the context is a chain ending at the user turn, which holds the replies
    depth = 0
    while rated["message_id"] != f"gr-{scenario.rated.user_turn_id}":
        [rated] = rated["replies"]
        depth += 1
    assert depth == 4 and rated["text"] == "who are you"
    labels = rated["replies"][0]["labels"]
    assert labels["quality"] == {"value": 0.875, "count": 2}
    assert labels["in-character"] == {"value": 0.5, "count": 2}
    # The times are the clock's digits, which may hold "9001" by chance (a CI run's did): the
    # search for leaked ids leaves their values out.
    text = re.sub(r'"created_date": "[^"]*"', '"created_date": ""', json.dumps(trees))
    assert "discord:" not in text and "9001" not in text and "ann@example.com" not in text


# -- privacy ---------------------------------------------------------------------------------


async def _bind_channel(
    sessions: async_sessionmaker[AsyncSession], channel: str, guild: str, default: bool
) -> None:
    async with sessions() as session:
        session.add(
            ChannelSetting(channel_key=f"discord:{channel}", guild_key=guild, updated_by="t")
        )
        session.add(GuildSetting(guild_key=guild, consent_default=default, updated_by="t"))
        await session.commit()


async def _approved_turn(
    store: ConversationStore, corrections: CorrectionStore, *, user_id: str, scope: str, key: str
) -> Turn:
    guild = {"channel:100": "discord:g-yes", "channel:200": "discord:g-no"}.get(scope)
    turn = await add_turn(
        store, user_id=user_id, scope=scope, state="held", reply=f"to {user_id}", guild_key=guild
    )
    await corrections.approve(turn.candidate_id, actor=ALICE_ACTOR, key=key)
    return turn


async def test_consent_rules(store: ConversationStore, corrections: CorrectionStore) -> None:
    sessions = store._sessions
    await _bind_channel(sessions, "100", "discord:g-yes", True)
    await _bind_channel(sessions, "200", "discord:g-no", False)
    await set_consent(sessions, "discord:said-yes", True)
    await set_consent(sessions, "discord:said-no", False)
    await set_consent(sessions, "discord:unsaid", None)
    cases = [
        ("discord:said-yes", "dm:said-yes", True),  # DM with explicit consent
        ("discord:unsaid", "dm:unsaid", False),  # DM without explicit consent
        ("discord:nobody", "dm:nobody", False),  # DM, no privacy row at all
        ("discord:unsaid", "channel:100", True),  # guild default yes
        ("discord:nobody", "channel:100", True),
        ("discord:said-no", "channel:100", False),  # explicit no beats the default
        ("discord:unsaid", "channel:200", False),  # guild default no
        ("discord:said-yes", "channel:200", True),
        ("discord:unsaid", "channel:300", False),  # unknown channel: no default applies
    ]
    expected = set()
    for index, (user_id, scope, included) in enumerate(cases):
        turn = await _approved_turn(
            store, corrections, user_id=user_id, scope=scope, key=str(index)
        )
        if included:
            expected.add(turn.user_turn_id)
    keys = {key for key, _ in await _records(sessions, "openai-sft")}
    assert keys == expected


async def test_erased_user_is_never_exported(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    sessions = store._sessions
    await _bind_channel(sessions, "100", "discord:g", True)
    await _approved_turn(store, corrections, user_id="discord:gone", scope="channel:100", key="1")
    async with sessions() as session:
        session.add(UserPrivacy(user_id="discord:gone", consent=True, erased_at=datetime.now(UTC)))
        await session.commit()
    assert await _records(sessions, "openai-sft") == []


async def test_pseudonyms_are_stable_and_keyed(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    await build_scenario(store, corrections)
    first = [record for _, record in await _records(store._sessions, "oasst")]
    again = [record for _, record in await _records(store._sessions, "oasst")]
    other = [
        record
        async for _, record in iter_records(
            store._sessions, "oasst", ExportFilter(), pseudonym_secret=b"another"
        )
    ]
    assert first == again
    assert first[0]["prompt"]["user_id"] != other[0]["prompt"]["user_id"]
    assert first[0]["prompt"]["user_id"].startswith("user_")
    assert len(first[0]["prompt"]["user_id"]) == len("user_") + 12


async def test_group_speaker_names_are_masked(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    sessions = store._sessions
    await _bind_channel(sessions, "100", "discord:g", True)
    conversation_id = await store.conversation_id(
        "discord", "channel:100", "Marlowe", guild_key="discord:g"
    )
    user_turn = await store.add_user_turn(
        conversation_id=conversation_id,
        parent_id=None,
        user_id="discord:5",
        user_name="Zed",
        text="hi all",
    )
    candidate = await store.add_candidate(
        conversation_id=conversation_id,
        user_turn_id=user_turn,
        persona="Marlowe",
        text="Evening, Zed and Quinn.",
        origin="model",
        snapshot=snapshot_for(
            "Marlowe",
            [{"role": "user", "content": "Quinn: yo"}, {"role": "user", "content": "Zed: hi all"}],
        ),
        state="held",
    )
    await corrections.approve(candidate, actor=ALICE_ACTOR, key="1")
    [(_, record)] = await _records(sessions, "trl-sft")
    text = json.dumps(record)
    assert "Zed" not in text and "Quinn" not in text
    zed = pseudonym("zed", SECRET, prefix="name")
    assert record["messages"][-1]["content"] == (
        f"Evening, {zed} and {pseudonym('quinn', SECRET, prefix='name')}."
    )


# -- filters ---------------------------------------------------------------------------------


async def test_filters(store: ConversationStore, corrections: CorrectionStore) -> None:
    scenario = await build_scenario(store, corrections)
    sessions = store._sessions
    await set_consent(sessions, "discord:2", True)
    other = await add_turn(store, user_id="discord:2", persona="Vesper", state="held", reply="Hm.")
    await corrections.approve(other.candidate_id, actor=ALICE_ACTOR, key="v")
    old = datetime(2020, 1, 1, tzinfo=UTC)
    async with sessions() as session:
        await session.execute(
            update(MessageNode)
            .where(MessageNode.id == scenario.rewritten.user_turn_id)
            .values(created_at=old)
        )
        await session.commit()

    def keys(items: list[tuple[int, dict[str, Any]]]) -> list[int]:
        return [key for key, _ in items]

    everything = keys(await _records(sessions, "openai-sft"))
    assert len(everything) == 5 and other.user_turn_id in everything
    assert keys(await _records(sessions, "openai-sft", persona="Vesper")) == [other.user_turn_id]
    assert keys(await _records(sessions, "openai-sft", until=old + timedelta(days=1))) == [
        scenario.rewritten.user_turn_id
    ]
    since = keys(await _records(sessions, "openai-sft", since=old + timedelta(days=1)))
    assert scenario.rewritten.user_turn_id not in since and len(since) == 4
    # rated 4.5 and rated 4 pass the default; only rated 5 would pass --min-rating 5
    assert scenario.rated.user_turn_id in everything
    high = keys(await _records(sessions, "openai-sft", min_rating=5))
    assert scenario.rated.user_turn_id not in high and scenario.rated_pair.user_turn_id not in high
    # issue 24.3: --min-rating applies to every record; an unrated rewrite reaches no rating
    assert scenario.rewritten.user_turn_id not in high
    assert keys(await _records(sessions, "openai-sft", tags=("funny",))) == [
        scenario.rated.user_turn_id
    ]
    assert keys(await _records(sessions, "oasst", tags=("in-character", "unsafe"))) == [
        scenario.rated.user_turn_id
    ]


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (
            {"since": datetime(2025, 2, 1, tzinfo=UTC), "until": datetime(2025, 1, 1, tzinfo=UTC)},
            "the time range is empty",
        ),
        ({"min_rating": 6}, "--min-rating is 1 to 5, not 6"),
        ({"tags": ("shiny",)}, "unknown tag 'shiny'"),
    ],
)
def test_bad_filters(filters: dict[str, Any], message: str) -> None:
    with pytest.raises(ExportError, match=message):
        ExportFilter(**filters)


# -- files, splits and counts ------------------------------------------------------------------


async def test_export_split_is_deterministic_and_keeps_conversations_together(
    store: ConversationStore, corrections: CorrectionStore, tmp_path: Path
) -> None:
    sessions = store._sessions
    for user in range(12):
        user_id = f"discord:{user}"
        await set_consent(sessions, user_id, True)
        for turn_index in range(2):
            turn = await add_turn(
                store, user_id=user_id, state="held", text=f"user{user} turn{turn_index}"
            )
            await corrections.approve(
                turn.candidate_id, actor=ALICE_ACTOR, key=f"{user}-{turn_index}"
            )
    split = {"train": 0.75, "test": 0.25}
    outputs = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt / "sft.jsonl"
        out.parent.mkdir()
        counts = await export_to_file(
            sessions,
            "openai-sft",
            ExportFilter(),
            out,
            split=split,
            seed=7,
            pseudonym_secret=SECRET,
            progress=None,
        )
        assert sum(counts.values()) == 24 and set(counts) == {"train", "test"}
        assert not out.exists() and sorted(p.name for p in out.parent.iterdir()) == [
            "sft.test.jsonl",
            "sft.train.jsonl",
        ]
        outputs.append({name: (out.parent / f"sft.{name}.jsonl").read_bytes() for name in split})
    assert outputs[0] == outputs[1]
    # another seed assigns conversations differently (seeds 7 and 8 happen to agree here)
    other_seed = tmp_path / "c" / "sft.jsonl"
    other_seed.parent.mkdir()
    await export_to_file(
        sessions,
        "openai-sft",
        ExportFilter(),
        other_seed,
        split=split,
        seed=1,
        pseudonym_secret=SECRET,
        progress=None,
    )
    assert (other_seed.parent / "sft.train.jsonl").read_bytes() != outputs[0]["train"]

    # turns of one conversation share a context: they never straddle train and test
    def users(data: bytes) -> set[str]:
        return {
            json.loads(line)["messages"][-2]["content"].split()[0] for line in data.splitlines()
        }

    assert users(outputs[0]["train"]).isdisjoint(users(outputs[0]["test"]))
    assert len(users(outputs[0]["train"]) | users(outputs[0]["test"])) == 12


async def test_export_to_file_counts_progress_and_lines(
    store: ConversationStore, corrections: CorrectionStore, tmp_path: Path
) -> None:
    await build_scenario(store, corrections)
    seen: list[int] = []
    out = tmp_path / "kto.jsonl"
    counts = await export_to_file(
        store._sessions,
        "trl-kto",
        ExportFilter(),
        out,
        split=None,
        seed=0,
        pseudonym_secret=SECRET,
        progress=seen.append,
        batch_size=4,
    )
    lines = out.read_text(encoding="utf-8").splitlines()
    assert counts == {"all": len(lines)} and seen == [4, 2]
    assert lines == [record_to_jsonl(r) for _, r in await _records(store._sessions, "trl-kto")]
    assert sum(seen) == await progress_total(store._sessions, ExportFilter(), ("trl-kto",))
    # a preference export reads only the turns with two replies, and its total says so
    seen.clear()
    await export_to_file(
        store._sessions,
        "trl-dpo",
        ExportFilter(),
        tmp_path / "dpo.jsonl",
        pseudonym_secret=SECRET,
        progress=seen.append,
        batch_size=4,
    )
    assert sum(seen) == await progress_total(store._sessions, ExportFilter(), ("trl-dpo",)) == 3
    # a dry run of several formats reads what the widest of them reads
    assert await progress_total(store._sessions, ExportFilter(), ("trl-dpo", "oasst")) == 6


async def test_export_to_a_missing_folder_leaves_nothing(
    store: ConversationStore, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    with pytest.raises(ExportError, match="does not exist"):
        await export_to_file(
            store._sessions,
            "trl-sft",
            ExportFilter(),
            tmp_path / "no" / "x.jsonl",
            split=None,
            seed=0,
            pseudonym_secret=SECRET,
            progress=None,
        )
    with pytest.raises(ExportError, match="unknown format 'csv'"):
        await export_to_file(
            store._sessions,
            "csv",
            ExportFilter(),
            tmp_path / "x.jsonl",
            split=None,
            seed=0,
            pseudonym_secret=SECRET,
            progress=None,
        )
    assert list(tmp_path.iterdir()) == []


async def test_failure_mid_export_removes_temporary_files(
    store: ConversationStore, corrections: CorrectionStore, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    await build_scenario(store, corrections)

    def explode(_: int) -> None:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        await export_to_file(
            store._sessions,
            "trl-sft",
            ExportFilter(),
            tmp_path / "x.jsonl",
            split={"a": 0.5, "b": 0.5},
            seed=0,
            pseudonym_secret=SECRET,
            progress=explode,
        )
    assert list(tmp_path.iterdir()) == []


async def test_dry_run_counts_per_format_and_persona(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    await build_scenario(store, corrections)
    await set_consent(store._sessions, "discord:2", True)
    other = await add_turn(store, user_id="discord:2", persona="Vesper", state="held")
    await corrections.approve(other.candidate_id, actor=ALICE_ACTOR, key="v")
    counts = await dry_run_counts(store._sessions, ExportFilter(), pseudonym_secret=SECRET)
    assert list(counts) == list(FORMATS)
    assert counts["openai-sft"] == counts["trl-sft"] == {"Marlowe": 4, "Vesper": 1}
    assert counts["openai-dpo"] == counts["trl-dpo"] == {"Marlowe": 3}
    assert counts["trl-kto"] == {"Marlowe": 8, "Vesper": 1}
    assert counts["oasst"] == {"Marlowe": 5, "Vesper": 1}
    for fmt in FORMATS:
        assert sum(counts[fmt].values()) == len(await _records(store._sessions, fmt))


# -- read-ahead ------------------------------------------------------------------------------


async def test_closing_records_early_cancels_the_read_ahead(
    store: ConversationStore, corrections: CorrectionStore
) -> None:
    await build_scenario(store, corrections)
    source = iter_records(
        store._sessions, "trl-kto", ExportFilter(), pseudonym_secret=SECRET, batch_size=1
    )
    async with contextlib.aclosing(source) as items:
        async for _key, _record in items:
            for _ in range(3):  # let the read-ahead of the next page start its queries
                await asyncio.sleep(0)
            break
    assert asyncio.all_tasks() == {asyncio.current_task()}
    # without read-ahead, the same records in the same order
    ahead = await _records(store._sessions, "trl-kto")
    plain = [
        item
        async for item in iter_records(
            store._sessions, "trl-kto", ExportFilter(), pseudonym_secret=SECRET, prefetch=False
        )
    ]
    assert ahead == plain


async def test_read_ahead_stops_at_the_turns_the_caller_needs(
    store: ConversationStore, corrections: CorrectionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await build_scenario(store, corrections)
    reads: list[int] = []
    original = tree_module._read_turns

    async def counted(*args: Any) -> Any:
        reads.append(args[2])  # the position it reads after
        return await original(*args)

    monkeypatch.setattr(tree_module, "_read_turns", counted)
    pages = iter_turn_trees(store._sessions, ExportFilter(), batch_size=2, read_ahead_until=4)
    async with contextlib.aclosing(pages):
        first = await anext(pages)
        await asyncio.sleep(0.05)  # room for a read-ahead to run
        assert len(reads) == 2  # this page and the next, read ahead
        second = await anext(pages)
        await asyncio.sleep(0.05)
        assert len(reads) == 2  # 4 turns read: no third page until it is asked for
        third = await anext(pages)
        assert len(reads) == 3
    assert [len(p) for p in (first, second, third)] == [2, 2, 2]
    ids = [tree.user_turn_id for p in (first, second, third) for tree in p]
    assert ids == sorted(set(ids))
    everything = [
        tree.user_turn_id
        async for p in iter_turn_trees(store._sessions, ExportFilter(), batch_size=2)
        for tree in p
    ]
    assert everything[:6] == ids
