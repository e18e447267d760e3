"""Erasure reaches trainers (24.5): the erasure feed names every record an erased user's data
gave, in every format and lease, and nothing else; leases holding one are revoked; export
files carry manifests whose cursor asks the feed what to delete. On SQLite and PostgreSQL,
through the real FastAPI app, the stores and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest
import typer
from sqlalchemy import func, select
from typer.testing import CliRunner

from bot.cli_trainer import export_command
from bot.engine import ConversationEngine, EngineLimits, IncomingMessage, Reply
from bot.llm import FakeChatModel
from feedback.api import create_app
from feedback.corrections import CorrectionStore
from feedback.database import create_engine, session_factory
from feedback.erasure import decode_feed_cursor, feed_position, read_feed
from feedback.exports import FORMATS, ExportFilter, iter_records
from feedback.models import ErasureTombstone, GuildSetting, MessageNode, PromptSnapshot
from feedback.redact import pseudonym
from feedback.store import ERASED_TEXT, ConversationStore
from feedback.tokens import create_token
from personas import PersonaRegistry
from tests.factories import ALICE_ACTOR, BOB_ACTOR, RecallingMemory, add_turn, decisions_for
from tests.test_api import SECRET, Api, assert_error, bearer
from tests.test_exports import _regenerate, build_scenario, set_consent

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

T = TypeVar("T")


@pytest.fixture
async def trainer(db_engine: AsyncEngine) -> AsyncIterator[Api]:
    """The real app over the test database, with a read and a lease token (as test_api's)."""
    sessions = session_factory(db_engine)
    app = create_app(sessions, pseudonym_secret=SECRET)
    read = bearer(await create_token(sessions, "reader", "read"))
    lease = bearer(await create_token(sessions, "trainer", "lease"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield Api(client, sessions, read, lease)


ERASED = "discord:1"
KEPT = "discord:2"


async def _all_ids(trainer: Api, fmt: str) -> set[str]:
    """Every record id the API pages out for ``fmt`` now."""
    ids: set[str] = set()
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"format": fmt, "limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        body = (await trainer.get("/v1/corrections", **params)).json()
        ids.update(record["record_id"] for record in body["records"])
        cursor = body["next_cursor"]
        if not body["has_more"]:
            return ids


async def _feed(trainer: Api, cursor: str | None, *, limit: int = 7) -> tuple[list[dict], str]:
    """Every tombstone after ``cursor``, paged ``limit`` at a time; and the cursor to poll on."""
    tombstones: list[dict] = []
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = await trainer.get("/v1/erasures", **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["tombstones"]) <= limit
        tombstones += body["tombstones"]
        cursor = body["next_cursor"]
        if not body["has_more"]:
            return tombstones, cursor


async def _two_users(sessions: async_sessionmaker[AsyncSession]) -> None:
    """The six-turn scenario of the export tests for ERASED; two reviewed turns for KEPT."""
    store, corrections = ConversationStore(sessions), CorrectionStore(sessions)
    await build_scenario(store, corrections, user_id=ERASED)
    await set_consent(sessions, KEPT, True)
    for n in range(2):
        turn = await add_turn(store, user_id=KEPT, user_name="bo", text=f"q{n}", state="held")
        await corrections.rate(turn.candidate_id, actor=ALICE_ACTOR, rating=2, key=f"kr{n}")
        regenerated = await _regenerate(corrections, turn, f"better {n}", f"kg{n}")
        await corrections.rate(regenerated, actor=BOB_ACTOR, rating=5, key=f"kr5{n}")
        await corrections.approve(regenerated, actor=BOB_ACTOR, key=f"ka{n}")


async def test_feed_names_every_erased_record_and_revokes_leases(trainer: Api) -> None:
    await _two_users(trainer.sessions)
    before = {fmt: await _all_ids(trainer, fmt) for fmt in FORMATS}
    assert all(before.values())
    page = (await trainer.get("/v1/corrections", format="trl-sft")).json()
    manifest_cursor = page["manifest"]["erasure_cursor"]
    lease = (
        await trainer.post("/v1/leases", {"job": "run", "limit": 100, "ttl_seconds": 600})
    ).json()
    erased_user, kept_user = (pseudonym(u, SECRET, prefix="user") for u in (ERASED, KEPT))
    leased = {item["record_id"]: item["user"] for item in lease["records"]}
    assert set(leased.values()) >= {erased_user, kept_user}

    store = ConversationStore(trainer.sessions)
    assert await store.delete_data_for_user(requester="user", user_id=ERASED) > 0

    after = {fmt: await _all_ids(trainer, fmt) for fmt in FORMATS}
    tombstones, poll_cursor = await _feed(trainer, manifest_cursor)
    named = {t["record_id"] for t in tombstones}
    assert {t["user"] for t in tombstones} == {erased_user}
    for fmt in FORMATS:
        gone = before[fmt] - after[fmt]
        assert gone, fmt  # the erased user's records left the export
        assert gone <= named, fmt  # and each one is in the feed
        assert not after[fmt] & named, fmt  # the kept user's records are not
    assert {rid for rid, user in leased.items() if user == erased_user} <= named
    assert not {rid for rid, user in leased.items() if user == kept_user} & named
    # the rows are gone; the tombstones stay
    async with trainer.sessions() as session:
        assert not await session.scalar(select(func.count()).where(MessageNode.author_id == ERASED))
        assert await session.scalar(select(func.count()).select_from(ErasureTombstone)) == len(
            tombstones
        )

    # the lease is revoked: its ack is refused with the reason, its other records are free
    ack = await trainer.post(f"/v1/leases/{lease['lease_id']}/ack")
    assert_error(ack, 409, "conflict", "revoked", "erased", "/v1/erasures")
    again = (await trainer.post("/v1/leases", {"job": "run2", "limit": 100})).json()
    assert {item["user"] for item in again["records"]} == {kept_user}
    assert {item["record_id"] for item in again["records"]} == {
        rid for rid, user in leased.items() if user == kept_user
    }
    assert (await trainer.post(f"/v1/leases/{again['lease_id']}/ack")).status_code == 200

    # polling on: nothing new, the cursor holds; a later page's manifest is after the erasure
    assert await _feed(trainer, poll_cursor) == ([], poll_cursor)
    later = (await trainer.get("/v1/corrections", format="oasst")).json()["manifest"]
    assert later["erasure_cursor"] == poll_cursor
    # from the start (no cursor) the same tombstones, in one page or many
    assert [t["record_id"] for t in (await _feed(trainer, None, limit=10_000))[0]] == [
        t["record_id"] for t in tombstones
    ]


async def test_feed_needs_a_token_and_a_cursor_of_its_own(trainer: Api) -> None:
    response = await trainer.client.get("/v1/erasures")
    assert_error(response, 401, "unauthorized", "missing bearer token")
    page = (await trainer.get("/v1/corrections", format="oasst")).json()
    for cursor in ("not-a-cursor", page["next_cursor"] or "eyJmIjoib2Fzc3QiLCJrIjoxfQ"):
        response = await trainer.get("/v1/erasures", cursor=cursor)
        assert_error(response, 422, "invalid_request", "cursor", "erasure feed")
    assert_error(await trainer.get("/v1/erasures", limit=0), 422, "invalid_request", "limit")


async def test_erasing_twice_or_a_stranger_adds_no_tombstone(db_engine: AsyncEngine) -> None:
    sessions = session_factory(db_engine)
    await _two_users(sessions)
    store = ConversationStore(sessions)
    await store.delete_data_for_user(requester="user", user_id=ERASED)
    position = await feed_position(sessions)
    assert position > 0
    assert await store.delete_data_for_user(requester="user", user_id=ERASED) == 0
    assert await store.delete_data_for_user(requester="owner", user_id="discord:404") == 0
    assert await feed_position(sessions) == position


async def test_records_of_others_whose_prompt_held_the_words_are_tombstoned(
    db_engine: AsyncEngine,
) -> None:
    """In a server channel the next speaker's prompt quoted the erased user: the prompt is
    scrubbed, so what trainers hold of that record is stale and is named in the feed too (the
    record comes back, scrubbed, under the same id)."""
    sessions = session_factory(db_engine)
    store, corrections = ConversationStore(sessions), CorrectionStore(sessions)
    async with sessions() as session:
        session.add(GuildSetting(guild_key="discord:g", consent_default=True, updated_by="t"))
        await session.commit()
    channel = {"scope": "channel:7", "guild_key": "discord:g"}
    first = await add_turn(store, user_id=ERASED, text="my secret is 42", state="held", **channel)
    await corrections.approve(first.candidate_id, actor=ALICE_ACTOR, key="a1")
    second = await add_turn(store, user_id=KEPT, user_name="bo", text="hi", state="held", **channel)
    await corrections.approve(second.candidate_id, actor=ALICE_ACTOR, key="a2")

    async def records() -> dict[str, dict]:
        return {
            record["record_id"]: record
            async for _, record in iter_records(
                sessions, "trl-sft", ExportFilter(), pseudonym_secret=SECRET
            )
        }

    before = await records()
    assert len(before) == 2 and any("secret" in json.dumps(r) for r in before.values())
    await store.delete_data_for_user(requester="user", user_id=ERASED)
    feed = await read_feed(sessions, after=0, limit=10_000, pseudonym_secret=SECRET)
    named = {t["record_id"] for t in feed.tombstones}
    after = await records()
    assert set(before) <= named  # the erased turn's record and the stale one
    (kept_id, kept) = next(iter(after.items()))
    assert kept_id in before and "secret" not in json.dumps(kept)
    assert ERASED_TEXT in json.dumps(kept)


async def test_context_messages_quoting_the_erased_user_are_scrubbed(
    db_engine: AsyncEngine,
) -> None:
    """What memory recalled for another speaker can quote the erased user (a server channel:
    bo's memory of what ann said). That context message is scrubbed like a user message, in the
    prompt and in the copy later prompts keep, so exports and the next prompts lose the words."""
    sessions = session_factory(db_engine)
    store = ConversationStore(sessions)
    async with sessions() as session:
        session.add(GuildSetting(guild_key="discord:g", consent_default=True, updated_by="t"))
        await session.commit()
    told = "My door code is 4242."
    memory = RecallingMemory(facts_of={KEPT: (f"Ann told the room: {told}",)})
    engine = ConversationEngine(
        personas=PersonaRegistry.load(),
        store=store,
        model=FakeChatModel(replies=["Noted."]),
        memory=memory,  # type: ignore[arg-type]
        limits=EngineLimits(),
    )
    decisions, _ = decisions_for(engine, transport="discord")

    async def say(user_id: str, name: str, text: str) -> Reply:
        reply = await engine.respond(
            IncomingMessage(
                transport="discord",
                scope="channel:7",
                user_id=user_id,
                user_name=name,
                text=text,
                persona="Marlowe",
                guild_key="discord:g",
            )
        )
        assert isinstance(reply, Reply)
        await decisions.present(reply, hold=False)
        return reply

    async def snapshot_of(reply: Reply) -> PromptSnapshot:
        async with sessions() as session:
            node = await session.get(MessageNode, reply.candidate_id)
            assert node is not None
            snapshot = await session.get(PromptSnapshot, node.prompt_snapshot_id)
            assert snapshot is not None
            return snapshot

    async def record() -> dict[str, Any]:
        [only] = [
            r
            async for _, r in iter_records(
                sessions, "trl-sft", ExportFilter(), pseudonym_secret=SECRET
            )
        ]
        return only

    await say(ERASED, "ann", told)
    kept = await say(KEPT, "bo", "Hi all.")
    await CorrectionStore(sessions).rate(kept.candidate_id, actor=ALICE_ACTOR, rating=5, key="r")
    assert told in (await snapshot_of(kept)).context  # type: ignore[operator]
    assert "4242" in json.dumps(await record())

    await engine.delete_data_for_user(requester="user", user_id=ERASED)

    snapshot = await snapshot_of(kept)
    assert "4242" not in json.dumps(snapshot.messages) and snapshot.context == ERASED_TEXT
    exported = await record()
    assert "4242" not in json.dumps(exported)
    assert {"role": "system", "content": ERASED_TEXT, "name": "context"} in exported["messages"]
    later = await snapshot_of(await say(KEPT, "bo", "Still here."))
    contexts = [m["content"] for m in later.messages if m.get("name") == "context"]
    assert contexts[0] == ERASED_TEXT  # bo's first turn's, as kept


# -- the CLI: manifests and the reasons of an empty export ----------------------------------


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    for name in list(os.environ):
        if name.startswith("GREENROOM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GREENROOM_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("GREENROOM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GREENROOM_DATABASE_URL", db_url)
    monkeypatch.setenv("GREENROOM_PRIVACY__PSEUDONYM_SECRET", SECRET.decode())
    app = typer.Typer()
    app.command("export")(export_command)
    app.command("unused")(lambda: None)
    return app


def _export(app: typer.Typer, *args: str) -> str:
    result = CliRunner().invoke(app, ["export", *args])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def _in_new_loop(db_url: str, job: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
    """Run ``job`` on a loop of its own with an engine of its own (the CLI, invoked from a
    synchronous test, runs its own loop; the fixtures' engine belongs to another)."""

    async def main() -> T:
        engine = create_engine(db_url)
        try:
            return await job(session_factory(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


@pytest.fixture
async def two_users(db_engine: AsyncEngine) -> None:
    await _two_users(session_factory(db_engine))


def test_manifest_cursor_asks_the_feed_what_to_delete_from_a_file(
    cli: typer.Typer, two_users: None, db_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "kto.jsonl"
    stdout = _export(cli, "--format", "trl-kto", "--out", str(out), "--split", "a=0.5,b=0.5")
    held: dict[str, set[str]] = {}
    for name in ("a", "b"):
        path = tmp_path / f"kto.{name}.jsonl"
        manifest = json.loads((tmp_path / f"kto.{name}.jsonl.manifest.json").read_text())
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert manifest["records"] == len(lines)
        assert manifest["format"] == "trl-kto" and manifest["split"] == name
        assert manifest["filters"]["min_rating"] is None and manifest["greenroom_version"]
        assert f"(manifest: {path.name}.manifest.json)" in stdout
        held.setdefault(manifest["erasure_cursor"], set()).update(
            line["record_id"] for line in lines
        )
    (cursor,) = held  # one cursor for the files of one export

    async def erase_then_read(sessions: async_sessionmaker[AsyncSession]) -> Any:
        await ConversationStore(sessions).delete_data_for_user(requester="user", user_id=ERASED)
        survivors = {
            record["record_id"]
            async for _, record in iter_records(
                sessions, "trl-kto", ExportFilter(), pseudonym_secret=SECRET
            )
        }
        feed = await read_feed(
            sessions, after=decode_feed_cursor(cursor), limit=10_000, pseudonym_secret=SECRET
        )
        return survivors, feed

    survivors, feed = _in_new_loop(db_url, erase_then_read)
    erased_user = pseudonym(ERASED, SECRET, prefix="user")
    named = {t["record_id"] for t in feed.tombstones if t["user"] == erased_user}
    # what the trainer must delete from its files is exactly what the user's erasure removed
    assert held[cursor] - survivors == held[cursor] & named
    assert held[cursor] & named and survivors and not survivors & named


@pytest.fixture
async def unexportable(db_engine: AsyncEngine) -> None:
    """Three reviewed turns of a DM user who never said yes; one unreviewed of a user who did."""
    sessions = session_factory(db_engine)
    store, corrections = ConversationStore(sessions), CorrectionStore(sessions)
    for n in range(3):
        turn = await add_turn(store, user_id="discord:5", text=f"q{n}", state="held")
        await corrections.approve(turn.candidate_id, actor=ALICE_ACTOR, key=f"a{n}")
    await set_consent(sessions, "discord:6", True)
    await add_turn(store, user_id="discord:6", text="hey", state="sent")


def test_an_empty_export_says_why(cli: typer.Typer, unexportable: None, tmp_path: Path) -> None:
    out = tmp_path / "sft.jsonl"
    stdout = _export(cli, "--format", "openai-sft", "--out", str(out))
    assert f"wrote 0 openai-sft records to {out}" in stdout
    assert "4 user turns gave no openai-sft record:" in stdout
    assert "3 no consent: a DM or terminal turn needs the user's yes; see /consent" in stdout
    assert "1 no actor reviewed the replies; review them in the actor console" in stdout
    manifest = json.loads((tmp_path / "sft.jsonl.manifest.json").read_text())
    assert manifest["turns_skipped"] == {"no_consent_dm": 3, "unreviewed": 1}
    # a preference format also counts turns with a single reply
    stdout = _export(cli, "--format", "trl-dpo", "--out", str(tmp_path / "dpo.jsonl"))
    assert "1 only one reply: a preference pair needs two" in stdout
    # a filter that matches nothing says so
    stdout = _export(cli, "--format", "oasst", "--out", str(out), "--persona", "Nobody")
    assert "0 records: no user turn matches --since/--until/--persona (4 stored turns" in stdout


def test_record_ids_are_keyed_hashes_of_every_key_a_turn_could_give() -> None:
    import hashlib
    import hmac

    from feedback.record_ids import keys_of_turn, record_id

    keys = list(keys_of_turn(7, [3, 1, 2, 2]))
    assert len(keys) == len(set(keys)) == 3 * 3 + 3 + 1
    assert {"oasst:7", "sft:7:1", "kto:7:3", "dpo:7:1:3", "dpo:7:3:1"} <= set(keys)
    expected = hmac.new(SECRET, b"dpo:7:1:3", hashlib.sha256).hexdigest()[:20]
    assert record_id("dpo:7:1:3", SECRET) == f"rec_{expected}"
    assert record_id("dpo:7:1:3", b"another-secret-0123") != record_id("dpo:7:1:3", SECRET)
