"""The REST half of the fake Discord server: routing, recording, faults, rate limits, handlers.

Every request under `/api/v10` is recorded before it is handled. Routes are matched against
templates named like discord.py's `Route` paths ("/channels/{channel_id}/messages"); a path
no template matches answers Discord's 404 body and keeps `route=None` in the record.
Responses carry Discord's rate-limit headers (X-RateLimit-Limit/Remaining/Reset/Reset-After/
Bucket/Scope) and `Via`, which discord.py requires before it trusts a 429.

Validation mirrors the Discord errors a bot is most likely to hit: content over 2,000
characters, empty messages, more than 10 embeds, an embed description over 4,096 characters,
a custom_id over 100 characters, a second callback to one interaction, a callback after the
interaction's deadline.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from .models import Channel, ChannelType, Webhook

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .server import DiscordTestServer, Fault, InteractionRecord, RecordedRequest

__all__ = ("ROUTES", "HTTPError", "RestApi")

ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/gateway", "get_gateway"),
    ("GET", "/gateway/bot", "get_gateway_bot"),
    ("GET", "/users/@me", "get_me"),
    ("POST", "/users/@me/channels", "create_dm"),
    ("GET", "/users/{user_id}", "get_user"),
    ("GET", "/oauth2/applications/@me", "get_application"),
    ("GET", "/applications/@me", "get_application"),
    ("GET", "/applications/{application_id}/commands", "get_global_commands"),
    ("PUT", "/applications/{application_id}/commands", "put_global_commands"),
    ("GET", "/applications/{application_id}/guilds/{guild_id}/commands", "get_guild_commands"),
    ("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", "put_guild_commands"),
    ("GET", "/channels/{channel_id}", "get_channel"),
    ("GET", "/channels/{channel_id}/messages", "get_messages"),
    ("POST", "/channels/{channel_id}/messages", "create_message"),
    ("GET", "/channels/{channel_id}/messages/{message_id}", "get_message"),
    ("PATCH", "/channels/{channel_id}/messages/{message_id}", "edit_message"),
    ("DELETE", "/channels/{channel_id}/messages/{message_id}", "delete_message"),
    (
        "PUT",
        "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
        "add_reaction",
    ),
    ("POST", "/channels/{channel_id}/messages/{message_id}/threads", "start_thread_from_message"),
    ("POST", "/channels/{channel_id}/threads", "start_thread"),
    ("PUT", "/channels/{channel_id}/thread-members/{user_id}", "add_thread_member"),
    ("POST", "/channels/{channel_id}/typing", "typing"),
    ("GET", "/channels/{channel_id}/webhooks", "get_channel_webhooks"),
    ("POST", "/channels/{channel_id}/webhooks", "create_webhook"),
    ("GET", "/guilds/{guild_id}", "get_guild"),
    ("GET", "/guilds/{guild_id}/channels", "get_guild_channels"),
    ("GET", "/guilds/{guild_id}/roles", "get_roles"),
    ("GET", "/guilds/{guild_id}/members", "get_members"),
    ("GET", "/guilds/{guild_id}/members/{user_id}", "get_member"),
    ("PUT", "/guilds/{guild_id}/members/{user_id}/roles/{role_id}", "add_member_role"),
    ("DELETE", "/guilds/{guild_id}/members/{user_id}/roles/{role_id}", "remove_member_role"),
    ("POST", "/interactions/{interaction_id}/{interaction_token}/callback", "interaction_callback"),
    ("GET", "/webhooks/{webhook_id}", "get_webhook"),
    ("PATCH", "/webhooks/{webhook_id}", "modify_webhook"),
    ("GET", "/webhooks/{webhook_id}/{webhook_token}", "get_webhook_with_token"),
    ("POST", "/webhooks/{webhook_id}/{webhook_token}", "execute_webhook"),
    ("GET", "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}", "get_webhook_message"),
    (
        "PATCH",
        "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
        "edit_webhook_message",
    ),
    (
        "DELETE",
        "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
        "delete_webhook_message",
    ),
]

# Requests that need no bot token, as on Discord.
_NO_AUTH = {"interaction_callback", "execute_webhook", "get_webhook_with_token"} | {
    "get_webhook_message",
    "edit_webhook_message",
    "delete_webhook_message",
}
_MAJOR_PARAMETERS = ("channel_id", "guild_id", "webhook_id", "webhook_token", "interaction_id")
_RECORDED_HEADERS = ("Authorization", "User-Agent", "Content-Type", "X-Audit-Log-Reason")
_UPLOADS = web.RequestKey("uploads", dict)
EPHEMERAL = 1 << 6
LOADING = 1 << 7


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
    return re.compile(f"^{pattern}$")


_COMPILED = [
    (method, template, _compile(template), handler) for method, template, handler in ROUTES
]


class HTTPError(Exception):
    """A Discord-style error answer: status, JSON error code and message."""

    def __init__(
        self, status: int, code: int, message: str, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return body


def _invalid_form(field: str, code: str, message: str) -> HTTPError:
    errors: dict[str, Any] = {}
    node = errors
    parts = field.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = {"_errors": [{"code": code, "message": message}]}
    return HTTPError(400, 50035, "Invalid Form Body", errors)


def _image_data(value: Any, field: str) -> tuple[str | None, bytes | None]:
    """An avatar given as image data (``data:image/png;base64,...``): its hash and bytes."""
    if value is None:
        return None, None
    match = re.fullmatch(r"data:image/(png|jpeg|gif|webp);base64,([A-Za-z0-9+/=]+)", str(value))
    if match is None:
        raise _invalid_form(field, "IMAGE_INVALID", "Invalid image data")
    image = base64.b64decode(match.group(2))
    return hashlib.md5(image).hexdigest(), image


def _unknown(kind: str, code: int) -> HTTPError:
    return HTTPError(404, code, f"Unknown {kind}")


class _Bucket:
    """A fixed-window counter for one route bucket and major parameter."""

    def __init__(self, limit: int, per: float) -> None:
        self.limit = limit
        self.per = per
        self.window_start = time.monotonic()
        self.used = 0

    def take(self) -> tuple[bool, int, float]:
        """Use one request; returns (allowed, remaining, seconds until the window resets)."""
        now = time.monotonic()
        if now - self.window_start >= self.per:
            self.window_start = now
            self.used = 0
        reset_after = max(0.0, self.per - (now - self.window_start))
        if self.used >= self.limit:
            return False, 0, reset_after
        self.used += 1
        return True, self.limit - self.used, reset_after


class RestApi:
    """Routes `/api/v10/...` requests to handlers that read and change the server's world."""

    def __init__(self, server: DiscordTestServer) -> None:
        self.server = server
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._route_limits: dict[tuple[str, str], tuple[int, float]] = {}

    def set_rate_limit(self, method: str, route: str, limit: int, per: float) -> None:
        """Use `limit` requests per `per` seconds for one route (e.g. 5 per 5 s for messages)."""
        self.server._check_route(method, route)
        if limit < 1 or per <= 0:
            raise ValueError("a rate limit needs at least 1 request per a positive duration")
        self._route_limits[(method.upper(), route)] = (limit, per)

    # -- entry points --------------------------------------------------------------------

    async def handle_outside_api(self, request: web.Request) -> web.Response:
        record = await self._record(request, f"/{request.match_info['tail']}", None, {})
        return self._respond(record, 404, {"message": "404: Not Found", "code": 0}, {})

    async def handle(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        method = request.method.upper()
        matched: tuple[str, str, dict[str, str]] | None = None
        method_mismatch = False
        for route_method, template, pattern, handler in _COMPILED:
            found = pattern.match(path)
            if found is None:
                continue
            if route_method != method:
                method_mismatch = True
                continue
            matched = (template, handler, found.groupdict())
            break
        if matched is None:
            record = await self._record(request, path, None, {})
            if method_mismatch:
                return self._respond(
                    record, 405, {"message": "405: Method Not Allowed", "code": 0}, {}
                )
            return self._respond(record, 404, {"message": "404: Not Found", "code": 0}, {})
        template, handler_name, params = matched
        record = await self._record(request, path, template, params)

        if handler_name not in _NO_AUTH:
            expected = f"Bot {self.server.bot_token}"
            if record.headers.get("Authorization") != expected:
                return self._respond(record, 401, {"message": "401: Unauthorized", "code": 0}, {})

        major = ":".join(params.get(name, "") for name in _MAJOR_PARAMETERS)
        bucket_hash = hashlib.sha1(f"{method} {template}".encode()).hexdigest()[:32]
        fault = self._take_fault(method, template)
        if fault is not None:
            return self._fault_response(record, fault, bucket_hash)

        limit, per = self._route_limits.get((method, template), self.server.default_rate_limit)
        bucket = self._buckets.setdefault((bucket_hash, major), _Bucket(limit, per))
        allowed, remaining, reset_after = bucket.take()
        headers = _rate_limit_headers(limit, remaining, reset_after, bucket_hash)
        if not allowed:
            headers["Retry-After"] = str(max(1, math.ceil(reset_after)))
            headers["X-RateLimit-Scope"] = "user"
            body = {
                "message": "You are being rate limited.",
                "retry_after": round(reset_after, 3),
                "global": False,
            }
            return self._respond(record, 429, body, headers)

        handler: Callable[[web.Request, RecordedRequest], Awaitable[Any]] = getattr(
            self, f"_{handler_name}"
        )
        try:
            result = await handler(request, record)
        except HTTPError as exc:
            return self._respond(record, exc.status, exc.body(), headers)
        if result is None:
            return self._respond(record, 204, None, headers)
        return self._respond(record, 200, result, headers)

    async def _record(
        self, request: web.Request, path: str, template: str | None, params: dict[str, str]
    ) -> RecordedRequest:
        from .server import RecordedRequest

        received_ns = time.perf_counter_ns()
        received_at = datetime.datetime.now(datetime.UTC)
        body: Any = None
        files: list[tuple[str, str, int]] = []
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            uploads: dict[str, tuple[str, str, bytes]] = {}
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    continue
                data = await part.read(decode=False)
                name = part.name or ""
                if name == "payload_json":
                    body = json.loads(data)
                else:
                    filename = part.filename or name
                    content_type = part.headers.get("Content-Type", "application/octet-stream")
                    uploads[name] = (filename, content_type, bytes(data))
                    files.append((name, filename, len(data)))
            request[_UPLOADS] = uploads
        elif request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
        record = RecordedRequest(
            method=request.method.upper(),
            path=path,
            route=template,
            params=params,
            query=dict(request.query),
            json=body,
            files=files,
            headers={h: request.headers[h] for h in _RECORDED_HEADERS if h in request.headers},
            received_ns=received_ns,
            received_at=received_at,
        )
        self.server.requests.append(record)
        return record

    def _respond(
        self, record: RecordedRequest, status: int, body: Any, headers: dict[str, str]
    ) -> web.Response:
        record.status = status
        record.response = body
        headers = {**headers, "Via": "1.1 google"}
        self.server.notify_waiters()
        if body is None:
            return web.Response(status=status, headers=headers)
        if isinstance(body, str):
            return web.Response(status=status, text=body, content_type="text/html", headers=headers)
        return web.Response(
            status=status,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers=headers,
        )

    # -- faults --------------------------------------------------------------------------

    def _take_fault(self, method: str, template: str) -> Fault | None:
        for fault in self.server.faults:
            if fault.method == method and fault.route == template and fault.times > 0:
                fault.times -= 1
                if fault.times == 0:
                    self.server.faults.remove(fault)
                return fault
        return None

    def _fault_response(self, record: RecordedRequest, fault: Fault, bucket: str) -> web.Response:
        record.fault = True
        if fault.status != 429:
            body = fault.body
            if body is None:
                reason = {
                    500: "Internal Server Error",
                    502: "Bad Gateway",
                    503: "Service Unavailable",
                }
                if fault.status == 502:
                    body = "<html><head><title>502 Bad Gateway</title></head></html>"
                else:
                    text = reason.get(fault.status, "Error")
                    body = {"message": f"{fault.status}: {text}", "code": 0}
            return self._respond(record, fault.status, body, {})
        headers = {
            "Retry-After": str(max(1, math.ceil(fault.retry_after))),
            "X-RateLimit-Scope": "global" if fault.global_ else "user",
        }
        if fault.global_:
            headers["X-RateLimit-Global"] = "true"
        else:
            headers.update(_rate_limit_headers(5, 0, fault.retry_after, bucket))
        body = fault.body or {
            "message": "You are being rate limited.",
            "retry_after": fault.retry_after,
            "global": fault.global_,
        }
        return self._respond(record, 429, body, headers)

    # -- lookups -------------------------------------------------------------------------

    def _channel(self, params: dict[str, str]) -> Channel:
        try:
            return self.server.channels[int(params["channel_id"])]
        except (KeyError, ValueError):
            raise _unknown("Channel", 10003) from None

    def _message(self, channel: Channel, message_id: str) -> dict[str, Any]:
        try:
            message = self.server.messages[int(message_id)]
        except (KeyError, ValueError):
            raise _unknown("Message", 10008) from None
        if int(message["channel_id"]) != channel.id:
            raise _unknown("Message", 10008)
        return message

    def _guild(self, params: dict[str, str]) -> Any:
        try:
            return self.server.guilds[int(params["guild_id"])]
        except (KeyError, ValueError):
            raise _unknown("Guild", 10004) from None

    @staticmethod
    def _json(record: RecordedRequest) -> dict[str, Any]:
        if not isinstance(record.json, dict):
            raise HTTPError(400, 50109, "The request body contains invalid JSON.")
        return record.json

    # -- gateway, users, application -----------------------------------------------------

    async def _get_gateway(self, request: web.Request, record: RecordedRequest) -> Any:
        return {"url": self.server.gateway_url.rstrip("/")}

    async def _get_gateway_bot(self, request: web.Request, record: RecordedRequest) -> Any:
        return {
            "url": self.server.gateway_url.rstrip("/"),
            "shards": 1,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 14_400_000,
                "max_concurrency": 1,
            },
        }

    async def _get_me(self, request: web.Request, record: RecordedRequest) -> Any:
        return {
            **self.server.bot_user.to_dict(),
            "verified": True,
            "mfa_enabled": False,
            "email": None,
            "locale": "en-US",
        }

    async def _get_user(self, request: web.Request, record: RecordedRequest) -> Any:
        user = self.server.users.get(int(record.params["user_id"]))
        if user is None:
            raise _unknown("User", 10013)
        return user.to_dict()

    async def _create_dm(self, request: web.Request, record: RecordedRequest) -> Any:
        body = self._json(record)
        user = self.server.users.get(int(body.get("recipient_id", 0)))
        if user is None:
            raise _invalid_form("recipient_id", "USER_NOT_FOUND", "Unknown user")
        return self.server.dm_channel_for(user).to_dict()

    async def _get_application(self, request: web.Request, record: RecordedRequest) -> Any:
        bot = self.server.bot_user
        owner = self.server.users[next(iter(self.server.users))]
        return {
            "id": str(self.server.application_id),
            "name": bot.username,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot_public": False,
            "bot_require_code_grant": False,
            "verify_key": secrets.token_hex(32),
            "flags": 0,
            "owner": owner.to_dict(),
            "team": None,
            "bot": bot.to_dict(),
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "role_connections_verification_url": None,
            "approximate_guild_count": len(self.server.guilds),
            "integration_types_config": {"0": {}},
        }

    # -- application commands ------------------------------------------------------------

    def _check_application(self, params: dict[str, str]) -> None:
        if params["application_id"] != str(self.server.application_id):
            raise _unknown("Application", 10002)

    def _store_commands(
        self, body: Any, guild_id: int | None, previous: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        if not isinstance(body, list):
            raise HTTPError(400, 50109, "The request body must be a JSON array of commands.")
        if len(body) > 100:
            raise _invalid_form(
                "_errors", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length."
            )
        by_name = {(c["name"], c.get("type", 1)): c for c in previous}
        stored = []
        for index, command in enumerate(body):
            name = command.get("name", "")
            if not re.fullmatch(r"[-_\w]{1,32}", name) or (
                command.get("type", 1) == 1 and name != name.lower()
            ):
                raise _invalid_form(
                    f"{index}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Invalid name {name!r}"
                )
            old = by_name.get((name, command.get("type", 1)))
            entry = {
                "id": old["id"] if old else str(self.server.snowflakes.next()),
                "application_id": str(self.server.application_id),
                "version": str(self.server.snowflakes.next()),
                "type": command.get("type", 1),
                "name": name,
                "description": command.get("description", ""),
                "options": command.get("options", []),
                "default_member_permissions": command.get("default_member_permissions"),
                "dm_permission": command.get("dm_permission", True),
                "nsfw": command.get("nsfw", False),
                "contexts": command.get("contexts"),
                "integration_types": command.get("integration_types", [0]),
                "name_localizations": command.get("name_localizations"),
                "description_localizations": command.get("description_localizations"),
            }
            if guild_id is not None:
                entry["guild_id"] = str(guild_id)
            stored.append(entry)
        return stored

    async def _get_global_commands(self, request: web.Request, record: RecordedRequest) -> Any:
        self._check_application(record.params)
        return self.server.global_commands

    async def _put_global_commands(self, request: web.Request, record: RecordedRequest) -> Any:
        self._check_application(record.params)
        self.server.global_commands = self._store_commands(
            record.json, None, self.server.global_commands
        )
        return self.server.global_commands

    async def _get_guild_commands(self, request: web.Request, record: RecordedRequest) -> Any:
        self._check_application(record.params)
        guild = self._guild(record.params)
        return self.server.guild_commands.get(guild.id, [])

    async def _put_guild_commands(self, request: web.Request, record: RecordedRequest) -> Any:
        self._check_application(record.params)
        guild = self._guild(record.params)
        previous = self.server.guild_commands.get(guild.id, [])
        stored = self._store_commands(record.json, guild.id, previous)
        self.server.guild_commands[guild.id] = stored
        return stored

    # -- channels and messages -----------------------------------------------------------

    async def _get_channel(self, request: web.Request, record: RecordedRequest) -> Any:
        return self._channel(record.params).to_dict()

    async def _get_messages(self, request: web.Request, record: RecordedRequest) -> Any:
        channel = self._channel(record.params)
        try:
            limit = int(record.query.get("limit", "50"))
        except ValueError:
            raise _invalid_form("limit", "NUMBER_TYPE_COERCE", "Value is not int.") from None
        if not 1 <= limit <= 100:
            raise _invalid_form("limit", "NUMBER_TYPE_MAX", "limit must be between 1 and 100")
        history = self.server.channel_history(channel)  # oldest first
        if "after" in record.query:
            after = int(record.query["after"])
            page = [m for m in history if int(m["id"]) > after][:limit]
        elif "around" in record.query:
            around = int(record.query["around"])
            older = [m for m in history if int(m["id"]) <= around]
            newer = [m for m in history if int(m["id"]) > around]
            half = limit // 2
            page = older[-(limit - half) :] + newer[:half]
        else:
            before = int(record.query.get("before", str(1 << 63)))
            page = [m for m in history if int(m["id"]) < before][-limit:]
        return list(reversed(page))  # Discord answers newest first

    async def _get_message(self, request: web.Request, record: RecordedRequest) -> Any:
        channel = self._channel(record.params)
        return self._message(channel, record.params["message_id"])

    def _validate_message_body(self, body: dict[str, Any], *, creating: bool, files: int) -> None:
        content = body.get("content")
        if content is not None and not isinstance(content, str):
            raise _invalid_form("content", "BASE_TYPE_STRING", "Must be a string.")
        if content is not None and len(content) > 2000:
            raise _invalid_form(
                "content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length."
            )
        embeds = body.get("embeds") or []
        if len(embeds) > 10:
            raise _invalid_form("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        for index, embed in enumerate(embeds):
            if len(embed.get("description") or "") > 4096:
                raise _invalid_form(
                    f"embeds.{index}.description",
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 4096 or fewer in length.",
                )
            if len(embed.get("title") or "") > 256:
                raise _invalid_form(
                    f"embeds.{index}.title",
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 256 or fewer in length.",
                )
        components = body.get("components") or []
        if not (body.get("flags", 0) & (1 << 15)) and len(components) > 5:
            raise _invalid_form(
                "components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length."
            )
        _validate_custom_ids(components, "components")
        if creating and not (
            content or embeds or components or files or body.get("sticker_ids") or body.get("poll")
        ):
            raise HTTPError(400, 50006, "Cannot send an empty message")

    def _attachments_from(
        self, request: web.Request, body: dict[str, Any], existing: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        uploads: dict[str, tuple[str, str, bytes]] = request.get(_UPLOADS, {})
        by_index = {}
        for name, upload in uploads.items():
            found = re.fullmatch(r"files\[(\d+)\]|file(\d*)", name)
            if found:
                by_index[found.group(1) or found.group(2) or "0"] = upload
        if "attachments" not in body:
            return existing + [
                self.server._store_attachment(*upload) for upload in by_index.values()
            ]
        kept = {a["id"]: a for a in existing}
        result = []
        for attachment in body["attachments"]:
            attachment_id = str(attachment.get("id"))
            if attachment_id in kept:
                result.append(kept[attachment_id])
            elif attachment_id in by_index:
                filename, content_type, data = by_index[attachment_id]
                stored = self.server._store_attachment(
                    attachment.get("filename", filename), content_type, data
                )
                if attachment.get("description"):
                    stored["description"] = attachment["description"]
                result.append(stored)
        return result

    async def _create_message(self, request: web.Request, record: RecordedRequest) -> Any:
        channel = self._channel(record.params)
        if channel.type not in (
            ChannelType.GUILD_TEXT,
            ChannelType.DM,
            ChannelType.PUBLIC_THREAD,
            ChannelType.PRIVATE_THREAD,
            ChannelType.GUILD_ANNOUNCEMENT,
            ChannelType.GUILD_VOICE,
        ):
            raise HTTPError(400, 50008, "Cannot send messages in a non-text channel")
        body = self._json(record)
        self._validate_message_body(body, creating=True, files=len(record.files))
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):
            # Discord answers a repeated nonce with the message it already created.
            for message_id in reversed(self.server.channel_messages.get(channel.id, [])[-50:]):
                earlier = self.server.messages.get(message_id)
                if earlier is not None and earlier.get("nonce") == nonce:
                    return earlier
        referenced = None
        reference = body.get("message_reference")
        if reference:
            target = self.server.messages.get(int(reference.get("message_id", 0)))
            if target is None or (
                int(target["channel_id"]) != channel.id and not reference.get("channel_id")
            ):
                if reference.get("fail_if_not_exists", True):
                    raise _invalid_form(
                        "message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                    )
            else:
                referenced = target
        message = self.server.build_message(
            channel,
            self.server.bot_user,
            body.get("content") or "",
            allowed_mentions=body.get("allowed_mentions"),
            attachments=self._attachments_from(request, body, []),
            embeds=body.get("embeds") or [],
            components=body.get("components") or [],
            referenced=referenced,
            type=19 if referenced is not None else 0,
            flags=int(body.get("flags") or 0),
            nonce=body.get("nonce"),
            tts=bool(body.get("tts")),
        )
        self.server.store_message(message)
        return message

    async def _edit_message(self, request: web.Request, record: RecordedRequest) -> Any:
        channel = self._channel(record.params)
        message = self._message(channel, record.params["message_id"])
        if message["author"]["id"] != str(self.server.bot_user.id):
            raise HTTPError(403, 50005, "Cannot edit a message authored by another user")
        body = self._json(record)
        self._validate_message_body(body, creating=False, files=len(record.files))
        self._apply_edit(request, message, body)
        self.server.update_message(message)
        return message

    def _apply_edit(
        self, request: web.Request, message: dict[str, Any], body: dict[str, Any]
    ) -> None:
        if "content" in body:
            message["content"] = body["content"] or ""
            channel = self.server.channels[int(message["channel_id"])]
            mentions, roles, everyone = self.server._resolve_mentions(
                message["content"],
                self.server.guild_of(channel),
                body.get("allowed_mentions"),
                (),
                (),
            )
            message.update(
                mentions=mentions, mention_roles=[str(r) for r in roles], mention_everyone=everyone
            )
        for key in ("embeds", "components"):
            if key in body:
                message[key] = body[key] or []
        if "flags" in body and body["flags"] is not None:
            message["flags"] = (int(message["flags"]) & (EPHEMERAL | LOADING) & ~LOADING) | int(
                body["flags"]
            )
        message["flags"] = int(message["flags"]) & ~LOADING
        if "attachments" in body or request.get(_UPLOADS):
            message["attachments"] = self._attachments_from(request, body, message["attachments"])

    async def _delete_message(self, request: web.Request, record: RecordedRequest) -> Any:
        channel = self._channel(record.params)
        message = self._message(channel, record.params["message_id"])
        self.server.delete_message(message)
        return None

    async def _add_reaction(self, request: web.Request, record: RecordedRequest) -> Any:
        channel = self._channel(record.params)
        message = self._message(channel, record.params["message_id"])
        emoji = record.params["emoji"]
        reactions = message.setdefault("reactions", [])
        for reaction in reactions:
            if reaction["emoji"].get("name") == emoji:
                if not reaction["me"]:
                    reaction["me"] = True
                    reaction["count"] += 1
                break
        else:
            reactions.append({"emoji": {"id": None, "name": emoji}, "count": 1, "me": True})
        event = {
            "user_id": str(self.server.bot_user.id),
            "channel_id": message["channel_id"],
            "message_id": message["id"],
            "emoji": {"id": None, "name": emoji},
            "burst": False,
            "type": 0,
        }
        if "guild_id" in message:
            event["guild_id"] = message["guild_id"]
        self.server.gateway.dispatch("MESSAGE_REACTION_ADD", event)
        return None

    async def _typing(self, request: web.Request, record: RecordedRequest) -> Any:
        self._channel(record.params)
        return None

    # -- threads ---------------------------------------------------------------------------

    def _new_thread(
        self, parent: Channel, thread_id: int, body: dict[str, Any], thread_type: ChannelType
    ) -> Channel:
        if parent.type not in (ChannelType.GUILD_TEXT, ChannelType.GUILD_ANNOUNCEMENT):
            raise HTTPError(400, 50024, "Cannot execute action on this channel type")
        name = body.get("name") or ""
        if not 1 <= len(name) <= 100:
            raise _invalid_form(
                "name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )
        thread = Channel(
            id=thread_id,
            type=thread_type,
            name=name,
            guild_id=parent.guild_id,
            parent_id=parent.id,
            owner_id=self.server.bot_user.id,
            auto_archive_duration=int(body.get("auto_archive_duration") or 1440),
        )
        guild = self.server.guild_of(parent)
        assert guild is not None
        guild.channels[thread.id] = thread
        self.server.channels[thread.id] = thread
        self.server.channel_messages[thread.id] = []
        self.server.gateway.dispatch("THREAD_CREATE", {**thread.to_dict(), "newly_created": True})
        return thread

    async def _start_thread_from_message(
        self, request: web.Request, record: RecordedRequest
    ) -> Any:
        parent = self._channel(record.params)
        message = self._message(parent, record.params["message_id"])
        if int(message["id"]) in self.server.channels:
            raise HTTPError(400, 160004, "A thread has already been created for this message")
        thread = self._new_thread(
            parent, int(message["id"]), self._json(record), ChannelType.PUBLIC_THREAD
        )
        message["thread"] = thread.to_dict()
        return thread.to_dict()

    async def _start_thread(self, request: web.Request, record: RecordedRequest) -> Any:
        parent = self._channel(record.params)
        body = self._json(record)
        thread_type = ChannelType(int(body.get("type") or ChannelType.PRIVATE_THREAD))
        if not thread_type.is_thread:
            raise _invalid_form("type", "BASE_TYPE_CHOICES", "Value must be 11 or 12.")
        return self._new_thread(parent, self.server.snowflakes.next(), body, thread_type).to_dict()

    async def _add_thread_member(self, request: web.Request, record: RecordedRequest) -> Any:
        thread = self._channel(record.params)
        if not thread.type.is_thread:
            raise HTTPError(400, 50024, "Cannot execute action on this channel type")
        return None

    # -- webhooks --------------------------------------------------------------------------

    async def _get_channel_webhooks(self, request: web.Request, record: RecordedRequest) -> Any:
        channel = self._channel(record.params)
        return [w.to_dict() for w in self.server.webhooks.values() if w.channel_id == channel.id]

    async def _create_webhook(self, request: web.Request, record: RecordedRequest) -> Any:
        channel = self._channel(record.params)
        if channel.type is not ChannelType.GUILD_TEXT:
            raise HTTPError(400, 50024, "Cannot execute action on this channel type")
        body = self._json(record)
        name = body.get("name") or ""
        if not 1 <= len(name) <= 80 or "discord" in name.lower() or "clyde" in name.lower():
            raise _invalid_form(
                "name",
                "BASE_TYPE_BAD_LENGTH",
                "Webhook names must be 1 to 80 characters and not contain 'discord' or 'clyde'.",
            )
        if sum(1 for w in self.server.webhooks.values() if w.channel_id == channel.id) >= 15:
            raise HTTPError(400, 30007, "Maximum number of webhooks reached (15)")
        avatar, avatar_image = _image_data(body.get("avatar"), "avatar")
        webhook = Webhook(
            id=self.server.snowflakes.next(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            name=name,
            creator=self.server.bot_user,
            application_id=self.server.application_id,
            avatar=avatar,
            avatar_image=avatar_image,
        )
        self.server.webhooks[webhook.id] = webhook
        return webhook.to_dict()

    async def _get_webhook(self, request: web.Request, record: RecordedRequest) -> Any:
        webhook = self.server.webhooks.get(int(record.params["webhook_id"]))
        if webhook is None:
            raise _unknown("Webhook", 10015)
        return webhook.to_dict()

    async def _modify_webhook(self, request: web.Request, record: RecordedRequest) -> Any:
        webhook = self.server.webhooks.get(int(record.params["webhook_id"]))
        if webhook is None:
            raise _unknown("Webhook", 10015)
        body = self._json(record)
        if "name" in body:
            webhook.name = str(body["name"])
        if "avatar" in body:
            webhook.avatar, webhook.avatar_image = _image_data(body["avatar"], "avatar")
        return webhook.to_dict()

    def _webhook_target(
        self, params: dict[str, str]
    ) -> tuple[Webhook | None, InteractionRecord | None]:
        """A channel webhook, or an interaction when the id is the application's."""
        token = params["webhook_token"]
        if params["webhook_id"] == str(self.server.application_id):
            interaction = self.server.interaction_by_token(token)
            if interaction is None:
                raise _unknown("Webhook", 10015)
            if time.monotonic() - interaction.created_monotonic > 15 * 60:
                raise HTTPError(401, 50027, "Invalid Webhook Token")
            if not interaction.responded:
                raise _unknown("Webhook", 10015)
            return None, interaction
        webhook = self.server.webhooks.get(int(params["webhook_id"]))
        if webhook is None or webhook.token != token:
            raise _unknown("Webhook", 10015)
        return webhook, None

    async def _get_webhook_with_token(self, request: web.Request, record: RecordedRequest) -> Any:
        webhook, _ = self._webhook_target(record.params)
        if webhook is None:
            raise _unknown("Webhook", 10015)
        return webhook.to_dict()

    async def _execute_webhook(self, request: web.Request, record: RecordedRequest) -> Any:
        webhook, interaction = self._webhook_target(record.params)
        body = self._json(record)
        self._validate_message_body(body, creating=True, files=len(record.files))
        wait = record.query.get("wait", "false").lower() in ("1", "true")
        if interaction is not None:
            channel = self.server.channels[interaction.channel_id]
            flags = int(body.get("flags") or 0)
            message = self._interaction_message(interaction, request, body, flags)
            interaction.followup_message_ids.append(int(message["id"]))
            self.server.store_message(
                message, in_history=not flags & EPHEMERAL, dispatch=not flags & EPHEMERAL
            )
            return message
        assert webhook is not None
        channel = self.server.channels[webhook.channel_id]
        if "thread_id" in record.query:
            channel = self._channel({"channel_id": record.query["thread_id"]})
        username = body.get("username") or webhook.name
        if len(username) > 80:
            raise _invalid_form(
                "username", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 80 in length."
            )
        author = {
            "id": str(webhook.id),
            "username": username,
            "discriminator": "0000",
            "avatar": webhook.avatar,
            "bot": True,
            "global_name": None,
            "public_flags": 0,
            "flags": 0,
        }
        if body.get("avatar_url"):
            author["avatar_url"] = body["avatar_url"]
        message = self.server.build_message(
            channel,
            self.server.bot_user,
            body.get("content") or "",
            allowed_mentions=body.get("allowed_mentions"),
            attachments=self._attachments_from(request, body, []),
            embeds=body.get("embeds") or [],
            components=body.get("components") or [],
            webhook_id=webhook.id,
            author_override=author,
            flags=int(body.get("flags") or 0),
        )
        self.server.store_message(message)
        return message if wait else None

    def _resolve_webhook_message(
        self, record: RecordedRequest
    ) -> tuple[dict[str, Any], Webhook | None, InteractionRecord | None]:
        webhook, interaction = self._webhook_target(record.params)
        message_id = record.params["message_id"]
        if message_id == "@original":
            if interaction is None or interaction.original_message_id is None:
                raise _unknown("Message", 10008)
            message_id = str(interaction.original_message_id)
        message = self.server.messages.get(int(message_id)) if message_id.isdigit() else None
        if message is None:
            raise _unknown("Message", 10008)
        owner = str(webhook.id) if webhook else str(self.server.application_id)
        if message.get("webhook_id") != owner:
            raise _unknown("Message", 10008)
        return message, webhook, interaction

    async def _get_webhook_message(self, request: web.Request, record: RecordedRequest) -> Any:
        message, _, _ = self._resolve_webhook_message(record)
        return message

    async def _edit_webhook_message(self, request: web.Request, record: RecordedRequest) -> Any:
        message, _, _ = self._resolve_webhook_message(record)
        body = self._json(record)
        self._validate_message_body(body, creating=False, files=len(record.files))
        self._apply_edit(request, message, body)
        self.server.update_message(message, dispatch=not int(message["flags"]) & EPHEMERAL)
        return message

    async def _delete_webhook_message(self, request: web.Request, record: RecordedRequest) -> Any:
        message, _, _ = self._resolve_webhook_message(record)
        self.server.delete_message(message)
        return None

    # -- guilds --------------------------------------------------------------------------

    async def _get_guild(self, request: web.Request, record: RecordedRequest) -> Any:
        data = self._guild(record.params).to_dict()
        for key in ("channels", "threads", "members", "presences", "voice_states", "joined_at"):
            data.pop(key, None)
        return data

    async def _get_guild_channels(self, request: web.Request, record: RecordedRequest) -> Any:
        guild = self._guild(record.params)
        return [c.to_dict() for c in guild.channels.values() if not c.type.is_thread]

    async def _get_roles(self, request: web.Request, record: RecordedRequest) -> Any:
        return [role.to_dict() for role in self._guild(record.params).roles.values()]

    async def _get_members(self, request: web.Request, record: RecordedRequest) -> Any:
        guild = self._guild(record.params)
        limit = int(record.query.get("limit", "1"))
        after = int(record.query.get("after", "0"))
        members = sorted(guild.members.values(), key=lambda m: m.user.id)
        return [m.to_dict() for m in members if m.user.id > after][:limit]

    async def _get_member(self, request: web.Request, record: RecordedRequest) -> Any:
        guild = self._guild(record.params)
        member = guild.members.get(int(record.params["user_id"]))
        if member is None:
            raise _unknown("Member", 10007)
        return member.to_dict()

    async def _change_member_role(self, record: RecordedRequest, *, add: bool) -> None:
        guild = self._guild(record.params)
        member = guild.members.get(int(record.params["user_id"]))
        if member is None:
            raise _unknown("Member", 10007)
        role_id = int(record.params["role_id"])
        if role_id not in guild.roles:
            raise _unknown("Role", 10011)
        if add and role_id not in member.role_ids:
            member.role_ids.append(role_id)
        elif not add and role_id in member.role_ids:
            member.role_ids.remove(role_id)
        self.server.gateway.dispatch(
            "GUILD_MEMBER_UPDATE", {**member.to_dict(), "guild_id": str(guild.id)}
        )

    async def _add_member_role(self, request: web.Request, record: RecordedRequest) -> Any:
        await self._change_member_role(record, add=True)

    async def _remove_member_role(self, request: web.Request, record: RecordedRequest) -> Any:
        await self._change_member_role(record, add=False)

    # -- interactions --------------------------------------------------------------------

    def _interaction_message(
        self,
        interaction: InteractionRecord,
        request: web.Request,
        body: dict[str, Any],
        flags: int,
    ) -> dict[str, Any]:
        channel = self.server.channels[interaction.channel_id]
        user = self.server.users[interaction.user_id]
        metadata = {
            "id": str(interaction.id),
            "type": interaction.type,
            "user": user.to_dict(),
            "authorizing_integration_owners": interaction.payload.get(
                "authorizing_integration_owners", {}
            ),
        }
        return self.server.build_message(
            channel,
            self.server.bot_user,
            body.get("content") or "",
            allowed_mentions=body.get("allowed_mentions"),
            attachments=self._attachments_from(request, body, []),
            embeds=body.get("embeds") or [],
            components=body.get("components") or [],
            type=20 if interaction.type == 2 else 0,
            flags=flags,
            webhook_id=self.server.application_id,
            interaction_metadata=metadata,
            tts=bool(body.get("tts")),
        )

    async def _interaction_callback(self, request: web.Request, record: RecordedRequest) -> Any:
        interaction = self.server.interactions.get(int(record.params["interaction_id"]))
        if interaction is None or interaction.token != record.params["interaction_token"]:
            raise HTTPError(404, 10062, "Unknown interaction")
        if interaction.responded:
            raise HTTPError(400, 40060, "Interaction has already been acknowledged.")
        deadline = self.server.interaction_deadline
        if deadline is not None and time.monotonic() - interaction.created_monotonic > deadline:
            raise HTTPError(404, 10062, "Unknown interaction")
        body = self._json(record)
        callback_type = body.get("type")
        data = body.get("data") or {}
        allowed = {1: {1}, 2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7}}
        if callback_type not in allowed.get(interaction.type, set()):
            raise _invalid_form(
                "type",
                "INTERACTION_RESPONSE_TYPE_INVALID",
                f"Callback type {callback_type} is not valid for interaction type "
                f"{interaction.type}.",
            )
        resource: dict[str, Any] | None = None
        response_message_id = None
        if callback_type in (4, 5):
            flags = int(data.get("flags") or 0)
            if callback_type == 5:
                flags |= LOADING
            else:
                self._validate_message_body(data, creating=True, files=len(record.files))
            message = self._interaction_message(interaction, request, data, flags)
            interaction.original_message_id = int(message["id"])
            self.server.store_message(
                message, in_history=not flags & EPHEMERAL, dispatch=not flags & EPHEMERAL
            )
            resource = {"type": callback_type, "message": message}
            response_message_id = message["id"]
        elif callback_type == 7:
            self._validate_message_body(data, creating=False, files=len(record.files))
            message = interaction.payload.get("message")
            if message is None:
                raise HTTPError(400, 50035, "Interaction has no message to update")
            stored = self.server.messages.get(int(message["id"]), message)
            self._apply_edit(request, stored, data)
            self.server.update_message(stored, dispatch=not int(stored["flags"]) & EPHEMERAL)
            resource = {"type": 7, "message": stored}
            response_message_id = stored["id"]
        elif callback_type == 9:
            _validate_modal(data)
            resource = {"type": 9}
        elif callback_type == 6:
            message = interaction.payload.get("message")
            response_message_id = message["id"] if message else None
        interaction.response_type = callback_type
        interaction.response_data = data
        interaction.response_request = record
        self.server.notify_waiters()
        if record.query.get("with_response", "").lower() not in ("1", "true"):
            return None
        flags = int(data.get("flags") or 0)
        answer: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "response_message_id": response_message_id,
                "response_message_loading": callback_type == 5,
                "response_message_ephemeral": bool(flags & EPHEMERAL),
            }
        }
        if resource is not None:
            answer["resource"] = resource
        return answer


def _validate_custom_ids(components: Any, where: str) -> None:
    if not isinstance(components, list):
        return
    for index, component in enumerate(components):
        if not isinstance(component, dict):
            continue
        custom_id = component.get("custom_id")
        if custom_id is not None and not 1 <= len(custom_id) <= 100:
            raise _invalid_form(
                f"{where}.{index}.custom_id",
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
        _validate_custom_ids(component.get("components"), f"{where}.{index}.components")
        for key in ("component", "accessory"):
            if isinstance(component.get(key), dict):
                _validate_custom_ids([component[key]], f"{where}.{index}.{key}")


def _validate_modal(data: dict[str, Any]) -> None:
    title = data.get("title") or ""
    if not 1 <= len(title) <= 45:
        raise _invalid_form(
            "data.title", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length."
        )
    custom_id = data.get("custom_id") or ""
    if not 1 <= len(custom_id) <= 100:
        raise _invalid_form(
            "data.custom_id", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
        )
    components = data.get("components") or []
    if not 1 <= len(components) <= 5:
        raise _invalid_form(
            "data.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length."
        )
    _validate_custom_ids(components, "data.components")
    for index, component in enumerate(components):
        if isinstance(component, dict) and component.get("type") == 18:
            _validate_label(component, f"data.components.{index}")


def _check_length(value: Any, low: int, high: int, where: str) -> None:
    if not isinstance(value, str) or not low <= len(value) <= high:
        raise _invalid_form(
            where, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length."
        )


def _validate_label(label: dict[str, Any], where: str) -> None:
    """A modal's label (type 18): its text, description and the string select it holds."""
    _check_length(label.get("label"), 1, 45, f"{where}.label")
    if label.get("description") is not None:
        _check_length(label["description"], 1, 100, f"{where}.description")
    inner = label.get("component")
    if not isinstance(inner, dict) or inner.get("type") not in (3, 4, 5, 6, 7, 8):
        raise _invalid_form(f"{where}.component", "BASE_TYPE_REQUIRED", "This field is required")
    if inner.get("type") != 3:
        return
    options = inner.get("options") or []
    if not 1 <= len(options) <= 25:
        raise _invalid_form(
            f"{where}.component.options",
            "BASE_TYPE_BAD_LENGTH",
            "Must be between 1 and 25 in length.",
        )
    for number, option in enumerate(options):
        at = f"{where}.component.options.{number}"
        _check_length(option.get("label"), 1, 100, f"{at}.label")
        _check_length(option.get("value"), 1, 100, f"{at}.value")
        if option.get("description") is not None:
            _check_length(option["description"], 1, 100, f"{at}.description")
    low, high = inner.get("min_values", 1), inner.get("max_values", 1)
    if not 0 <= low <= high <= len(options):
        raise _invalid_form(
            f"{where}.component.max_values",
            "BASE_TYPE_MAX",
            f"min_values and max_values must be within 0 and {len(options)}.",
        )


def _rate_limit_headers(
    limit: int, remaining: int, reset_after: float, bucket: str
) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
        "X-RateLimit-Reset-After": f"{reset_after:.3f}",
        "X-RateLimit-Bucket": bucket,
    }
