"""The world a fake Discord server keeps: users, guilds, channels, roles, members, webhooks.

Each object renders itself as the JSON payload Discord API v10 sends (ids as strings,
ISO timestamps), complete enough for discord.py 2.7 to parse without errors. Only the
fields discord.py reads, plus the ones a careful bot might read, are filled in.
"""

from __future__ import annotations

import datetime
import enum
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = (
    "DEFAULT_BOT_PERMISSIONS",
    "DEFAULT_EVERYONE_PERMISSIONS",
    "DISCORD_EPOCH_MS",
    "Channel",
    "ChannelType",
    "Guild",
    "Member",
    "Permission",
    "Role",
    "SnowflakeGenerator",
    "User",
    "Webhook",
    "iso_timestamp",
    "snowflake_time",
)

DISCORD_EPOCH_MS = 1_420_070_400_000


class Permission(enum.IntFlag):
    """The permission bits this server computes with (a subset of Discord's)."""

    CREATE_INSTANT_INVITE = 1 << 0
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    CHANGE_NICKNAME = 1 << 26
    MANAGE_ROLES = 1 << 28
    MANAGE_WEBHOOKS = 1 << 29
    USE_APPLICATION_COMMANDS = 1 << 31
    MANAGE_THREADS = 1 << 34
    CREATE_PUBLIC_THREADS = 1 << 35
    CREATE_PRIVATE_THREADS = 1 << 36
    SEND_MESSAGES_IN_THREADS = 1 << 38


ALL_PERMISSIONS = (1 << 53) - 1

DEFAULT_EVERYONE_PERMISSIONS = int(
    Permission.CREATE_INSTANT_INVITE
    | Permission.ADD_REACTIONS
    | Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.USE_EXTERNAL_EMOJIS
    | Permission.CHANGE_NICKNAME
    | Permission.USE_APPLICATION_COMMANDS
    | Permission.CREATE_PUBLIC_THREADS
    | Permission.SEND_MESSAGES_IN_THREADS
)

DEFAULT_BOT_PERMISSIONS = int(
    DEFAULT_EVERYONE_PERMISSIONS
    | Permission.MANAGE_MESSAGES
    | Permission.MANAGE_WEBHOOKS
    | Permission.MANAGE_THREADS
    | Permission.CREATE_PRIVATE_THREADS
)


class ChannelType(enum.IntEnum):
    """Discord channel types this server can hold."""

    GUILD_TEXT = 0
    DM = 1
    GUILD_VOICE = 2
    GUILD_CATEGORY = 4
    GUILD_ANNOUNCEMENT = 5
    PUBLIC_THREAD = 11
    PRIVATE_THREAD = 12
    GUILD_FORUM = 15

    @property
    def is_thread(self) -> bool:
        return self in (ChannelType.PUBLIC_THREAD, ChannelType.PRIVATE_THREAD)


def snowflake_time(snowflake: int) -> datetime.datetime:
    """The UTC creation time encoded in a snowflake."""
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)


def iso_timestamp(moment: datetime.datetime) -> str:
    """Discord's timestamp format: ISO 8601 with microseconds and a +00:00 offset."""
    return moment.astimezone(datetime.UTC).isoformat(timespec="microseconds")


class SnowflakeGenerator:
    """Makes strictly increasing snowflakes that encode the current wall-clock time.

    Discord packs milliseconds since 2015-01-01 in the top 42 bits and a 12-bit counter at
    the bottom; at most 4096 ids per millisecond, after which the clock is nudged forward
    so ids stay unique and ordered.
    """

    def __init__(self, worker_id: int = 1, process_id: int = 1) -> None:
        if not 0 <= worker_id < 32 or not 0 <= process_id < 32:
            raise ValueError("worker_id and process_id must each be in 0..31")
        self._worker_process = (worker_id << 17) | (process_id << 12)
        self._last_ms = 0
        self._increment = 0

    def next(self) -> int:
        now_ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        if now_ms <= self._last_ms:
            self._increment += 1
            if self._increment >= 4096:
                self._last_ms += 1
                self._increment = 0
            now_ms = self._last_ms
        else:
            self._increment = 0
        self._last_ms = now_ms
        return (now_ms << 22) | self._worker_process | self._increment


@dataclass(eq=False)
class User:
    """A Discord user (or bot account)."""

    id: int
    username: str
    bot: bool = False
    global_name: str | None = None
    avatar: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": self.avatar,
            "avatar_decoration_data": None,
            "banner": None,
            "accent_color": None,
            "public_flags": 0,
            "flags": 0,
            "clan": None,
            "primary_guild": None,
        }
        if self.bot:
            data["bot"] = True
        return data

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"


@dataclass(eq=False)
class Role:
    """A guild role. The @everyone role shares its guild's id."""

    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0
    color: int = 0
    hoist: bool = False
    mentionable: bool = False
    managed: bool = False
    bot_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "color": self.color,
            "colors": {
                "primary_color": self.color,
                "secondary_color": None,
                "tertiary_color": None,
            },
            "hoist": self.hoist,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": self.mentionable,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"


@dataclass(eq=False)
class Channel:
    """A guild channel, thread or DM channel."""

    id: int
    type: ChannelType
    name: str | None = None
    guild_id: int | None = None
    parent_id: int | None = None
    position: int = 0
    topic: str | None = None
    nsfw: bool = False
    owner_id: int | None = None
    recipients: list[User] = field(default_factory=list)
    last_message_id: int | None = None
    message_count: int = 0
    archived: bool = False
    auto_archive_duration: int = 1440
    created_at: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC)
    )

    def to_dict(self) -> dict[str, Any]:
        last = str(self.last_message_id) if self.last_message_id else None
        if self.type is ChannelType.DM:
            return {
                "id": str(self.id),
                "type": int(self.type),
                "last_message_id": last,
                "flags": 0,
                "recipients": [user.to_dict() for user in self.recipients],
            }
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": int(self.type),
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "nsfw": self.nsfw,
            "parent_id": str(self.parent_id) if self.parent_id else None,
            "flags": 0,
            "rate_limit_per_user": 0,
        }
        if self.type is ChannelType.GUILD_CATEGORY:
            return data
        data["last_message_id"] = last
        if not self.type.is_thread:
            data["topic"] = self.topic
            return data
        del data["position"], data["permission_overwrites"]
        data.update(
            owner_id=str(self.owner_id) if self.owner_id else None,
            message_count=self.message_count,
            total_message_sent=self.message_count,
            member_count=1,
            thread_metadata={
                "archived": self.archived,
                "auto_archive_duration": self.auto_archive_duration,
                "archive_timestamp": iso_timestamp(self.created_at),
                "locked": False,
                "create_timestamp": iso_timestamp(self.created_at),
                "invitable": self.type is ChannelType.PRIVATE_THREAD,
            },
        )
        return data

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"


@dataclass(eq=False)
class Member:
    """A user's membership of a guild: nickname and roles (ids, @everyone excluded)."""

    user: User
    guild_id: int
    role_ids: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC)
    )

    def to_dict(self, *, with_user: bool = True, permissions: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "roles": [str(role_id) for role_id in self.role_ids],
            "joined_at": iso_timestamp(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.to_dict()
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass(eq=False)
class Guild:
    """A guild with its roles, channels and members (keyed by user id)."""

    id: int
    name: str
    owner_id: int
    roles: dict[int, Role] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)
    created_at: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC)
    )

    @property
    def everyone_role(self) -> Role:
        return self.roles[self.id]

    def permissions_of(self, user_id: int) -> int:
        """Guild-level permissions of a member (channel overwrites are not modelled)."""
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        member = self.members.get(user_id)
        if member is None:
            return 0
        value = self.everyone_role.permissions
        for role_id in member.role_ids:
            role = self.roles.get(role_id)
            if role is not None:
                value |= role.permissions
        if value & Permission.ADMINISTRATOR:
            return ALL_PERMISSIONS
        return value

    def to_dict(self, *, for_user_id: int | None = None) -> dict[str, Any]:
        """The full GUILD_CREATE payload; `for_user_id` sets joined_at to that member's."""
        joined = self.members.get(for_user_id) if for_user_id is not None else None
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "region": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "widget_enabled": False,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "features": [],
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "preferred_locale": "en-US",
            "max_members": 500000,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "incidents_data": None,
            "roles": [role.to_dict() for role in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "soundboard_sounds": [],
            "channels": [
                channel.to_dict()
                for channel in self.channels.values()
                if not channel.type.is_thread
            ],
            "threads": [
                channel.to_dict() for channel in self.channels.values() if channel.type.is_thread
            ],
            "members": [member.to_dict() for member in self.members.values()],
            "member_count": len(self.members),
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "embedded_activities": [],
            "large": False,
            "lazy": True,
            "unavailable": False,
            "joined_at": iso_timestamp(joined.joined_at if joined else self.created_at),
        }


@dataclass(eq=False)
class Webhook:
    """A channel webhook (type 1, incoming) that a bot created."""

    id: int
    channel_id: int
    guild_id: int | None
    name: str
    creator: User
    application_id: int | None
    #: The avatar's hash, as Discord shows it (``None``: the default avatar).
    avatar: str | None = None
    #: The image bytes the avatar was made from.
    avatar_image: bytes | None = None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": 1,
            "guild_id": str(self.guild_id) if self.guild_id else None,
            "channel_id": str(self.channel_id),
            "name": self.name,
            "avatar": self.avatar,
            "token": self.token,
            "application_id": str(self.application_id) if self.application_id else None,
            "user": self.creator.to_dict(),
        }
