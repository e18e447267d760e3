"""Fast tests of memory/ with the deterministic HashingEmbedder on temporary Chroma dirs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import re
import resource
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from memory import (
    MAX_MEMORY_CHARS,
    HashingEmbedder,
    MemoryInputError,
    MemoryService,
    MemoryStoreError,
    extract_facts,
    format_memory_lines,
)
from memory.chroma_store import (
    CANON_PREFIX,
    COLLECTION_METADATA,
    FILES_PER_INDEX,
    HISTORY_PREFIX,
    SCOPE_PREFIX,
    SPARE_FILES,
    VOICE_PREFIX,
    SealedCollection,
    digest,
    index_cache_limit,
)

PERSONA = "Marlowe"
CANON = ["I grew up in Lisbon.", "I am 34.", "I have a sister.", "I work as a lighthouse keeper."]
VOICE = ["Ahoy there, friend of the sea!", "The tide tells me you seem tired tonight."]


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[MemoryService]:
    memory = MemoryService.open(path=tmp_path / "chroma", embedder=HashingEmbedder())
    await memory.sync_persona(PERSONA, canon_facts=CANON, voice_examples=VOICE)
    yield memory
    memory.close()


async def _say(
    memory: MemoryService,
    user: str,
    turn: int,
    text: str,
    role: str = "user",
    persona: str = PERSONA,
) -> list:
    return await memory.remember_turn(
        persona=persona,
        user_id=user,
        conversation_id="c1",
        turn_id=f"{user}-{persona}-{turn}",
        role=role,  # type: ignore[arg-type]
        text=text,
        speaker="alice" if role == "user" else persona,
    )


FILLER = [
    "The weather was rainy all afternoon.",
    "I cooked pasta with tomatoes for dinner.",
    "We watched a film about pirates yesterday.",
    "My train was late again this morning.",
    "I should really water the plants.",
    "The football match ended in a draw.",
    "I bought new running shoes today.",
    "The cat knocked a glass off the table.",
]


def test_extract_facts_patterns() -> None:
    pairs = {
        "My sister's name is Maya.": ("relation:sister", "Maya"),
        "my sister is called Maya": ("relation:sister", "Maya"),
        "I live in Porto.": ("live_in", "Porto"),
        "I grew up in Rio de Janeiro": ("grew_up_in", "Rio de Janeiro"),
        "I'm 29 years old": ("age", "29"),
        "my favourite food is sushi.": ("favourite:food", "sushi"),
        "I work as a nurse.": ("work_as", "nurse"),
        "I don't have a sister.": ("has:sister", "no"),
        "I no longer live in Porto": ("live_in", None),
    }
    for text, (key, value) in pairs.items():
        facts = extract_facts(text)
        assert [(f.attribute, f.value) for f in facts] == [(key, value)], text
    assert extract_facts("I am tired and my sister is busy") == []


async def test_recall_fact_told_many_turns_earlier(service: MemoryService) -> None:
    await _say(service, "terminal:alice", 0, "My sister's name is Maya.")
    for turn, text in enumerate(FILLER * 3, start=1):
        await _say(service, "terminal:alice", turn, text)
    hits = await service.recall(
        persona=PERSONA, user_id="terminal:alice", query_texts=["what is my sister's name?"]
    )
    lines = format_memory_lines(hits)
    assert "- (user fact) Sister: Maya" in lines
    assert hits[0].kind in ("user_fact", "turn") and "Maya" in hits[0].text


async def test_recall_respects_budget_and_dedup(service: MemoryService) -> None:
    for turn in range(5):
        await _say(service, "u", turn, "I love long walks on the beach at sunset.")
        await _say(service, "u", 10 + turn, f"Walks on the beach are lovely {turn}")
    hits = await service.recall(
        persona=PERSONA, user_id="u", query_texts=["beach walks"], k=6, token_budget=200
    )
    texts = [h.text for h in hits]
    assert texts.count("I love long walks on the beach at sunset.") <= 1
    small = await service.recall(
        persona=PERSONA, user_id="u", query_texts=["beach walks"], k=6, token_budget=12
    )
    assert sum(len(line) for line in format_memory_lines(small)) <= 12 * 4 + 16
    assert await service.recall(persona=PERSONA, user_id="u", query_texts=["x"], k=0) == []


async def test_cross_user_isolation(service: MemoryService) -> None:
    await _say(service, "discord:1", 0, "My sister's name is Maya. I live in Porto.")
    await service.pin(
        persona=PERSONA, user_id="discord:1", text="Allergic to peanuts", source="user"
    )
    query = ["My sister's name is Maya. I live in Porto. Allergic to peanuts"]
    for other in ("discord:2", "discord:11"):
        hits = await service.recall(persona=PERSONA, user_id=other, query_texts=query, k=20)
        assert all(h.kind == "canon" for h in hits), hits
        assert await service.show_user(user_id=other) == []
        assert await service.fact_history(user_id=other) == []
    # Same user, another persona: facts are private to the (persona, user) scope.
    other_persona = await service.recall(
        persona="Juniper", user_id="discord:1", query_texts=query, k=20
    )
    assert other_persona == []
    own = await service.recall(persona=PERSONA, user_id="discord:1", query_texts=query, k=20)
    assert any("Maya" in h.text for h in own)


async def test_supersede_with_history(service: MemoryService) -> None:
    events = await _say(service, "u", 0, "I live in Porto.")
    assert [e.event for e in events] == ["ADD"]
    assert [e.event for e in await _say(service, "u", 1, "I live in Porto!")] == ["NOOP"]
    events = await _say(service, "u", 2, "Big news: I live in Berlin now.")
    assert [(e.event, e.old_value, e.new_value) for e in events] == [("UPDATE", "Porto", "Berlin")]
    events = await _say(service, "u", 3, "I no longer live in Berlin.")
    assert [e.event for e in events] == ["DELETE"]
    history = await service.fact_history(user_id="u")
    assert [(e.event, e.key, e.new_value) for e in history] == [
        ("ADD", "live_in", "Porto"),
        ("UPDATE", "live_in", "Berlin"),
        ("DELETE", "live_in", None),
    ]
    assert all(e.subject == "user" and e.persona == PERSONA for e in history)
    facts = [r for r in await service.show_user(user_id="u") if r.kind == "user_fact"]
    assert facts == []
    await _say(service, "u", 4, "I live in Oslo.")
    facts = [r.text for r in await service.show_user(user_id="u") if r.kind == "user_fact"]
    assert facts == ["Lives in: Oslo"]


async def test_persona_self_statements_are_facts(service: MemoryService) -> None:
    events = await _say(service, "u", 0, "I grew up in Lisbon, you know.", role="assistant")
    assert [(e.subject, e.key, e.event) for e in events] == [("persona", "grew_up_in", "ADD")]
    kinds = {r.kind for r in await service.show_user(user_id="u", persona=PERSONA)}
    assert kinds == {"turn", "self_fact"}


async def test_pin_errors(service: MemoryService) -> None:
    hit = await service.pin(
        persona=PERSONA, user_id="u", text="Prefers tea over coffee", source="user"
    )
    assert hit.kind == "pin" and hit.source == "user"
    with pytest.raises(MemoryInputError, match="empty"):
        await service.pin(persona=PERSONA, user_id="u", text="   ", source="user")
    with pytest.raises(MemoryInputError, match=f"at most {MAX_MEMORY_CHARS} characters"):
        await service.pin(persona=PERSONA, user_id="u", text="x" * 1001, source="user")
    with pytest.raises(MemoryInputError, match="already pinned"):
        await service.pin(
            persona=PERSONA, user_id="u", text="prefers tea over coffee", source="actor"
        )
    with pytest.raises(MemoryInputError, match="source"):
        await service.pin(persona=PERSONA, user_id="u", text="other", source="bot")  # type: ignore[arg-type]
    # The same pin in another scope is not a duplicate.
    await service.pin(persona=PERSONA, user_id="v", text="Prefers tea over coffee", source="user")


async def test_long_turn_is_truncated(service: MemoryService) -> None:
    await _say(service, "u", 0, "a" * 5000)
    (record,) = await service.show_user(user_id="u")
    assert len(record.text) == MAX_MEMORY_CHARS


async def test_replace_turn(service: MemoryService) -> None:
    await _say(service, "u", 0, "Hello! I grew up in Oslo, by the fjords.", role="assistant")
    await service.replace_turn(
        persona=PERSONA, user_id="u", turn_id="u-Marlowe-0", text="Hello! I grew up in Lisbon."
    )
    records = await service.show_user(user_id="u")
    texts = [r.text for r in records]
    assert "Hello! I grew up in Lisbon." in texts
    assert not any("Oslo" in t for t in texts)
    hits = await service.recall(persona=PERSONA, user_id="u", query_texts=["fjords Oslo"], k=10)
    assert not any("Oslo" in h.text for h in hits)
    with pytest.raises(MemoryInputError, match="no remembered turn"):
        await service.replace_turn(persona=PERSONA, user_id="u", turn_id="nope", text="hi")


async def test_replace_turn_withdraws_dropped_fact(service: MemoryService) -> None:
    await _say(service, "u", 0, "I am 51 years old.", role="assistant")
    await service.replace_turn(persona=PERSONA, user_id="u", turn_id="u-Marlowe-0", text="Ahoy!")
    assert not [r for r in await service.show_user(user_id="u") if r.kind == "self_fact"]
    assert [e.event for e in await service.fact_history(user_id="u")] == ["ADD", "DELETE"]


def _contradictions(flags: Sequence) -> list:
    return [f for f in flags if f.kind == "contradiction" and f.over_threshold]


@pytest.mark.parametrize(
    ("reply", "fact", "rule"),
    [
        ("Oh, I grew up in Oslo, near the harbour.", "I grew up in Lisbon.", "value_mismatch"),
        ("I'm 29, if you must know.", "I am 34.", "value_mismatch"),
        ("I don't have a sister.", "I have a sister.", "value_mismatch"),
    ],
)
async def test_contradiction_with_canon(
    service: MemoryService, reply: str, fact: str, rule: str
) -> None:
    flags = _contradictions(await service.check_reply(persona=PERSONA, user_id="u", reply=reply))
    assert flags, reply
    evidence = flags[0].evidence
    assert evidence["fact"] == fact and evidence["rule"] == rule
    assert evidence["fact_kind"] == "canon"
    json.dumps(evidence)


async def test_contradiction_similarity_rules(tmp_path: Path) -> None:
    memory = MemoryService.open(
        path=tmp_path / "c", embedder=HashingEmbedder(), similarity_gate=0.5
    )
    try:
        await memory.sync_persona(
            "P", canon_facts=["My boat is painted blue and it sails well."], voice_examples=[]
        )
        flags = await memory.check_reply(
            persona="P", user_id="u", reply="My boat is not painted blue and it sails well."
        )
        assert [f.evidence["rule"] for f in _contradictions(flags)] == ["negation_mismatch"]
        flags = await memory.check_reply(
            persona="P", user_id="u", reply="My boat is painted blue and it sails well."
        )
        assert _contradictions(flags) == []
    finally:
        memory.close()


async def test_contradiction_with_earlier_self_statement(service: MemoryService) -> None:
    await _say(service, "u", 0, "My favourite food is grilled sardines.", role="assistant")
    flags = await service.check_reply(
        persona=PERSONA, user_id="u", reply="My favourite food is pizza."
    )
    (flag,) = _contradictions(flags)
    assert flag.evidence["fact_kind"] == "self_fact"
    assert flag.evidence["expected"] == "grilled sardines" and flag.evidence["found"] == "pizza"
    # Another user's conversation never sees that self-statement.
    other = await service.check_reply(
        persona=PERSONA, user_id="w", reply="My favourite food is pizza."
    )
    assert _contradictions(other) == []


async def test_no_false_flag_on_consistent_reply(service: MemoryService) -> None:
    for reply in (
        "I grew up in Lisbon, and I am 34. My sister writes to me often.",
        "The lighthouse was quiet tonight; the sea is calm.",
        "How was your day? Tell me everything.",
    ):
        flags = await service.check_reply(persona=PERSONA, user_id="u", reply=reply)
        assert _contradictions(flags) == [], reply
        (drift,) = [f for f in flags if f.kind == "drift"]
        assert 0.0 <= drift.score <= 2.0 and drift.evidence["voice_lines"] == len(VOICE)


async def test_sync_persona_is_idempotent_and_replaces(service: MemoryService) -> None:
    await service.sync_persona(PERSONA, canon_facts=CANON, voice_examples=VOICE)
    await service.sync_persona(PERSONA, canon_facts=["I grew up in Porto."], voice_examples=VOICE)
    flags = await service.check_reply(persona=PERSONA, user_id="u", reply="I am 29.")
    assert _contradictions(flags) == []  # "I am 34." is no longer canon
    flags = await service.check_reply(persona=PERSONA, user_id="u", reply="I grew up in Lisbon.")
    assert _contradictions(flags)[0].evidence["fact"] == "I grew up in Porto."


async def test_erase_leaves_nothing(service: MemoryService) -> None:
    user = "discord:42"
    await _say(service, user, 0, "My sister's name is Maya. I live in Porto.")
    await _say(service, user, 1, "I grew up in Lisbon too!", role="assistant")
    await _say(service, user, 2, "My sister is called Maya.", persona="Juniper")
    await service.pin(persona=PERSONA, user_id=user, text="Call me Al", source="user")
    await _say(service, "discord:7", 0, "I live in Rome.")
    removed = await service.delete_data_for_user(requester="user", user_id=user)
    assert removed >= 8
    assert await service.show_user(user_id=user) == []
    assert await service.fact_history(user_id=user) == []
    for persona in (PERSONA, "Juniper"):
        hits = await service.recall(
            persona=persona, user_id=user, query_texts=["Maya Porto Al Lisbon"], k=20
        )
        assert all(h.kind == "canon" for h in hits)
    # Query every collection in the store directly: nothing of the user is left anywhere.
    client = service._store.client
    query = HashingEmbedder().embed(["My sister's name is Maya. I live in Porto. Call me Al"])
    for collection in client.list_collections():
        got = collection.get(include=["documents", "metadatas"])
        assert all(m.get("user_id") != user for m in got["metadatas"] or [])
        assert not any("Maya" in (d or "") or "Call me Al" in (d or "") for d in got["documents"])
        if collection.count() and not collection.name.startswith(HISTORY_PREFIX):
            result = collection.query(query_embeddings=query, n_results=50)
            assert not any("Maya" in (d or "") for d in result["documents"][0])
    assert any(r.text == "I live in Rome." for r in await service.show_user(user_id="discord:7"))
    assert await service.delete_data_for_user(requester="owner", user_id=user) == 0


async def test_preload_warms_written_scopes_only(tmp_path: Path) -> None:
    store = tmp_path / "chroma"
    memory = MemoryService.open(path=store, embedder=HashingEmbedder())
    await memory.sync_persona(PERSONA, canon_facts=CANON, voice_examples=VOICE)
    await _say(memory, "discord:1", 0, "My sister's name is Maya.")
    memory.close()
    restarted = MemoryService.open(path=store, embedder=HashingEmbedder())
    try:
        scopes = [(PERSONA, "discord:1"), (PERSONA, "discord:1"), (PERSONA, "discord:2")]
        assert await restarted.preload(scopes) == 1  # the duplicate and the unknown skipped
        assert await restarted.preload(scopes, limit=0) == 0
        names = {c.name for c in restarted._store.client.list_collections()}
        assert restarted._store.scope_name(PERSONA, "discord:2") not in names  # nothing created
        hits = await restarted.recall(
            persona=PERSONA, user_id="discord:1", query_texts=["my sister Maya"], k=3
        )
        assert any("Maya" in hit.text for hit in hits)
    finally:
        restarted.close()


async def test_preload_stops_on_store_failure(service: MemoryService) -> None:
    await _say(service, "discord:1", 0, "I live in Porto.")
    service.close()
    assert await service.preload([(PERSONA, "discord:1")]) == 0


def test_embedded_store_indexes_chromas_lookups_by_collection(tmp_path: Path) -> None:
    import sqlite3

    MemoryService.open(path=tmp_path / "chroma", embedder=HashingEmbedder()).close()
    connection = sqlite3.connect(tmp_path / "chroma" / "chroma.sqlite3")
    try:
        log_plan = connection.execute(
            "EXPLAIN QUERY PLAN DELETE FROM embeddings_queue WHERE topic = ? AND seq_id < ?",
            ("t", 1),
        ).fetchall()
        segments_plan = connection.execute(
            "EXPLAIN QUERY PLAN SELECT id, type, scope FROM segments WHERE collection = ?", ("c",)
        ).fetchall()
    finally:
        connection.close()
    assert "greenroom_embeddings_queue_topic" in str(log_plan)
    assert "greenroom_segments_collection" in str(segments_plan)


def _open_with_a_small_index_cache(store: Path) -> tuple[MemoryService, int]:
    """A store whose Chroma keeps few indexes loaded, and about how many (the cache keeps room
    for the files the process has open, see :func:`memory.chroma_store.index_cache_limit`)."""
    cached = (len(os.listdir("/proc/self/fd")) + SPARE_FILES) // FILES_PER_INDEX
    memory = MemoryService.open(path=store, embedder=HashingEmbedder(), index_cache_size=1)
    return memory, cached


def _open_files_under(folder: Path) -> list[str]:
    """Paths under ``folder`` that this process holds open (from ``/proc/self/fd``)."""
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(str(folder)):
                held.append(target)
    return held


def _loaded_indexes(store: Path) -> int:
    """Indexes of the store at ``store`` that are loaded: their open header files."""
    return sum(path.endswith("header.bin") for path in _open_files_under(store))


async def test_embedded_store_keeps_a_bounded_number_of_indexes_loaded(tmp_path: Path) -> None:
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    store = tmp_path / "chroma"
    memory, cached = _open_with_a_small_index_cache(store)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == limits  # lowered only for the start
    try:
        users = [f"discord:{n}" for n in range(cached + 30)]
        for user in users:
            await memory.add_many(persona=PERSONA, user_id=user, texts=[f"{user} rows a kayak."])
            await memory.recall(persona=PERSONA, user_id=user, query_texts=["kayak"])
        assert 0 < _loaded_indexes(store) < len(users)
    finally:
        memory.close()
    with pytest.raises(ValueError, match="room for one index"), index_cache_limit(0):
        pass


async def test_writes_survive_the_index_cache_evicting_their_scope(tmp_path: Path) -> None:
    # Without sealing, Chroma loads an evicted index back without its last unpersisted write:
    # a one-record scope fails every query, a rewritten turn shows its old text again.
    memory, cached = _open_with_a_small_index_cache(tmp_path / "chroma")
    users = [f"discord:{n}" for n in range(cached + 30)]
    try:
        for user in users:
            await memory.pin(
                persona=PERSONA, user_id=user, text=f"{user} owns a kayak.", source="user"
            )
            assert await memory.recall(persona=PERSONA, user_id=user, query_texts=["kayak"])
        rewritten = users[:20]
        for user in rewritten:
            await _say(memory, user, 0, "I sail a blue boat on weekends.")
            await memory.replace_turn(
                persona=PERSONA,
                user_id=user,
                turn_id=f"{user}-{PERSONA}-0",
                text="I sail a green boat on weekends.",
            )
        for user in users[20:]:  # push the rewritten scopes out of the cache
            await memory.recall(persona=PERSONA, user_id=user, query_texts=["kayak"])
        for user in users:
            hits = await memory.recall(persona=PERSONA, user_id=user, query_texts=["boat kayak"])
            texts = [hit.text for hit in hits]
            assert f"{user} owns a kayak." in texts
            if user in rewritten:
                assert "I sail a green boat on weekends." in texts
                assert not any("blue" in text for text in texts)
    finally:
        memory.close()


def test_a_sealed_deletion_stays_deleted_after_an_eviction(tmp_path: Path) -> None:
    memory, cached = _open_with_a_small_index_cache(tmp_path / "chroma")
    client = memory._store.client
    rng = np.random.default_rng(3)
    try:
        names = [f"gr_t_{n}" for n in range(cached + 30)]
        for name in names:
            collection = SealedCollection(
                client.create_collection(name, metadata=dict(COLLECTION_METADATA))
            )
            vectors = rng.standard_normal((2, 8)).astype(np.float32)
            # two records reach disk together; the deletion alone would not (unsealed, "gone"
            # is found again once the index is evicted and loaded back)
            collection.collection.add(ids=["keep", "gone"], embeddings=vectors)
            collection.delete(ids=["gone"])
            collection.query(query_embeddings=vectors[:1], n_results=2)
        for name in names:  # each was evicted and is loaded again
            found = client.get_collection(name).query(
                query_embeddings=rng.standard_normal((1, 8)).astype(np.float32), n_results=2
            )
            assert found["ids"] == [["keep"]]
    finally:
        memory.close()


def test_collection_names_carry_no_personal_data() -> None:
    assert digest("discord:1234") not in "discord:1234"
    for prefix in (SCOPE_PREFIX, CANON_PREFIX, VOICE_PREFIX, HISTORY_PREFIX):
        assert prefix.startswith("gr_")


def test_corrupted_store_names_path(tmp_path: Path) -> None:
    store = tmp_path / "chroma"
    store.mkdir()
    (store / "chroma.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(MemoryStoreError, match=re.escape(str(store))):
        MemoryService.open(path=store, embedder=HashingEmbedder())


def test_unwritable_store_names_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(MemoryStoreError, match=re.escape(str(blocker / "chroma"))):
        MemoryService.open(path=blocker / "chroma", embedder=HashingEmbedder())


def test_unreachable_server_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(MemoryStoreError, match=re.escape("127.0.0.1:9")):
        MemoryService.open(host="127.0.0.1", port=9, embedder=HashingEmbedder())
    assert time.monotonic() - started < 30  # a sanity bound, not a timing assertion


class _HangingEmbedder(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.hang = False

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.hang:
            time.sleep(2.0)
        return super().embed(texts)


async def test_store_failure_mid_conversation(tmp_path: Path) -> None:
    embedder = _HangingEmbedder()
    memory = MemoryService.open(path=tmp_path / "c", embedder=embedder)
    try:
        await _say(memory, "u", 0, "I live in Porto.")
        # Short only while the embedder hangs: the other steps may be slow on a busy machine.
        memory.timeout_s, embedder.hang = 0.3, True
        with pytest.raises(MemoryStoreError, match="recall took longer"):
            await memory.recall(persona=PERSONA, user_id="u", query_texts=["where do I live?"])
        memory.timeout_s, embedder.hang = 5.0, False
        await asyncio.sleep(2.0)  # let the abandoned worker finish
        memory._store.client.delete_collection(
            memory._store.scope_name(PERSONA, "u")
        )  # the store breaks
        with pytest.raises(MemoryStoreError, match="recall failed"):
            await memory.recall(persona=PERSONA, user_id="u", query_texts=["where do I live?"])
    finally:
        memory.close()
    with pytest.raises(MemoryStoreError, match="closed"):
        await memory.remember_turn(
            persona=PERSONA,
            user_id="u",
            conversation_id="c",
            turn_id="t",
            role="user",
            text="hi",
            speaker="a",
        )


async def test_bad_role_is_refused(service: MemoryService) -> None:
    with pytest.raises(MemoryInputError, match="role"):
        await _say(service, "u", 0, "hello", role="system")


async def test_close_closes_the_chroma_client(tmp_path: Path) -> None:
    store = tmp_path / "chroma"
    memory = MemoryService.open(path=store, embedder=HashingEmbedder())
    await _say(memory, "u", 0, "I live in Porto.")
    assert any(path.endswith("chroma.sqlite3") for path in _open_files_under(store))
    memory.close()
    # Chroma's Client.close stopped the embedded store: once its objects are collected (a
    # cycle holds them), its files are let go, and the store opens again with what was written.
    gc.collect()
    assert _open_files_under(store) == []
    reopened = MemoryService.open(path=store, embedder=HashingEmbedder())
    try:
        hits = await reopened.recall(persona=PERSONA, user_id="u", query_texts=["Porto?"])
        assert any("Porto" in hit.text for hit in hits)
    finally:
        reopened.close()


async def test_close_leaves_the_client_open_under_a_running_operation(tmp_path: Path) -> None:
    embedder = _HangingEmbedder()
    store = tmp_path / "chroma"
    memory = MemoryService.open(path=store, embedder=embedder)
    await _say(memory, "u", 0, "I live in Porto.")
    memory.timeout_s, embedder.hang = 0.3, True
    with pytest.raises(MemoryStoreError, match="took longer"):
        await memory.recall(persona=PERSONA, user_id="u", query_texts=["where do I live?"])
    memory.close()  # the recall's worker still sleeps (2 s): close waits timeout_s, no longer
    # so the client is still open: not closed under the running operation, nor waited for.
    gc.collect()
    assert any(path.endswith("chroma.sqlite3") for path in _open_files_under(store))
    with pytest.raises(MemoryStoreError, match="closed"):
        await memory.recall(persona=PERSONA, user_id="u", query_texts=["where do I live?"])
    await asyncio.sleep(2.0)  # let the abandoned worker finish before the folder goes
