"""API tokens: shown once, stored hashed, scoped, and dead from the moment they are revoked."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from feedback.database import session_factory
from feedback.models import ApiToken
from feedback.tokens import (
    TokenError,
    create_token,
    has_scope,
    hash_token,
    list_tokens,
    revoke_token,
    verify_token,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker


@pytest.fixture
def sessions(db_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(db_engine)


async def test_token_is_returned_once_and_stored_hashed(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    token = await create_token(sessions, "trainer-1", "lease")
    assert token.startswith("grt_")
    assert len(token) == 4 + 43
    async with sessions() as session:
        row = await session.scalar(select(ApiToken).where(ApiToken.name == "trainer-1"))
    assert row is not None
    assert row.token_hash == hash_token(token)
    assert token not in (row.token_hash, row.name)
    verified = await verify_token(sessions, token)
    assert verified is not None
    assert (verified.name, verified.scope) == ("trainer-1", "lease")


async def test_two_tokens_differ(sessions: async_sessionmaker[AsyncSession]) -> None:
    assert await create_token(sessions, "a") != await create_token(sessions, "b")


@pytest.mark.parametrize("plaintext", ["", "grt_", "grt_wrong", "nope", "grt_" + "x" * 500])
async def test_unknown_tokens_are_refused(
    sessions: async_sessionmaker[AsyncSession], plaintext: str
) -> None:
    await create_token(sessions, "real")
    assert await verify_token(sessions, plaintext) is None


async def test_revoked_token_stops_at_once_and_is_logged(
    sessions: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    token = await create_token(sessions, "leaky", "read")
    assert await verify_token(sessions, token) is not None
    revoked = await revoke_token(sessions, "leaky")
    assert revoked.revoked_at is not None
    with caplog.at_level(logging.WARNING, logger="feedback.tokens"):
        assert await verify_token(sessions, token) is None
    assert "refused revoked API token 'leaky'" in caplog.text
    again = await revoke_token(sessions, "leaky")
    assert again.revoked_at == revoked.revoked_at


async def test_duplicate_name_is_a_clear_error(sessions: async_sessionmaker[AsyncSession]) -> None:
    await create_token(sessions, "dup")
    await revoke_token(sessions, "dup")
    with pytest.raises(TokenError, match="a token named 'dup' already exists"):
        await create_token(sessions, "dup")


@pytest.mark.parametrize("name", ["", "x" * 65, "has space", "semi;colon", "émile"])
async def test_bad_names(sessions: async_sessionmaker[AsyncSession], name: str) -> None:
    with pytest.raises(TokenError, match="invalid token name"):
        await create_token(sessions, name)


async def test_bad_scope(sessions: async_sessionmaker[AsyncSession]) -> None:
    with pytest.raises(TokenError, match="unknown scope 'admin'; use one of: read, lease"):
        await create_token(sessions, "x", "admin")


async def test_revoke_unknown(sessions: async_sessionmaker[AsyncSession]) -> None:
    with pytest.raises(TokenError, match="no token named 'ghost'"):
        await revoke_token(sessions, "ghost")


async def test_list_keeps_revoked(sessions: async_sessionmaker[AsyncSession]) -> None:
    await create_token(sessions, "one")
    await create_token(sessions, "two.v2", "lease")
    await revoke_token(sessions, "one")
    listed = [(t.name, t.scope, t.revoked_at is not None) for t in await list_tokens(sessions)]
    assert listed == [("one", "read", True), ("two.v2", "lease", False)]


def test_lease_scope_includes_read() -> None:
    assert has_scope("lease", "read")
    assert has_scope("lease", "lease")
    assert has_scope("read", "read")
    assert not has_scope("read", "lease")
