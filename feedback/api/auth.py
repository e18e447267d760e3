"""Bearer-token authentication and scopes for the trainer API.

Every request looks its token up in the database (no cache), so a revoked token is refused from
the next request on. Refusals are logged with the token's name when it is known.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from feedback.api.errors import ApiError
from feedback.tokens import has_scope, verify_token

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from feedback.models import ApiToken

__all__ = ["require_scope"]

_log = logging.getLogger(__name__)

_bearer = HTTPBearer(
    auto_error=False,
    description="A token from `greenroom tokens create --name NAME [--scope read|lease]`.",
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def require_scope(scope: str) -> Callable[..., Awaitable[ApiToken]]:
    """A dependency giving the request's live token, which must have ``scope`` (or more).

    401 (with ``WWW-Authenticate: Bearer``) when the token is missing, unknown or revoked;
    403 when its scope is too small.
    """

    async def authenticated(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiToken:
        where = f"{request.method} {request.url.path}"
        if credentials is None:
            _log.info("refused %s: no bearer token", where)
            raise ApiError(
                401,
                "missing bearer token: send 'Authorization: Bearer <token>'",
                headers=_CHALLENGE,
            )
        token = await verify_token(request.app.state.sessions, credentials.credentials)
        if token is None:
            _log.warning("refused %s: unknown or revoked token", where)
            raise ApiError(401, "invalid or revoked token", headers=_CHALLENGE)
        if not has_scope(token.scope, scope):
            _log.warning(
                "refused %s: token %r has scope %s, needs %s", where, token.name, token.scope, scope
            )
            raise ApiError(
                403,
                f"token {token.name!r} has scope {token.scope!r}; this needs {scope!r} "
                f"(create one with `greenroom tokens create --name NAME --scope {scope}`)",
            )
        return token

    return authenticated
