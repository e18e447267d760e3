"""The composition root: builds the engine and its dependencies from :class:`Settings`.

Transports (Discord, terminal) and CLI jobs call :func:`open_runtime`; nothing else reads
settings, so every other package receives what it needs through its constructor.
"""

from __future__ import annotations

import logging
import os
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from bot.decisions import DecisionService
from bot.engine import ConversationEngine, EngineLimits
from bot.llm import build_chat_model
from bot.settings import ConfigError
from feedback.corrections import CorrectionStore
from feedback.database import create_engine, migrate, session_factory
from feedback.reviews import ReviewPolicy
from feedback.rubric import RubricError
from feedback.store import ConversationStore
from personas import PersonaRegistry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from langchain_core.language_models import BaseChatModel
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from bot.engine import MemoryPort
    from bot.settings import Settings

__all__ = [
    "Runtime",
    "decision_service",
    "engine_limits",
    "open_memory",
    "open_runtime",
    "pseudonym_secret",
    "review_policy",
]

_PSEUDONYM_KEY_FILE = "pseudonym.key"

_log = logging.getLogger(__name__)


def pseudonym_secret(settings: Settings) -> bytes:
    """The pseudonym key: ``privacy.pseudonym_secret``, else ``data_dir/pseudonym.key``
    (created once with a random key, mode 0600)."""
    if settings.privacy.pseudonym_secret is not None:
        configured = settings.privacy.pseudonym_secret.get_secret_value().strip()
        if len(configured) < 16:
            raise ConfigError(
                "invalid setting privacy.pseudonym_secret "
                "(GREENROOM_PRIVACY__PSEUDONYM_SECRET): use at least 16 characters"
            )
        return configured.encode("utf-8")
    path = settings.data_dir / _PSEUDONYM_KEY_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="ascii").strip()
        if not key:
            raise ConfigError(f"{path} is empty; delete it to make a new pseudonym key") from None
        return key.encode("ascii")
    except OSError as error:
        raise ConfigError(f"cannot create the pseudonym key {path}: {error.strerror}") from None
    key = secrets.token_hex(32)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    return key.encode("ascii")


@dataclass
class Runtime:
    """Everything a transport needs, opened together and closed together."""

    settings: Settings
    db: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    store: ConversationStore
    personas: PersonaRegistry
    model: BaseChatModel
    memory: MemoryPort | None
    engine: ConversationEngine
    decisions: DecisionService


def engine_limits(settings: Settings) -> EngineLimits:
    """The engine's bounds from the settings."""
    return EngineLimits(
        max_message_chars=settings.chat.max_message_chars,
        history_turns=settings.chat.history_turns,
        context_depth=settings.chat.context_depth,
        context_tokens=settings.model.context_tokens,
        max_new_tokens=settings.model.max_tokens,
        timeout_s=settings.model.timeout_s,
        recall_k=settings.memory.recall_k,
        recall_token_budget=settings.memory.recall_token_budget,
    )


def review_policy(settings: Settings) -> ReviewPolicy:
    """The review queue's policy from the ``reviews`` settings."""
    reviews = settings.reviews
    return ReviewPolicy(
        share=reviews.share,
        per_item=reviews.per_item,
        acceptance=reviews.acceptance,
        lease=timedelta(minutes=reviews.lease_minutes),
        gold_rate=reviews.gold_rate,
    )


def decision_service(
    settings: Settings, engine: ConversationEngine, sessions: async_sessionmaker[AsyncSession]
) -> DecisionService:
    """The decision service every console shares, with the console's hold settings and the
    review queue."""
    console = settings.console
    decisions = DecisionService(
        engine=engine,
        corrections=CorrectionStore(sessions, claim_ttl=timedelta(minutes=console.claim_minutes)),
        hold_seconds=console.hold_seconds,
        on_timeout=console.on_timeout,
        help_resources=settings.safety.help_resources,
        rubric=settings.rubric.rubric(),
    )
    for name in engine.personas.names():
        try:
            decisions.rubric_for(name)
        except RubricError as error:  # its replies cannot be scored until the card is fixed
            _log.warning("%s", error)
    decisions.add_reviews(sessions, review_policy(settings))
    return decisions


def open_memory(settings: Settings) -> MemoryPort | None:
    """The vector memory the settings ask for, or ``None`` when it is switched off."""
    if not settings.memory.enabled:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from memory import MemoryService, SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(
        backend=settings.memory.embedding_backend, onnx_cache_dir=settings.data_dir / "models"
    )
    if settings.memory.chroma_host:
        return MemoryService.open(
            host=settings.memory.chroma_host, port=settings.memory.chroma_port, embedder=embedder
        )
    return MemoryService.open(
        path=settings.data_dir / "chroma",
        embedder=embedder,
        index_cache_size=settings.memory.index_cache_scopes,
    )


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    model: BaseChatModel | None = None,
    memory: MemoryPort | bool | None = True,
) -> AsyncIterator[Runtime]:
    """Open the database (migrated), personas, model and memory; close them on exit.

    ``model`` and ``memory`` may be passed in (tests, benchmarks); ``memory=False`` turns it off.
    """
    personas = PersonaRegistry.load(settings.persona_search_dirs)
    for error in personas.errors:
        _log.warning("%s", error)
    chat_model = model if model is not None else build_chat_model(settings.model)
    db = create_engine(settings.resolved_database_url)
    memory_port: MemoryPort | None = None
    decisions: DecisionService | None = None
    try:
        await migrate(db)
        sessions = session_factory(db)
        store = ConversationStore(sessions)
        if memory is True:
            memory_port = open_memory(settings)
        elif memory is not False:
            memory_port = memory
        engine = ConversationEngine(
            personas=personas,
            store=store,
            model=chat_model,
            memory=memory_port,
            limits=engine_limits(settings),
        )
        await engine.sync_personas()
        decisions = decision_service(settings, engine, sessions)
        yield Runtime(
            settings=settings,
            db=db,
            sessions=sessions,
            store=store,
            personas=personas,
            model=chat_model,
            memory=memory_port,
            engine=engine,
            decisions=decisions,
        )
    finally:
        if decisions is not None:
            await decisions.close()
        if memory_port is not None and memory is True:
            memory_port.close()
        await db.dispose()
