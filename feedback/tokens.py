"""Trainers' API tokens: created once in plain text, stored only as a SHA-256 hash.

A token looks like ``grt_`` followed by 43 URL-safe characters (256 random bits). It is shown
once, when created; the database keeps its SHA-256 hex digest, so a leaked database does not leak
usable tokens. Verification hashes what the client sent and looks the digest up: the comparison
happens on a hash of 256 random bits, so timing reveals nothing useful about a valid token.

Validity is never cached: every request reads the token's row, so a revoked token stops working
with the next request.

Scopes: ``read`` (page corrections, read stats) and ``lease`` (also claim and acknowledge
batches); ``lease`` includes ``read``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from feedback.models import ApiToken

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = [
    "SCOPES",
    "TOKEN_PREFIX",
    "TokenError",
    "create_token",
    "has_scope",
    "hash_token",
    "list_tokens",
    "revoke_token",
    "verify_token",
]

_log = logging.getLogger(__name__)

#: Scopes from weakest to strongest; each includes the ones before it.
SCOPES = ("read", "lease")
#: Every token starts with this, so a leaked one is easy to recognise (and to scan for).
TOKEN_PREFIX = "grt_"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Longer than any token we issue; anything longer is refused without hashing it.
_MAX_TOKEN_CHARS = 128


class TokenError(ValueError):
    """A token command's input is wrong (bad name or scope, duplicate, unknown name)."""


def hash_token(plaintext: str) -> str:
    """The SHA-256 hex digest stored for a token."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def has_scope(granted: str, needed: str) -> bool:
    """Whether a token with scope ``granted`` may do what needs ``needed``."""
    return SCOPES.index(granted) >= SCOPES.index(needed)


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise TokenError(
            f"invalid token name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-'"
        )
    return name


async def create_token(
    sessions: async_sessionmaker[AsyncSession], name: str, scope: str = "read"
) -> str:
    """Create a token and return its plain text; this is the only time it can be read."""
    _check_name(name)
    if scope not in SCOPES:
        raise TokenError(f"unknown scope {scope!r}; use one of: {', '.join(SCOPES)}")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with sessions() as session:
        session.add(ApiToken(name=name, token_hash=hash_token(plaintext), scope=scope))
        try:
            await session.commit()
        except IntegrityError:
            raise TokenError(
                f"a token named {name!r} already exists; pick another name "
                "(names stay taken after a revoke, so the logs keep meaning one token)"
            ) from None
    _log.info("created API token %r with scope %s", name, scope)
    return plaintext


async def revoke_token(sessions: async_sessionmaker[AsyncSession], name: str) -> ApiToken:
    """Revoke a token by name; it stops working with the next request. Revoking twice is
    harmless and keeps the first revocation time."""
    async with sessions() as session:
        await session.execute(
            update(ApiToken)
            .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        await session.commit()
        token = await session.scalar(select(ApiToken).where(ApiToken.name == name))
    if token is None:
        raise TokenError(f"no token named {name!r}; see `greenroom tokens list`")
    _log.info("revoked API token %r", name)
    return token


async def list_tokens(sessions: async_sessionmaker[AsyncSession]) -> list[ApiToken]:
    """Every token, revoked ones included, oldest first."""
    async with sessions() as session:
        return list((await session.scalars(select(ApiToken).order_by(ApiToken.id))).all())


async def verify_token(
    sessions: async_sessionmaker[AsyncSession], plaintext: str
) -> ApiToken | None:
    """The live token matching ``plaintext``, or ``None`` if unknown or revoked.

    Reads the database every time (no cache), so a revocation applies to the next request.
    A revoked token's use is logged with its name.
    """
    if not plaintext.startswith(TOKEN_PREFIX) or len(plaintext) > _MAX_TOKEN_CHARS:
        return None
    async with sessions() as session:
        token = await session.scalar(
            select(ApiToken).where(ApiToken.token_hash == hash_token(plaintext))
        )
    if token is None:
        return None
    if token.revoked_at is not None:
        _log.warning(
            "refused revoked API token %r (revoked at %s)",
            token.name,
            token.revoked_at.isoformat(timespec="seconds"),
        )
        return None
    return token
