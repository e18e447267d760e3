"""A Discord-compatible test server that the unmodified discord.py client talks to.

`DiscordTestServer` runs an aiohttp app on 127.0.0.1 (random port) serving REST API v10
under `/api/v10` and the gateway websocket at `/gateway/`. Tests build a world (guilds,
channels, users), act as users (messages, slash commands, button clicks, modal submits),
inject faults (429, 5xx, dropped sockets), and assert on every recorded request.

Limits: one bot account and one application per server; no permission overwrites,
voice, presences, reactions lists or audit logs. Unknown routes answer 404 and are kept in
`unknown_requests` so a test notices the bot called something this server does not model.
"""

from __future__ import annotations

# The wait_for_* helpers take `timeout=` on purpose: their TimeoutError says what was awaited.
# ruff: noqa: ASYNC109
import asyncio
import datetime
import inspect
import logging
import re
import reprlib
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from .gateway import Gateway, GatewayFrame, Opcode
from .models import (
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    Channel,
    ChannelType,
    Guild,
    Member,
    Role,
    SnowflakeGenerator,
    User,
    Webhook,
    iso_timestamp,
    snowflake_time,
)
from .rest import ROUTES, RestApi

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

__all__ = (
    "DiscordTestServer",
    "Fault",
    "InteractionRecord",
    "RecordedRequest",
)

_log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often :meth:`DiscordTestServer.wait_until` re-reads state this server cannot see.
POLL_S = 0.02

#: What a timed-out wait reports it saw, kept to a few lines.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 3, 6, 6
_SHORT.maxstring, _SHORT.maxother = 120, 200

INTERACTION_PING = 1
INTERACTION_APPLICATION_COMMAND = 2
INTERACTION_MESSAGE_COMPONENT = 3
INTERACTION_MODAL_SUBMIT = 5

_OPTION_TYPES = {str: 3, int: 4, bool: 5, float: 10}
_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


@dataclass
class RecordedRequest:
    """One HTTP request the server received, as tests see it.

    `route` is the matched template such as "/channels/{channel_id}/messages" (None when no
    route matched); `json` is the JSON body, or the `payload_json` part of a multipart body;
    `files` lists (field name, filename, size in bytes) of uploaded files.
    """

    method: str
    path: str
    route: str | None
    params: dict[str, str]
    query: dict[str, str]
    json: Any
    files: list[tuple[str, str, int]]
    headers: dict[str, str]
    received_ns: int
    received_at: datetime.datetime
    status: int = 0
    response: Any = None
    fault: bool = False

    def __repr__(self) -> str:
        return f"<RecordedRequest {self.method} {self.path} -> {self.status}>"


@dataclass
class Fault:
    """A canned failure for `times` requests matching a method and route template."""

    method: str
    route: str
    status: int
    retry_after: float
    times: int
    global_: bool
    body: Any = None


@dataclass
class InteractionRecord:
    """An interaction a test sent, and the bot's answer to it once it arrives.

    `response_type` is the callback type (4 message, 5 deferred message, 6 deferred update,
    7 update message, 9 modal); `response_data` the callback's `data`.
    """

    id: int
    token: str
    type: int
    payload: dict[str, Any]
    user_id: int
    channel_id: int
    created_monotonic: float
    response_type: int | None = None
    response_data: dict[str, Any] | None = None
    response_request: RecordedRequest | None = None
    original_message_id: int | None = None
    followup_message_ids: list[int] = field(default_factory=list)

    @property
    def responded(self) -> bool:
        return self.response_type is not None

    @property
    def ephemeral(self) -> bool:
        flags = (self.response_data or {}).get("flags") or 0
        return bool(int(flags) & 64)


class DiscordTestServer:
    """A fake Discord (REST v10 + gateway) for one bot, on loopback.

    Parameters
    ----------
    bot_name:
        Username of the bot account; the application id equals the bot user id.
    token:
        The bot token the client must present (`Bot <token>` on REST, in IDENTIFY).
    heartbeat_interval_ms:
        Sent in HELLO. Keep it small in tests so heartbeats are exercised quickly.
    interaction_deadline:
        Seconds within which an interaction must get its first callback, like Discord's
        3 s; later callbacks fail with 404 "Unknown interaction" (10062). None disables.
    rate_limit:
        (requests, seconds) per route bucket and major parameter; exceeding it answers 429.
    """

    def __init__(
        self,
        *,
        bot_name: str = "Greenroom",
        token: str | None = None,
        heartbeat_interval_ms: int = 1000,
        interaction_deadline: float | None = 3.0,
        rate_limit: tuple[int, float] = (50, 1.0),
    ) -> None:
        if heartbeat_interval_ms <= 0:
            raise ValueError("heartbeat_interval_ms must be positive")
        if rate_limit[0] < 1 or rate_limit[1] <= 0:
            raise ValueError(
                "rate_limit must be (at least 1 request, a positive number of seconds)"
            )
        self.snowflakes = SnowflakeGenerator()
        self.bot_token = token or f"fake.{secrets.token_urlsafe(24)}"
        self.bot_user = User(id=self.snowflakes.next(), username=bot_name, bot=True)
        self.application_id = self.bot_user.id
        self.interaction_deadline = interaction_deadline
        self.default_rate_limit = rate_limit
        self.users: dict[int, User] = {self.bot_user.id: self.bot_user}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, dict[str, Any]] = {}
        self.channel_messages: dict[int, list[int]] = {}
        self.attachments: dict[int, tuple[str, str, bytes]] = {}
        self.webhooks: dict[int, Webhook] = {}
        self.interactions: dict[int, InteractionRecord] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.requests: list[RecordedRequest] = []
        self.faults: list[Fault] = []
        self._user_message_ids: set[int] = set()
        self._dm_channels: dict[int, Channel] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self.gateway = Gateway(
            self, heartbeat_interval_ms=heartbeat_interval_ms, base_url=lambda: self.base_url
        )
        self.rest = RestApi(self)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1 on a free port."""
        if self._runner is not None:
            raise RuntimeError("the server is already running")
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_route("GET", "/gateway/", self.gateway.handle)
        app.router.add_route("GET", "/gateway", self.gateway.handle)
        app.router.add_route("GET", "/resume-gateway/", self.gateway.handle)
        app.router.add_route("GET", "/attachments/{attachment_id}/{filename}", self._attachment)
        app.router.add_route("*", "/api/v10/{tail:.*}", self.rest.handle)
        app.router.add_route("*", "/{tail:.*}", self.rest.handle_outside_api)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        _log.debug("fake Discord listening on %s", self.base_url)

    async def stop(self) -> None:
        if self._runner is None:
            return
        await self.gateway.close()
        await self._runner.cleanup()
        self._runner = None
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()

    async def __aenter__(self) -> DiscordTestServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("the server is not running: await server.start() first")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base(self) -> str:
        """What discord.py's `Route.BASE` must be set to."""
        return self.base_url + "/api/v10"

    @property
    def gateway_url(self) -> str:
        """What `GET /gateway/bot` answers, and discord.py's `DEFAULT_GATEWAY` for tests."""
        return self.base_url.replace("http://", "ws://", 1) + "/gateway/"

    async def _attachment(self, request: web.Request) -> web.Response:
        stored = self.attachments.get(int(request.match_info["attachment_id"]))
        if stored is None:
            raise web.HTTPNotFound()
        _, content_type, data = stored
        return web.Response(body=data, content_type=content_type)

    # -- world building ------------------------------------------------------------------

    def add_user(self, name: str, *, bot: bool = False, global_name: str | None = None) -> User:
        if not name or len(name) > 32:
            raise ValueError(f"a username must be 1 to 32 characters, got {name!r}")
        user = User(id=self.snowflakes.next(), username=name, bot=bot, global_name=global_name)
        self.users[user.id] = user
        return user

    def add_guild(
        self,
        name: str,
        owner: User | None = None,
        *,
        everyone_permissions: int = DEFAULT_EVERYONE_PERMISSIONS,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
    ) -> Guild:
        """A guild the bot has joined, with @everyone and the bot's managed role.

        The owner (a new user when omitted) and the bot become members. If a client is
        connected it receives GUILD_CREATE, as when a bot is added to a server.
        """
        if not 2 <= len(name) <= 100:
            raise ValueError(f"a guild name must be 2 to 100 characters, got {name!r}")
        owner = owner or self.add_user(f"{name[:20]}-owner")
        guild = Guild(id=self.snowflakes.next(), name=name, owner_id=owner.id)
        guild.roles[guild.id] = Role(
            id=guild.id, guild_id=guild.id, name="@everyone", permissions=everyone_permissions
        )
        bot_role = Role(
            id=self.snowflakes.next(),
            guild_id=guild.id,
            name=self.bot_user.username,
            permissions=bot_permissions,
            position=1,
            managed=True,
            bot_id=self.bot_user.id,
        )
        guild.roles[bot_role.id] = bot_role
        guild.members[owner.id] = Member(user=owner, guild_id=guild.id)
        guild.members[self.bot_user.id] = Member(
            user=self.bot_user, guild_id=guild.id, role_ids=[bot_role.id]
        )
        self.guilds[guild.id] = guild
        joined = guild.to_dict(for_user_id=self.bot_user.id)
        del joined["unavailable"]  # absent on a join; `false` means "available again"
        self.gateway.dispatch("GUILD_CREATE", joined)
        return guild

    def add_channel(
        self,
        guild: Guild,
        name: str,
        *,
        type: ChannelType = ChannelType.GUILD_TEXT,
        topic: str | None = None,
        parent: Channel | None = None,
    ) -> Channel:
        if not 1 <= len(name) <= 100:
            raise ValueError(f"a channel name must be 1 to 100 characters, got {name!r}")
        if type in (ChannelType.DM, ChannelType.PUBLIC_THREAD, ChannelType.PRIVATE_THREAD):
            raise ValueError("use dm_channel_for() for DMs and create threads through the API")
        channel = Channel(
            id=self.snowflakes.next(),
            type=type,
            name=name,
            guild_id=guild.id,
            topic=topic,
            parent_id=parent.id if parent else None,
            position=len(guild.channels),
        )
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        self.channel_messages[channel.id] = []
        self.gateway.dispatch("CHANNEL_CREATE", channel.to_dict())
        return channel

    def add_role(
        self, guild: Guild, name: str, *, permissions: int = 0, mentionable: bool = False
    ) -> Role:
        role = Role(
            id=self.snowflakes.next(),
            guild_id=guild.id,
            name=name,
            permissions=permissions,
            position=len(guild.roles),
            mentionable=mentionable,
        )
        guild.roles[role.id] = role
        self.gateway.dispatch(
            "GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.to_dict()}
        )
        return role

    def add_member(
        self, guild: Guild, user: User, *, roles: Sequence[Role] = (), nick: str | None = None
    ) -> Member:
        for role in roles:
            if role.guild_id != guild.id:
                raise ValueError(f"role {role.name!r} belongs to another guild")
        member = Member(user=user, guild_id=guild.id, role_ids=[r.id for r in roles], nick=nick)
        guild.members[user.id] = member
        self.gateway.dispatch("GUILD_MEMBER_ADD", {**member.to_dict(), "guild_id": str(guild.id)})
        return member

    def set_member_roles(self, guild: Guild, user: User, roles: Sequence[Role]) -> Member:
        """Replace a member's roles and send GUILD_MEMBER_UPDATE."""
        member = self._member(guild, user.id)
        member.role_ids = [role.id for role in roles]
        self.gateway.dispatch(
            "GUILD_MEMBER_UPDATE", {**member.to_dict(), "guild_id": str(guild.id)}
        )
        return member

    def dm_channel_for(self, user: User) -> Channel:
        """The DM channel between the bot and `user` (created on first use)."""
        channel = self._dm_channels.get(user.id)
        if channel is None:
            channel = Channel(id=self.snowflakes.next(), type=ChannelType.DM, recipients=[user])
            self._dm_channels[user.id] = channel
            self.channels[channel.id] = channel
            self.channel_messages[channel.id] = []
        return channel

    def _member(self, guild: Guild, user_id: int) -> Member:
        try:
            return guild.members[user_id]
        except KeyError:
            raise ValueError(f"user {user_id} is not a member of guild {guild.name!r}") from None

    def guild_of(self, channel: Channel) -> Guild | None:
        return self.guilds.get(channel.guild_id) if channel.guild_id else None

    # -- acting as users -----------------------------------------------------------------

    def user_starts_typing(self, channel: Channel, user: User) -> None:
        """A user starts typing in `channel`: TYPING_START, as Discord sends it (a guild
        channel's event carries the member)."""
        self._require_channel_access(channel, user)
        data: dict[str, Any] = {
            "channel_id": str(channel.id),
            "user_id": str(user.id),
            "timestamp": int(time.time()),
        }
        guild = self.guild_of(channel)
        if guild is not None:
            data["guild_id"] = str(guild.id)
            data["member"] = self._member(guild, user.id).to_dict()
        self.gateway.dispatch("TYPING_START", data)
        self.notify_waiters()

    def send_user_message(
        self,
        channel: Channel,
        author: User,
        content: str,
        *,
        mentions: Sequence[User] = (),
        mention_roles: Sequence[Role] = (),
        reply_to: Mapping[str, Any] | int | None = None,
        attachments: Sequence[tuple[str, bytes]] = (),
        sticker_items: Sequence[Mapping[str, Any]] = (),
        embeds: Sequence[Mapping[str, Any]] = (),
        type: int = 0,
    ) -> dict[str, Any]:
        """A user posts a message: stored in the channel and sent as MESSAGE_CREATE.

        `mentions` adds users to the mention list (and `<@id>` in the content is parsed
        too); `attachments` are (filename, bytes) pairs served back by this server.
        """
        if len(content) > 2000:
            raise ValueError(f"message content is limited to 2000 characters, got {len(content)}")
        if not (content or attachments or sticker_items or embeds):
            raise ValueError("a message needs content, an attachment, a sticker or an embed")
        self._require_channel_access(channel, author)
        message_id = self.snowflakes.next()
        stored_attachments = [
            self._store_attachment(filename, "application/octet-stream", data)
            for filename, data in attachments
        ]
        referenced = self._message_for(reply_to) if reply_to is not None else None
        message = self.build_message(
            channel,
            author,
            content,
            message_id=message_id,
            extra_mentions=mentions,
            extra_role_mentions=mention_roles,
            attachments=stored_attachments,
            embeds=list(embeds),
            sticker_items=list(sticker_items),
            referenced=referenced,
            type=19 if referenced is not None and type == 0 else type,
        )
        self._user_message_ids.add(message_id)
        self.store_message(message)
        return message

    def send_slash_command(
        self,
        channel: Channel,
        user: User,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        subcommand: str | None = None,
        group: str | None = None,
    ) -> InteractionRecord:
        """A user runs `/name [group] [subcommand] options...` (the command must be synced).

        Option types come from the synced command definition; str, int, bool and float
        values are sent as is, `User` and `Role` and `Channel` values as resolved ids.
        """
        guild = self.guild_of(channel)
        command = self._synced_command(name, guild)
        option_defs: list[dict[str, Any]] = command.get("options") or []
        path: list[str] = [p for p in (group, subcommand) if p]
        nested: list[dict[str, Any]] = []
        container = nested
        for part in path:
            definition = next((o for o in option_defs if o.get("name") == part), None)
            if definition is None or definition.get("type") not in (1, 2):
                raise ValueError(f"/{name} has no subcommand or group named {part!r}")
            entry: dict[str, Any] = {"type": definition["type"], "name": part, "options": []}
            container.append(entry)
            container = entry["options"]
            option_defs = definition.get("options") or []
        resolved: dict[str, dict[str, Any]] = {}
        for option_name, value in (options or {}).items():
            definition = next((o for o in option_defs if o.get("name") == option_name), None)
            if definition is None:
                known = [o.get("name") for o in option_defs]
                raise ValueError(f"/{name} has no option {option_name!r}; it has {known}")
            container.append(
                {
                    "type": definition["type"],
                    "name": option_name,
                    "value": self._option_value(value, guild, resolved),
                }
            )
        missing = [
            o["name"]
            for o in option_defs
            if o.get("required")
            and o["name"] not in (options or {})
            and o.get("type") not in (1, 2)
        ]
        if missing:
            raise ValueError(f"/{name} needs the required options {missing}")
        data: dict[str, Any] = {
            "id": command["id"],
            "name": name,
            "type": 1,
            "options": nested,
        }
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        if resolved:
            data["resolved"] = resolved
        return self._send_interaction(INTERACTION_APPLICATION_COMMAND, data, user, channel)

    def click_button(
        self, message: Mapping[str, Any] | int, user: User, custom_id: str
    ) -> InteractionRecord:
        """A user clicks the button `custom_id` on a message the bot sent."""
        return self._component_interaction(message, user, custom_id, values=None)

    def select_option(
        self,
        message: Mapping[str, Any] | int,
        user: User,
        custom_id: str,
        values: Sequence[str],
    ) -> InteractionRecord:
        """A user picks `values` in the select menu `custom_id` on a message the bot sent."""
        return self._component_interaction(message, user, custom_id, values=list(values))

    def submit_modal(
        self,
        user: User,
        custom_id: str,
        values: Mapping[str, str | Sequence[str]],
        *,
        channel: Channel | None = None,
    ) -> InteractionRecord:
        """A user submits the modal `custom_id` that the bot opened for them.

        The submitted components mirror the modal the bot sent (action rows or labels);
        `values` maps each text input's custom_id to what the user typed, and each string
        select's (in a label) to the option values picked (a list; only the modal's options,
        as many as its min/max values allow; a select left out submits none).
        """
        opened = self._opened_modal(user, custom_id)
        if opened is None and channel is None:
            raise ValueError(
                f"the bot never opened a modal {custom_id!r} for {user.username}; pass channel= "
                "to submit one anyway"
            )
        if channel is None:
            assert opened is not None
            channel = self.channels[opened.channel_id]
        for value in values.values():
            if isinstance(value, str) and len(value) > 4000:
                raise ValueError(f"a text input holds at most 4000 characters, got {len(value)}")
        modal_components = (opened.response_data or {}).get("components") if opened else None
        components = self._modal_submit_components(modal_components, values)
        data = {"custom_id": custom_id, "components": components}
        return self._send_interaction(INTERACTION_MODAL_SUBMIT, data, user, channel)

    def send_interaction(
        self,
        type: int,
        data: dict[str, Any],
        user: User,
        channel: Channel,
        *,
        message: Mapping[str, Any] | int | None = None,
        edit: Callable[[dict[str, Any]], None] | None = None,
    ) -> InteractionRecord:
        """Any interaction, unchecked: `data` is sent as given (unknown commands, forged
        custom_ids, wrong component types); `edit` may change the whole payload before it is
        dispatched. For hostile-input tests; real clients use the helpers above."""
        stored = self._message_for(message) if message is not None else None
        return self._send_interaction(type, data, user, channel, message=stored, edit=edit)

    def dispatch_raw(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway DISPATCH exactly as given, e.g. a malformed MESSAGE_CREATE."""
        self.gateway.dispatch(event, data)
        self.notify_waiters()

    # -- waiting -------------------------------------------------------------------------

    def notify_waiters(self) -> None:
        """Wake every waiter so it re-checks its condition (called on every state change)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_until(
        self,
        probe: Callable[[], T | Awaitable[T]],
        *,
        what: str = "a condition",
        until: Callable[[T], object] = bool,
        describe: Callable[[T], str] = _SHORT.repr,
        timeout: float = 5.0,
    ) -> T:
        """Return what `probe()` saw once `until` holds for it (by default: once it is truthy).

        The one way tests wait for something. `probe` reads this server's recorded state or,
        as a coroutine function, state the server cannot see (the bot's database through the
        public store, a public attribute). It is re-checked after every change here and every
        `POLL_S` seconds, for that outside state. Past `timeout` it raises TimeoutError
        naming `what` it waited for, what the probe saw last (through `describe`), and the last
        requests.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            seen = probe()
            if inspect.isawaitable(seen):
                seen = await seen
            if until(seen):
                return seen  # type: ignore[return-value]
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = ", ".join(f"{r.method} {r.path}->{r.status}" for r in self.requests[-8:])
                raise TimeoutError(
                    f"timed out after {timeout:g}s waiting for {what}; "
                    f"saw {describe(seen)}; last requests: [{recent}]"
                )
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            await asyncio.wait({waiter}, timeout=min(remaining, POLL_S))
            if not waiter.done():  # not woken: still listed, and would pile up while polling
                self._waiters.remove(waiter)

    async def wait_for_dispatches_read(self, *, timeout: float = 5.0) -> None:
        """Wait until every connected client has read every dispatch sent to it so far.

        Asks each live session for a heartbeat (op 1, as Discord may): a client reads frames in
        order and answers with the last sequence it read. Reading is not handling: what a
        handler does after an await may still be under way.
        """
        asked = self.gateway.request_heartbeats()

        def unanswered() -> list[tuple[int, int]]:
            answered = {
                frame.connection_id: frame.data
                for frame in self.gateway.frames[asked.mark :]
                if frame.direction == "received"
                and frame.op == Opcode.HEARTBEAT
                and isinstance(frame.data, int)
            }
            return [
                (connection_id, sequence)
                for connection_id, sequence in asked.sequences.items()
                if answered.get(connection_id, -1) < sequence
            ]

        await self.wait_until(
            unanswered,
            until=lambda missing: not missing,
            what="heartbeats acknowledging every dispatch, as (connection, sequence)",
            timeout=timeout,
        )

    async def wait_for_request(
        self,
        predicate: Callable[[RecordedRequest], bool] | None = None,
        *,
        method: str | None = None,
        route: str | None = None,
        start: int = 0,
        timeout: float = 5.0,
    ) -> RecordedRequest:
        """The first answered request from index `start` on that matches everything given."""
        if route is not None:
            self._check_route(method, route)

        def find() -> RecordedRequest | None:
            for request in self.requests[start:]:
                if request.status == 0:
                    continue
                if method is not None and request.method != method.upper():
                    continue
                if route is not None and request.route != route:
                    continue
                if predicate is None or predicate(request):
                    return request
            return None

        return await self.wait_until(find, timeout=timeout, what=f"a request {method} {route}")

    async def wait_for_messages(
        self,
        channel: Channel | int,
        count: int = 1,
        *,
        timeout: float = 5.0,
        include_user_messages: bool = False,
    ) -> list[dict[str, Any]]:
        """Wait until `channel` holds `count` messages not sent by test users; returns them all."""
        channel_id = channel.id if isinstance(channel, Channel) else int(channel)

        return await self.wait_until(
            lambda: self.channel_history(channel_id, include_user_messages=include_user_messages),
            until=lambda found: len(found) >= count,
            describe=lambda found: (
                f"{len(found)}, the last {_SHORT.repr([m.get('content') for m in found[-3:]])}"
            ),
            what=f"{count} message(s) in channel {channel_id}",
            timeout=timeout,
        )

    async def wait_for_interaction_response(
        self, interaction: InteractionRecord | int, *, timeout: float = 5.0
    ) -> InteractionRecord:
        """Wait until the bot answered the interaction's callback."""
        record = self._interaction(interaction)
        return await self.wait_until(
            lambda: record,
            until=lambda record: record.responded,
            what=f"a callback for interaction {record.id}",
            timeout=timeout,
        )

    async def wait_for_gateway(
        self, op: int, *, start: int = 0, timeout: float = 5.0
    ) -> GatewayFrame:
        """The first gateway frame with opcode `op` received from a client from index `start`."""

        def find() -> GatewayFrame | None:
            for frame in self.gateway.frames[start:]:
                if frame.direction == "received" and frame.op == op:
                    return frame
            return None

        return await self.wait_until(find, timeout=timeout, what=f"gateway opcode {op}")

    async def wait_for_identified(self, *, timeout: float = 5.0) -> None:
        """Wait until a client is connected with a live session."""
        await self.wait_until(
            lambda: any(c.session is not None for c in self.gateway.live_connections),
            timeout=timeout,
            what="an identified gateway connection",
        )

    # -- inspection ----------------------------------------------------------------------

    def requests_to(self, method: str, route: str) -> list[RecordedRequest]:
        """Every recorded request to a route template, e.g. "/channels/{channel_id}/messages"."""
        self._check_route(method, route)
        return [r for r in self.requests if r.method == method.upper() and r.route == route]

    @property
    def unknown_requests(self) -> list[RecordedRequest]:
        """Requests no route matched: the bot called something this server does not model."""
        return [r for r in self.requests if r.route is None]

    def channel_history(
        self, channel: Channel | int, *, include_user_messages: bool = True
    ) -> list[dict[str, Any]]:
        """Messages of a channel, oldest first."""
        channel_id = channel.id if isinstance(channel, Channel) else int(channel)
        ids = self.channel_messages.get(channel_id, [])
        return [
            self.messages[i]
            for i in ids
            if i in self.messages and (include_user_messages or i not in self._user_message_ids)
        ]

    def _check_route(self, method: str | None, route: str) -> None:
        known = {template for _, template, _ in ROUTES}
        if route not in known:
            raise ValueError(f"unknown route template {route!r}; known: {sorted(known)}")
        if method is not None and (method.upper(), route) not in {(m, t) for m, t, _ in ROUTES}:
            raise ValueError(f"{route!r} has no {method.upper()} handler")

    # -- faults --------------------------------------------------------------------------

    def inject_fault(
        self,
        method: str,
        route: str,
        *,
        status: int = 429,
        retry_after: float = 0.05,
        times: int = 1,
        global_: bool = False,
        body: Any = None,
    ) -> Fault:
        """Answer the next `times` matching requests with `status` instead of handling them.

        429s carry Discord's body (`message`, `retry_after`, `global`) and headers
        (Retry-After, X-RateLimit-*, Via); 5xx carry a Discord error body unless `body` is given.
        """
        self._check_route(method, route)
        if times < 1:
            raise ValueError("times must be at least 1")
        if not 400 <= status <= 599:
            raise ValueError(f"a fault status must be 4xx or 5xx, got {status}")
        if retry_after < 0:
            raise ValueError("retry_after cannot be negative")
        fault = Fault(method.upper(), route, status, retry_after, times, global_, body)
        self.faults.append(fault)
        return fault

    def set_rate_limit(self, method: str, route: str, limit: int, per: float) -> None:
        """Allow `limit` requests per `per` seconds on one route; beyond that answer 429."""
        self.rest.set_rate_limit(method, route, limit, per)

    async def drop_gateway(self, code: int | None = None) -> None:
        """Kill the bot's socket (abruptly when `code` is None) and wait for it to be gone.

        The session stays valid, so discord.py RESUMEs and gets the missed events replayed.
        """
        await self.gateway.drop(code)
        self.notify_waiters()

    async def invalidate_session(self, *, resumable: bool = False) -> None:
        """Send INVALID_SESSION; when not resumable discord.py must IDENTIFY again."""
        await self.gateway.invalidate_sessions(resumable=resumable)

    async def request_reconnect(self) -> None:
        """Send RECONNECT (op 7), as Discord does before it moves a session."""
        await self.gateway.request_reconnect()

    # -- gateway world protocol ----------------------------------------------------------

    def ready_payload(
        self, session_id: str, resume_url: str, shard: list[int] | None
    ) -> dict[str, Any]:
        me = {
            **self.bot_user.to_dict(),
            "verified": True,
            "mfa_enabled": False,
            "email": None,
        }
        payload: dict[str, Any] = {
            "v": 10,
            "user": me,
            "user_settings": {},
            "guilds": [{"id": str(g), "unavailable": True} for g in self._bot_guild_ids()],
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "session_id": session_id,
            "session_type": "normal",
            "resume_gateway_url": resume_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "geo_ordered_rtc_regions": ["local"],
            "auth": {},
            "_trace": ["fake-discord"],
        }
        if shard is not None:
            payload["shard"] = shard
        return payload

    def guild_create_payloads(self) -> list[dict[str, Any]]:
        return [self.guilds[g].to_dict(for_user_id=self.bot_user.id) for g in self._bot_guild_ids()]

    def member_chunk_payloads(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        guild = self.guilds.get(int(request.get("guild_id") or 0))
        if guild is None:
            return []
        members = list(guild.members.values())
        if request.get("user_ids"):
            wanted = {int(u) for u in request["user_ids"]}
            members = [m for m in members if m.user.id in wanted]
        elif request.get("query"):
            query = str(request["query"]).lower()
            members = [m for m in members if m.user.username.lower().startswith(query)]
        limit = int(request.get("limit") or 0)
        if limit:
            members = members[:limit]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [m.to_dict() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if request.get("nonce"):
            chunk["nonce"] = request["nonce"]
        return [chunk]

    def _bot_guild_ids(self) -> Iterable[int]:
        return [g.id for g in self.guilds.values() if self.bot_user.id in g.members]

    # -- messages (shared by REST handlers and test actions) -------------------------------

    def build_message(
        self,
        channel: Channel,
        author: User,
        content: str,
        *,
        message_id: int | None = None,
        extra_mentions: Sequence[User] = (),
        extra_role_mentions: Sequence[Role] = (),
        allowed_mentions: Mapping[str, Any] | None = None,
        attachments: Sequence[dict[str, Any]] = (),
        embeds: Sequence[Any] = (),
        components: Sequence[Any] = (),
        sticker_items: Sequence[Any] = (),
        referenced: dict[str, Any] | None = None,
        type: int = 0,
        flags: int = 0,
        webhook_id: int | None = None,
        author_override: dict[str, Any] | None = None,
        interaction_metadata: dict[str, Any] | None = None,
        nonce: Any = None,
        tts: bool = False,
    ) -> dict[str, Any]:
        """A complete message payload as Discord sends it in MESSAGE_CREATE."""
        message_id = message_id or self.snowflakes.next()
        guild = self.guild_of(channel)
        mentions, role_ids, everyone = self._resolve_mentions(
            content, guild, allowed_mentions, extra_mentions, extra_role_mentions
        )
        replied_allowed = allowed_mentions is None or allowed_mentions.get("replied_user", False)
        if referenced is not None and replied_allowed:
            replied = self.users.get(int(referenced["author"]["id"]))
            if replied is not None and all(m["id"] != str(replied.id) for m in mentions):
                mentions.append(replied.to_dict())
        message: dict[str, Any] = {
            "id": str(message_id),
            "type": type,
            "channel_id": str(channel.id),
            "author": author_override or author.to_dict(),
            "content": content,
            "timestamp": iso_timestamp(snowflake_time(message_id)),
            "edited_timestamp": None,
            "tts": tts,
            "mention_everyone": everyone,
            "mentions": mentions,
            "mention_roles": [str(r) for r in role_ids],
            "mention_channels": [],
            "attachments": list(attachments),
            "embeds": list(embeds),
            "components": list(components),
            "reactions": [],
            "sticker_items": list(sticker_items),
            "pinned": False,
            "flags": flags,
            "position": 0,
        }
        if guild is not None:
            message["guild_id"] = str(guild.id)
            member = guild.members.get(author.id)
            if member is not None and webhook_id is None:
                message["member"] = member.to_dict(with_user=False)
        if webhook_id is not None:
            message["webhook_id"] = str(webhook_id)
        if interaction_metadata is not None:
            message["interaction_metadata"] = interaction_metadata
            message["application_id"] = str(self.application_id)
        if nonce is not None:
            message["nonce"] = nonce
        if referenced is not None:
            message["message_reference"] = {
                "type": 0,
                "message_id": referenced["id"],
                "channel_id": referenced["channel_id"],
                **({"guild_id": referenced["guild_id"]} if "guild_id" in referenced else {}),
                "fail_if_not_exists": True,
            }
            message["referenced_message"] = {
                k: v for k, v in referenced.items() if k != "referenced_message"
            }
        return message

    def store_message(
        self, message: dict[str, Any], *, in_history: bool = True, dispatch: bool = True
    ) -> None:
        """Keep a message and echo it as MESSAGE_CREATE, as Discord does to its author too."""
        message_id = int(message["id"])
        channel_id = int(message["channel_id"])
        self.messages[message_id] = message
        if in_history:
            self.channel_messages.setdefault(channel_id, []).append(message_id)
            channel = self.channels.get(channel_id)
            if channel is not None:
                channel.last_message_id = message_id
                channel.message_count += 1
        if dispatch:
            self.gateway.dispatch("MESSAGE_CREATE", message)
        self.notify_waiters()

    def update_message(self, message: dict[str, Any], *, dispatch: bool = True) -> None:
        message["edited_timestamp"] = iso_timestamp(datetime.datetime.now(datetime.UTC))
        if dispatch:
            self.gateway.dispatch("MESSAGE_UPDATE", message)
        self.notify_waiters()

    def delete_message(self, message: dict[str, Any]) -> None:
        message_id = int(message["id"])
        channel_id = int(message["channel_id"])
        self.messages.pop(message_id, None)
        history = self.channel_messages.get(channel_id, [])
        if message_id in history:
            history.remove(message_id)
        event = {"id": message["id"], "channel_id": message["channel_id"]}
        if "guild_id" in message:
            event["guild_id"] = message["guild_id"]
        self.gateway.dispatch("MESSAGE_DELETE", event)
        self.notify_waiters()

    def _store_attachment(self, filename: str, content_type: str, data: bytes) -> dict[str, Any]:
        attachment_id = self.snowflakes.next()
        self.attachments[attachment_id] = (filename, content_type, data)
        url = f"{self.base_url}/attachments/{attachment_id}/{filename}"
        return {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        }

    def _resolve_mentions(
        self,
        content: str,
        guild: Guild | None,
        allowed: Mapping[str, Any] | None,
        extra_users: Sequence[User],
        extra_roles: Sequence[Role],
    ) -> tuple[list[dict[str, Any]], list[int], bool]:
        parse = (
            set(allowed.get("parse", [])) if allowed is not None else {"users", "roles", "everyone"}
        )
        allowed_users = {int(u) for u in (allowed or {}).get("users", [])}
        allowed_roles = {int(r) for r in (allowed or {}).get("roles", [])}
        user_ids: list[int] = []
        for match in _USER_MENTION.finditer(content):
            user_id = int(match.group(1))
            if ("users" in parse or user_id in allowed_users) and user_id not in user_ids:
                user_ids.append(user_id)
        user_ids += [u.id for u in extra_users if u.id not in user_ids]
        mentions = []
        for user_id in user_ids:
            user = self.users.get(user_id)
            if user is None:
                continue
            entry = user.to_dict()
            if guild is not None and user_id in guild.members:
                entry["member"] = guild.members[user_id].to_dict(with_user=False)
            mentions.append(entry)
        role_ids: list[int] = []
        for match in _ROLE_MENTION.finditer(content):
            role_id = int(match.group(1))
            if ("roles" in parse or role_id in allowed_roles) and role_id not in role_ids:
                role_ids.append(role_id)
        role_ids += [r.id for r in extra_roles if r.id not in role_ids]
        everyone = "everyone" in parse and ("@everyone" in content or "@here" in content)
        return mentions, role_ids, everyone

    def _message_for(self, message: Mapping[str, Any] | int) -> dict[str, Any]:
        message_id = int(message["id"]) if not isinstance(message, int) else message
        try:
            return self.messages[message_id]
        except KeyError:
            raise ValueError(f"no message {message_id} on this server") from None

    def _require_channel_access(self, channel: Channel, user: User) -> None:
        if channel.id not in self.channels:
            raise ValueError(f"channel {channel.id} does not exist on this server")
        if channel.type is ChannelType.DM:
            if user.id != self.bot_user.id and user not in channel.recipients:
                raise ValueError(f"{user.username} is not a recipient of DM channel {channel.id}")
            return
        guild = self.guild_of(channel)
        if guild is None or user.id not in guild.members:
            raise ValueError(f"{user.username} is not a member of the channel's guild")

    # -- interactions --------------------------------------------------------------------

    def _synced_command(self, name: str, guild: Guild | None) -> dict[str, Any]:
        candidates = list(self.guild_commands.get(guild.id, [])) if guild else []
        candidates += self.global_commands
        for command in candidates:
            if command["name"] == name and command.get("type", 1) == 1:
                return command
        synced = sorted({c["name"] for c in candidates})
        raise ValueError(f"no slash command /{name} was synced for this channel; synced: {synced}")

    def _option_value(
        self, value: Any, guild: Guild | None, resolved: dict[str, dict[str, Any]]
    ) -> Any:
        if isinstance(value, User):
            resolved.setdefault("users", {})[str(value.id)] = value.to_dict()
            if guild is not None and value.id in guild.members:
                member = guild.members[value.id].to_dict(
                    with_user=False, permissions=guild.permissions_of(value.id)
                )
                resolved.setdefault("members", {})[str(value.id)] = member
            return str(value.id)
        if isinstance(value, Role):
            resolved.setdefault("roles", {})[str(value.id)] = value.to_dict()
            return str(value.id)
        if isinstance(value, Channel):
            entry = value.to_dict()
            entry["permissions"] = str(guild.permissions_of(self.bot_user.id) if guild else 0)
            resolved.setdefault("channels", {})[str(value.id)] = entry
            return str(value.id)
        if type(value) in _OPTION_TYPES:
            return value
        raise TypeError(
            f"unsupported option value {value!r}: use str, int, bool, float, User, Role or Channel"
        )

    def _component_interaction(
        self,
        message: Mapping[str, Any] | int,
        user: User,
        custom_id: str,
        *,
        values: list[str] | None,
    ) -> InteractionRecord:
        stored = self._message_for(message)
        component = _find_component(stored.get("components") or [], custom_id)
        if component is None:
            raise ValueError(
                f"message {stored['id']} has no component with custom_id {custom_id!r}"
            )
        component_type = int(component["type"])
        if values is None and component_type != 2:
            raise ValueError(f"{custom_id!r} is not a button (component type {component_type})")
        if values is not None and component_type not in (3, 5, 6, 7, 8):
            raise ValueError(
                f"{custom_id!r} is not a select menu (component type {component_type})"
            )
        if component.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled; a user cannot use it")
        if values is not None:
            low, high = component.get("min_values", 1), component.get("max_values", 1)
            if not low <= len(values) <= high:
                raise ValueError(f"{custom_id!r} accepts {low} to {high} values, got {len(values)}")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = values
        channel = self.channels[int(stored["channel_id"])]
        return self._send_interaction(
            INTERACTION_MESSAGE_COMPONENT, data, user, channel, message=stored
        )

    def _opened_modal(self, user: User, custom_id: str) -> InteractionRecord | None:
        for record in reversed(list(self.interactions.values())):
            if (
                record.user_id == user.id
                and record.response_type == 9
                and (record.response_data or {}).get("custom_id") == custom_id
            ):
                return record
        return None

    @staticmethod
    def _modal_submit_components(
        modal_components: list[dict[str, Any]] | None, values: Mapping[str, str | Sequence[str]]
    ) -> list[dict[str, Any]]:
        if modal_components is None:
            return [
                {"type": 1, "components": [{"type": 4, "custom_id": key, "value": value}]}
                for key, value in values.items()
            ]
        seen: set[str] = set()

        def submitted(component: dict[str, Any]) -> dict[str, Any] | None:
            kind = component.get("type")
            if kind not in (3, 4):
                return None
            custom_id = component["custom_id"]
            seen.add(custom_id)
            entry: dict[str, Any] = {"type": kind, "custom_id": custom_id}
            if kind == 4:
                if custom_id not in values and component.get("required", True):
                    raise ValueError(f"the modal's text input {custom_id!r} is required")
                value = values.get(custom_id, "")
                if not isinstance(value, str):
                    raise ValueError(f"the modal's text input {custom_id!r} takes text")
                entry["value"] = value
            else:
                picked = values.get(custom_id, [])
                if isinstance(picked, str):
                    raise ValueError(f"the modal's select {custom_id!r} takes a list of values")
                options = {option["value"] for option in component.get("options") or []}
                if not set(picked) <= options:
                    missing = sorted(set(picked) - options)
                    raise ValueError(f"the modal's select {custom_id!r} has no option {missing}")
                required = component.get("required", True)
                low = component.get("min_values", 1) if required or picked else 0
                high = component.get("max_values", 1)
                if not low <= len(picked) <= high:
                    raise ValueError(
                        f"the modal's select {custom_id!r} takes {low} to {high} values, "
                        f"got {len(picked)}"
                    )
                entry["values"] = list(picked)
            if "id" in component:
                entry["id"] = component["id"]
            return entry

        result = []
        for row in modal_components:
            if row.get("type") == 1:
                inner = [s for c in row.get("components", []) if (s := submitted(c)) is not None]
                result.append({"type": 1, "components": inner})
            elif row.get("type") == 18:
                inner_component = submitted(row["component"])
                if inner_component is not None:
                    result.append(
                        {"type": 18, "id": row.get("id", 0), "component": inner_component}
                    )
        unknown = set(values) - seen
        if unknown:
            raise ValueError(f"the modal has no inputs {sorted(unknown)}; it has {sorted(seen)}")
        return result

    def _send_interaction(
        self,
        type: int,
        data: dict[str, Any],
        user: User,
        channel: Channel,
        *,
        message: dict[str, Any] | None = None,
        edit: Callable[[dict[str, Any]], None] | None = None,
    ) -> InteractionRecord:
        self._require_channel_access(channel, user)
        interaction_id = self.snowflakes.next()
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(64)
        guild = self.guild_of(channel)
        channel_payload = channel.to_dict()
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": type,
            "data": data,
            "channel": channel_payload,
            "channel_id": str(channel.id),
            "token": token,
            "version": 1,
            "locale": "en-US",
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if guild is not None:
            payload.update(
                guild_id=str(guild.id),
                guild_locale="en-US",
                guild={"id": str(guild.id), "locale": "en-US", "features": []},
                member=self._member(guild, user.id).to_dict(
                    permissions=guild.permissions_of(user.id)
                ),
                app_permissions=str(guild.permissions_of(self.bot_user.id)),
                authorizing_integration_owners={"0": str(guild.id)},
                context=0,
            )
            channel_payload["permissions"] = str(guild.permissions_of(user.id))
        else:
            payload.update(
                user=user.to_dict(),
                app_permissions=str(DEFAULT_BOT_PERMISSIONS),
                authorizing_integration_owners={"0": str(user.id)},
                context=1,
            )
        if message is not None:
            payload["message"] = message
        if edit is not None:
            edit(payload)
        record = InteractionRecord(
            id=interaction_id,
            token=token,
            type=type,
            payload=payload,
            user_id=user.id,
            channel_id=channel.id,
            created_monotonic=time.monotonic(),
        )
        self.interactions[interaction_id] = record
        self.gateway.dispatch("INTERACTION_CREATE", payload)
        return record

    def _interaction(self, interaction: InteractionRecord | int) -> InteractionRecord:
        interaction_id = (
            interaction.id if isinstance(interaction, InteractionRecord) else interaction
        )
        try:
            return self.interactions[int(interaction_id)]
        except KeyError:
            raise ValueError(f"no interaction {interaction_id} was sent by this server") from None

    def interaction_by_token(self, token: str) -> InteractionRecord | None:
        for record in self.interactions.values():
            if record.token == token:
                return record
        return None


def _find_component(components: Sequence[Any], custom_id: str) -> dict[str, Any] | None:
    """Depth-first search of a message's components (rows, containers, sections)."""
    for component in components:
        if not isinstance(component, dict):
            continue
        if component.get("custom_id") == custom_id:
            return component
        children = list(component.get("components") or [])
        if isinstance(component.get("accessory"), dict):
            children.append(component["accessory"])
        if isinstance(component.get("component"), dict):
            children.append(component["component"])
        found = _find_component(children, custom_id)
        if found is not None:
            return found
    return None
