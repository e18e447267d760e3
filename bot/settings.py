"""Greenroom's configuration.

Which source wins: environment variables (``GREENROOM_...``, nested groups with ``__``, e.g.
``GREENROOM_MODEL__PROVIDER=openai``), then ``greenroom.toml`` in the working directory (or the file
named by ``GREENROOM_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from feedback.rubric import DEFAULT_DIMENSIONS, Dimension, Rubric, RubricError

__all__ = [
    "ChatLimits",
    "ConfigError",
    "ConsoleSettings",
    "DiscordSettings",
    "HealthSettings",
    "MemorySettings",
    "ModelSettings",
    "PrivacySettings",
    "ReviewSettings",
    "RubricSettings",
    "Settings",
    "get_settings",
    "load_settings",
]


class ConfigError(Exception):
    """A setting has a value that is not allowed; the message is one line naming it."""


class ModelSettings(BaseModel):
    """Which language model writes the persona's replies."""

    provider: Literal["local", "openai", "fake"] = "local"
    #: For ``openai``: the model name the server knows; ignored for ``local``.
    name: str = "gpt-4o-mini"
    #: For ``openai``: any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, Ollama).
    base_url: str | None = None
    #: Environment variable holding the API key (the key itself never sits in a config file).
    api_key_env: str = "OPENAI_API_KEY"
    #: For ``local``: a GGUF file; empty means the bundled SmolLM2-135M-Instruct.
    gguf_path: Path | None = None
    #: For ``local``: a LoRA adapter folder (``greenroom train --out``), served merged into the
    #: base it was trained on (converted to GGUF once, inside the folder). Not with gguf_path.
    adapter_path: Path | None = None
    context_tokens: int = Field(default=2048, ge=256, le=131072)
    max_tokens: int = Field(default=96, ge=1, le=4096)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    #: For ``local``: penalises repeated tokens (1.0: off).
    repeat_penalty: float = Field(default=1.15, ge=1.0, le=2.0)
    threads: int = Field(default=2, ge=1, le=64)
    #: Seconds one generation may take before it is abandoned for an in-persona fallback.
    timeout_s: float = Field(default=60.0, gt=0.0, le=600.0)

    @model_validator(mode="after")
    def _check_adapter(self) -> ModelSettings:
        if self.adapter_path is not None:
            if self.provider != "local":
                raise ValueError("an adapter (model.adapter_path) needs model.provider = local")
            if self.gguf_path is not None:
                raise ValueError(
                    "set model.adapter_path or model.gguf_path, not both: "
                    "an adapter is served on the base it was trained on"
                )
        return self


class MemorySettings(BaseModel):
    """Vector memory (chromadb + sentence-transformers)."""

    enabled: bool = True
    #: Empty: embedded ``PersistentClient`` under ``data_dir/chroma``. Set: a Chroma server.
    chroma_host: str | None = None
    chroma_port: int = Field(default=8000, ge=1, le=65535)
    #: ``onnx`` (float32, exported once from the bundled model into ``data_dir/models``; the
    #: same vectors as ``torch``, faster), ``onnx-int8`` (that export quantized) or ``torch``.
    #: ``onnx`` by default: int8 is faster but forgets more planted facts in large scopes, and a
    #: forgotten fact is felt where a few ms of recall are not (``bench/RESULTS.md``, retrieval).
    embedding_backend: Literal["onnx-int8", "onnx", "torch"] = "onnx"
    recall_k: int = Field(default=6, ge=0, le=50)
    recall_token_budget: int = Field(default=200, ge=0, le=4000)
    #: Scopes (persona and user) whose vector indexes the embedded store keeps loaded, about
    #: 2.8 MB each; an evicted scope is loaded again on its next use (a few ms).
    index_cache_scopes: int = Field(default=1024, ge=8, le=100_000)


class ChatLimits(BaseModel):
    """Bounds on what a user may send, and how the conversation is laid out for the model."""

    max_message_chars: int = Field(default=4000, ge=1, le=100_000)
    history_turns: int = Field(default=40, ge=1, le=1000)
    #: Where recalled memories and triggered lore go in the prompt, in messages from its end
    #: (1: just before the user's new message; 0: after it); later prompts keep them there.
    #: At 0 or 1 each prompt starts with the whole previous one, which is what model servers'
    #: prompt caches reuse; deeper, everything after the new context message is read again.
    context_depth: int = Field(default=1, ge=0, le=100)


class DiscordSettings(BaseModel):
    """Discord transport."""

    #: The bot token; ``DISCORD_TOKEN`` in the environment works too.
    token: SecretStr | None = None
    #: The REST base (``https://discord.com/api/v10``); the one place to point the bot elsewhere.
    api_base: str | None = None
    #: Sync slash commands at start-up (global commands; one PUT).
    sync_commands: bool = True
    #: Use channel webhooks, where the bot may, to show the persona's name and avatar.
    use_webhooks: bool = True
    #: Messages per ``cooldown_seconds`` a user may send before one polite notice.
    cooldown_messages: int = Field(default=5, ge=1, le=1000)
    cooldown_seconds: float = Field(default=10.0, gt=0.0, le=3600.0)
    #: What to do with attachment- or sticker-only messages.
    non_text: Literal["ignore", "reply"] = "reply"
    #: Seconds SIGTERM waits for replies in flight.
    shutdown_grace_s: float = Field(default=20.0, ge=0.0, le=600.0)
    #: Seconds one message keeps being retried while the database is unreachable (its channel
    #: waits, in order); after that it is given up with an error in the log. 0: no retry.
    db_retry_s: float = Field(default=120.0, ge=0.0, le=3600.0)
    #: After each READY, read back this many minutes of channel history and answer what was
    #: missed (messages sent while the bot was down or died mid-turn); 0 turns it off.
    catch_up_minutes: float = Field(default=15.0, ge=0.0, le=1440.0)


class ConsoleSettings(BaseModel):
    """The live actor console."""

    #: Seconds a held reply waits for an actor (review mode and risky replies).
    hold_seconds: float = Field(default=45.0, ge=1.0, le=840.0)
    #: When the hold runs out: send the reply as it is, or drop it for a holding line.
    on_timeout: Literal["send", "drop"] = "send"
    #: How long an actor's claim on a conversation lasts without activity.
    claim_minutes: float = Field(default=10.0, gt=0.0, le=240.0)
    #: The server whose console shows DM conversations (empty: DMs are not mirrored).
    staff_guild_id: int | None = None


class SafetySettings(BaseModel):
    """What an urgent reply (self-harm or crisis language) becomes when no actor can review it."""

    #: Sent after the persona's safety line, one per line. Set the ones that serve your users.
    help_resources: list[str] = Field(
        default_factory=lambda: [
            "If you are in danger right now, call your local emergency number.",
            "US: call or text 988 (Suicide & Crisis Lifeline).",
            "UK and Ireland: call Samaritans on 116 123.",
            "Elsewhere: find a free, confidential helpline at https://findahelpline.com",
        ],
        min_length=1,
        max_length=10,
    )

    @model_validator(mode="after")
    def _check_resources(self) -> SafetySettings:
        if any(not line.strip() or len(line) > 300 for line in self.help_resources):
            raise ValueError("each of safety.help_resources must be 1 to 300 characters")
        return self


class HealthSettings(BaseModel):
    """The running bot's ``/healthz`` endpoint (JSON; 200 healthy, 503 degraded)."""

    host: str = "127.0.0.1"
    #: Empty or 0: no endpoint.
    port: int | None = Field(default=None, ge=0, le=65535)
    #: Seconds a database or memory probe may take before it counts as down.
    probe_timeout_s: float = Field(default=2.0, gt=0.0, le=60.0)


class PrivacySettings(BaseModel):
    """Keys for what leaves Greenroom."""

    #: The HMAC key of the pseudonyms in exports and the API (``user_…``, ``actor_…``). Empty:
    #: a random key kept in ``data_dir/pseudonym.key``. Keep it stable: a new key renames
    #: everyone.
    pseudonym_secret: SecretStr | None = None


class RubricSettings(BaseModel):
    """The deployment's scoring rubric: dimensions scored 1 to 5, each score anchored.

    Persona cards may add dimensions under ``data.extensions.greenroom.rubric``. Every score
    also carries the unsafe/invalid flag (always required; not a dimension). Changing the list
    makes a new rubric version; scores given earlier keep theirs (:mod:`feedback.rubric`).
    """

    dimensions: list[Dimension] = Field(default_factory=lambda: list(DEFAULT_DIMENSIONS))

    @model_validator(mode="after")
    def _check_rubric(self) -> RubricSettings:
        try:
            self.rubric()
        except RubricError as error:
            raise ValueError(str(error)) from None
        return self

    def rubric(self) -> Rubric:
        """The deployment's rubric (before any card adds to it)."""
        return Rubric.of(self.dimensions)


class ReviewSettings(BaseModel):
    """Overlapping reviews of finished turns, after the fact (:mod:`feedback.reviews`)."""

    #: Share of finished turns sampled for review; every flagged or rewritten reply always is.
    share: float = Field(default=0.1, ge=0.0, le=1.0)
    #: Independent reviews each queued reply waits for.
    per_item: int = Field(default=3, ge=1, le=20)
    #: Majority share on "acceptable" that accepts an item (below it: disputed). A majority is
    #: at least half, so 0.5 accepts every item that is not a tie.
    acceptance: float = Field(default=0.6, ge=0.5, le=1.0)
    #: Minutes a pulled item stays the reviewer's before its place goes back to the queue.
    lease_minutes: float = Field(default=15.0, gt=0.0, le=1440.0)
    #: Share of pulls that serve a gold item (while the reviewer has one left to review).
    gold_rate: float = Field(default=0.1, ge=0.0, le=1.0)


class Settings(BaseSettings):
    """All of Greenroom's settings, read once per process by :func:`get_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="GREENROOM_",
        env_nested_delimiter="__",
        toml_file="greenroom.toml",
        extra="forbid",
    )

    data_dir: Path = Path("./data")
    #: Empty: SQLite at ``data_dir/greenroom.sqlite3``. PostgreSQL: ``postgresql+asyncpg://...``.
    database_url: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: More persona card folders; the bundled cards and ``data_dir/personas`` load first.
    persona_dirs: list[Path] = Field(default_factory=list)
    default_persona: str = "Marlowe"
    model: ModelSettings = Field(default_factory=ModelSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    chat: ChatLimits = Field(default_factory=ChatLimits)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    rubric: RubricSettings = Field(default_factory=RubricSettings)
    reviews: ReviewSettings = Field(default_factory=ReviewSettings)

    @model_validator(mode="after")
    def _check_database_url(self) -> Settings:
        url = self.database_url
        if url is not None and not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "database_url must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside :attr:`data_dir`."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'greenroom.sqlite3').resolve()}"

    @property
    def persona_search_dirs(self) -> list[Path]:
        """Where persona cards load from after the bundled ones: imported cards (if any were
        imported), then the configured folders (a missing one is reported)."""
        imported = self.data_dir / "personas"
        return [imported, *self.persona_dirs] if imported.is_dir() else list(self.persona_dirs)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("GREENROOM_CONFIG", "greenroom.toml"))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "settings"
    env_name = "GREENROOM_" + "__".join(str(p).upper() for p in first["loc"])
    message = first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return f"invalid setting {where} ({env_name}): {message}"


def load_settings(**overrides: object) -> Settings:
    """Read the settings; a wrong value raises :class:`ConfigError` with one line naming it."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise ConfigError(_one_line(error)) from None
    except ValueError as error:  # e.g. a broken greenroom.toml
        raise ConfigError(f"invalid configuration: {error}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own with :func:`load_settings`)."""
    return load_settings()
