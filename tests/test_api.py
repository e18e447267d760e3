"""The trainer HTTP API over both databases: auth, JSON errors, paging, leases and docs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import select

from feedback.api import create_app
from feedback.api.schemas import Format
from feedback.database import session_factory
from feedback.exports import FORMATS
from feedback.models import UserPrivacy
from feedback.tokens import create_token, revoke_token
from tests.factories import ALICE_ACTOR, BOB_ACTOR, add_turn, stores
from tests.test_queue import expire, seed_events

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

SECRET = b"test-pseudonym-secret-0123456789"


@dataclass
class Api:
    client: httpx.AsyncClient
    sessions: async_sessionmaker[AsyncSession]
    read: dict[str, str]
    lease: dict[str, str]

    async def get(self, url: str, token: dict[str, str] | None = None, **params: Any) -> Any:
        return await self.client.get(url, params=params, headers=token or self.read)

    async def post(self, url: str, body: Any = None, token: dict[str, str] | None = None) -> Any:
        return await self.client.post(url, json=body, headers=token or self.lease)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def api(db_engine: AsyncEngine) -> AsyncIterator[Api]:
    sessions = session_factory(db_engine)
    app = create_app(sessions, pseudonym_secret=SECRET)
    read = bearer(await create_token(sessions, "reader", "read"))
    lease = bearer(await create_token(sessions, "trainer", "lease"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield Api(client, sessions, read, lease)


def assert_error(response: httpx.Response, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    for fragment in fragments:
        assert fragment in error["message"], error["message"]


async def consent(sessions: async_sessionmaker[AsyncSession], *user_ids: str) -> None:
    """These users allow training use of what they said."""
    async with sessions() as session:
        session.add_all(UserPrivacy(user_id=user_id, consent=True) for user_id in user_ids)
        await session.commit()


async def add_corrections(sessions: async_sessionmaker[AsyncSession], count: int) -> None:
    """``count`` user turns by consenting users, each approved or rewritten by an actor."""
    conversations, corrections = stores(sessions)
    async with sessions() as session:
        known = set((await session.scalars(select(UserPrivacy.user_id))).all())
    await consent(sessions, *({f"discord:{n}" for n in range(4)} - known))
    for n in range(count):
        turn = await add_turn(
            conversations, user_id=f"discord:{n % 4}", text=f"question {n}", reply=f"answer {n}"
        )
        if n % 2:
            await corrections.approve(
                turn.candidate_id, actor=ALICE_ACTOR, key=f"k{turn.candidate_id}"
            )
        else:
            await corrections.rewrite(
                turn.candidate_id,
                actor=BOB_ACTOR,
                text=f"better answer {n}",
                key=f"k{turn.candidate_id}",
            )


# -- authentication ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing bearer token"),
        (bearer("grt_not-a-real-token"), "invalid or revoked token"),
    ],
)
async def test_401_without_a_valid_token(api: Api, headers: dict[str, str], message: str) -> None:
    response = await api.client.get("/v1/stats", headers=headers)
    assert_error(response, 401, "unauthorized", message)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_revoked_token_refused_immediately_and_logged(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    token = bearer(await create_token(api.sessions, "soon-gone", "lease"))
    assert (await api.get("/v1/stats", token)).status_code == 200
    await revoke_token(api.sessions, "soon-gone")
    with caplog.at_level(logging.WARNING):
        response = await api.get("/v1/stats", token)
        lease = await api.post("/v1/leases", {"job": "j"}, token)
    assert_error(response, 401, "unauthorized", "invalid or revoked token")
    assert_error(lease, 401, "unauthorized")
    assert "refused revoked API token 'soon-gone'" in caplog.text


async def test_403_for_read_token_on_leases(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        response = await api.post("/v1/leases", {"job": "j"}, api.read)
    assert_error(response, 403, "forbidden", "token 'reader' has scope 'read'", "'lease'")
    assert "token 'reader' has scope read, needs lease" in caplog.text
    assert_error(
        await api.post("/v1/leases/0b9c1f8e-6d3c-4c1b-9a55-2a0d0c7f4e11/ack", None, api.read),
        403,
        "forbidden",
    )


async def test_lease_token_may_read(api: Api) -> None:
    response = await api.get("/v1/corrections", api.lease, format="trl-sft")
    assert response.status_code == 200


# -- bad parameters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "fragments"),
    [
        ({"format": "openai-sft", "limit": 0}, ("query parameter limit", "greater than or equal")),
        ({"format": "openai-sft", "limit": 10_001}, ("query parameter limit", "10000")),
        ({"format": "openai-sft", "limit": "ten"}, ("query parameter limit",)),
        ({"format": "csv"}, ("query parameter format", "openai-sft")),
        ({}, ("query parameter format", "Field required")),
        ({"format": "oasst", "cursor": "%%%"}, ("query parameter cursor", "not one this API")),
        ({"format": "oasst", "cursor": "eyJ4IjoxfQ"}, ("query parameter cursor",)),
        ({"format": "oasst", "cursor": "x" * 201}, ("query parameter cursor",)),
        ({"format": "oasst", "min_rating": 6}, ("query parameter min_rating",)),
        ({"format": "oasst", "tag": "shiny"}, ("unknown tag 'shiny'",)),
        (
            {"format": "oasst", "since": "2025-02-01", "until": "2025-01-01"},
            ("time range is empty",),
        ),
        ({"format": "oasst", "since": "yesterday"}, ("query parameter since",)),
    ],
)
async def test_422_for_bad_page_parameters(
    api: Api, params: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    response = await api.get("/v1/corrections", **params)
    assert_error(response, 422, "invalid_request", *fragments)


async def test_cursor_of_another_format_is_refused(api: Api) -> None:
    await add_corrections(api.sessions, 3)
    first = (await api.get("/v1/corrections", format="trl-sft", limit=1)).json()
    response = await api.get("/v1/corrections", format="trl-dpo", cursor=first["next_cursor"])
    assert_error(response, 422, "invalid_request", "belongs to format 'trl-sft'")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"job": "j", "limit": 0}, "body parameter limit"),
        ({"job": "j", "limit": 10_001}, "body parameter limit"),
        ({"job": "j", "ttl_seconds": 5}, "body parameter ttl_seconds"),
        ({"job": "j", "ttl_seconds": 86_401}, "body parameter ttl_seconds"),
        ({"job": ""}, "body parameter job"),
        ({"limit": 5}, "body parameter job"),
        ({"job": "j", "surprise": 1}, "body parameter surprise"),
        (None, "body"),
    ],
)
async def test_422_for_bad_lease_bodies(api: Api, body: Any, fragment: str) -> None:
    assert_error(await api.post("/v1/leases", body), 422, "invalid_request", fragment)


async def test_bad_lease_ids(api: Api) -> None:
    assert_error(
        await api.post("/v1/leases/not-a-uuid/ack"), 422, "invalid_request", "path parameter"
    )
    assert_error(
        await api.post("/v1/leases/0b9c1f8e-6d3c-4c1b-9a55-2a0d0c7f4e11/ack"),
        404,
        "not_found",
        "no lease",
    )


async def test_unknown_route_is_a_json_404(api: Api) -> None:
    assert_error(await api.get("/v2/nothing"), 404, "not_found")


# -- paging ------------------------------------------------------------------------------


async def fetch_all(
    api: Api, fmt: str, limit: int, cursor: str | None = None
) -> tuple[list[Any], str | None]:
    """Every page from ``cursor`` until ``has_more`` is false."""
    records: list[Any] = []
    while True:
        params: dict[str, Any] = {"format": fmt, "limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        body = (await api.get("/v1/corrections", **params)).json()
        records.extend(body["records"])
        cursor = body["next_cursor"]
        if not body["has_more"]:
            return records, cursor


async def test_pages_are_stable_and_complete_while_events_arrive(api: Api) -> None:
    await add_corrections(api.sessions, 12)
    seen: list[Any] = []
    cursor = None
    for _ in range(3):
        params: dict[str, Any] = {"format": "trl-sft", "limit": 4}
        if cursor:
            params["cursor"] = cursor
        body = (await api.get("/v1/corrections", **params)).json()
        seen.extend(body["records"])
        cursor = body["next_cursor"]
        await add_corrections(api.sessions, 2)  # new events arrive between pages
    rest, cursor = await fetch_all(api, "trl-sft", 5, cursor)
    seen.extend(rest)
    everything, _ = await fetch_all(api, "trl-sft", 10_000)
    assert len(everything) == 18
    assert seen == everything  # same order, nothing missed, nothing twice
    later, _ = await fetch_all(api, "trl-sft", 100, cursor)
    assert later == []
    await add_corrections(api.sessions, 1)
    newer, _ = await fetch_all(api, "trl-sft", 100, cursor)
    assert len(newer) == 1  # polling with the last cursor yields only what is new


async def test_page_records_are_export_records(api: Api) -> None:
    await add_corrections(api.sessions, 2)
    body = (await api.get("/v1/corrections", format="openai-dpo", limit=10)).json()
    assert body["has_more"] is False
    for record in body["records"]:
        assert set(record) >= {"input", "preferred_output", "non_preferred_output"}
    sft = (await api.get("/v1/corrections", format="trl-sft", limit=1)).json()
    assert sft["has_more"] is True
    assert sft["records"][0]["messages"][-1]["role"] == "assistant"


async def test_empty_page(api: Api) -> None:
    body = (await api.get("/v1/corrections", format="oasst")).json()
    manifest = body.pop("manifest")
    assert body == {"records": [], "next_cursor": None, "has_more": False}
    assert manifest["format"] == "oasst" and manifest["records"] == 0


# -- leases ------------------------------------------------------------------------------


async def test_lease_and_ack(api: Api) -> None:
    await add_corrections(api.sessions, 3)
    response = await api.post("/v1/leases", {"job": "sft-run", "limit": 2, "ttl_seconds": 60})
    assert response.status_code == 200, response.text
    lease = response.json()
    assert lease["job"] == "sft-run"
    assert [r["kind"] for r in lease["records"]] == ["rewrite", "approve"]
    record = lease["records"][0]
    assert record["candidate_text"] == "answer 0"
    assert record["new_text"] == "better answer 0"
    assert record["prompt"][-1] == {"role": "user", "content": "question 0"}
    assert BOB_ACTOR.id not in response.text  # actors are pseudonymised
    assert len(record["actor"]) == len("actor_") + 12
    stats = (await api.get("/v1/stats")).json()
    assert (stats["leased"], stats["available"], stats["live_leases"]) == (2, 1, 1)

    acked = await api.post(f"/v1/leases/{lease['lease_id']}/ack")
    assert acked.status_code == 200
    assert acked.json()["consumed"] == 2
    assert acked.json()["already_acked"] is False
    retry = (await api.post(f"/v1/leases/{lease['lease_id']}/ack")).json()
    assert (retry["consumed"], retry["already_acked"]) == (0, True)
    stats = (await api.get("/v1/stats")).json()
    assert (stats["consumed"], stats["available"]) == (2, 1)
    assert stats["by_kind"]["approve"]["consumed"] == 1


async def test_lease_records_are_redacted_and_respect_consent(api: Api) -> None:
    conversations, corrections = stores(api.sessions)
    await consent(api.sessions, "discord:yes")
    said_yes = await add_turn(
        conversations, user_id="discord:yes", user_name="Ann", text="mail ann@example.com"
    )
    said_nothing = await add_turn(conversations, user_id="discord:no", text="my secret")
    for turn in (said_yes, said_nothing):
        await corrections.rewrite(
            turn.candidate_id, actor=ALICE_ACTOR, text="Noted, Ann.", key=f"r{turn.candidate_id}"
        )
    response = await api.post("/v1/leases", {"job": "j"})
    yes, no = response.json()["records"]
    assert yes["consented"] is True
    assert yes["prompt"][-1]["content"] == "mail [email]"
    assert yes["new_text"].startswith("Noted, name_")
    assert yes["user"].startswith("user_")
    assert yes["actor"].startswith("actor_")
    assert no["consented"] is False
    assert (no["prompt"], no["new_text"], no["original_text"], no["candidate_text"]) == (
        None,
        None,
        None,
        None,
    )
    assert no["kind"] == "rewrite"
    assert "my secret" not in response.text
    assert "ann@example.com" not in response.text


def test_format_choices_match_the_exports() -> None:
    assert Format.__args__ == FORMATS  # type: ignore[attr-defined]


async def test_empty_queue_lease(api: Api) -> None:
    body = (await api.post("/v1/leases", {"job": "j"})).json()
    assert body["lease_id"] is None
    assert body["records"] == []


async def test_expired_lease_returns_to_queue_and_ack_is_409(api: Api) -> None:
    ids = await seed_events(api.sessions, 3)
    first = (await api.post("/v1/leases", {"job": "slow", "ttl_seconds": 30})).json()
    assert (await api.post("/v1/leases", {"job": "fast"})).json()["records"] == []
    await expire(api.sessions, first["lease_id"])
    second = (await api.post("/v1/leases", {"job": "fast"})).json()
    assert [r["event_id"] for r in second["records"]] == ids
    late = await api.post(f"/v1/leases/{first['lease_id']}/ack")
    assert_error(late, 409, "conflict", "expired", "claim a new batch")
    assert (await api.post(f"/v1/leases/{second['lease_id']}/ack")).json()["consumed"] == 3


# -- service -----------------------------------------------------------------------------


async def test_docs_openapi_and_health_need_no_token(api: Api) -> None:
    docs = await api.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    spec = (await api.client.get("/openapi.json")).json()
    assert {"/v1/corrections", "/v1/leases", "/v1/leases/{lease_id}/ack", "/v1/stats"} <= set(
        spec["paths"]
    )
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}


def test_short_pseudonym_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        create_app(None, pseudonym_secret=b"short")  # type: ignore[arg-type]
