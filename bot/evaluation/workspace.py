"""A throwaway runtime for one stability run: the real engine and decision service on a fresh
SQLite database and a fresh embedded Chroma in a folder of the output directory.

Probes therefore see what users see: the stored history window, recalled memories, triggered
lore and the prompt layout. Nothing touches the configured database or memory store; only the
ONNX export of the embedding model is read from (or written to) the configured
``data_dir/models``, where every Greenroom command keeps it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections import defaultdict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.runtime import open_runtime
from personas import Persona

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from langchain_core.language_models import BaseChatModel

    from bot.decisions import ConversationRef, Delivery
    from bot.runtime import Runtime
    from bot.settings import Settings
    from memory import Embedder
    from personas import CharacterCard

__all__ = ["TRANSPORT", "WORK_MARKER", "TranscriptOutlet", "Workspace", "open_workspace"]

#: The transport name of the harness's conversations.
TRANSPORT = "stability"
#: The file that marks a folder as a workspace this module made (and may delete).
WORK_MARKER = ".greenroom-stability-work"


class TranscriptOutlet:
    """The harness's transport: keeps what each conversation's user received, to be taken."""

    def __init__(self) -> None:
        self._received: defaultdict[str, list[str]] = defaultdict(list)

    async def deliver(self, delivery: Delivery) -> str | None:
        self._received[delivery.conversation.scope].append(delivery.text)
        return None

    async def say(self, conversation: ConversationRef, persona: str, text: str) -> None:
        self._received[conversation.scope].append(text)

    def waiting(self, conversation: ConversationRef) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    def take(self, scope: str) -> str:
        """Everything ``scope``'s user received since the last call, one message a line."""
        return "\n".join(self._received.pop(scope, []))


@dataclass(frozen=True, slots=True)
class Workspace:
    """The runtime of one run, its outlet, and the persona as this run's card has it."""

    runtime: Runtime
    outlet: TranscriptOutlet
    persona: Persona


def _fresh(folder: Path) -> None:
    """Empty ``folder`` if an earlier run made it; refuse a folder this module did not make."""
    if folder.exists():
        if not (folder / WORK_MARKER).exists():
            raise FileExistsError(
                f"{folder} exists and is not a stability workspace; choose another --out"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / WORK_MARKER).write_text("made by greenroom eval stability; safe to delete\n")


@asynccontextmanager
async def open_workspace(
    settings: Settings,
    folder: Path,
    *,
    persona: str,
    model: BaseChatModel,
    embedder: Embedder | None,
    card: CharacterCard | None = None,
) -> AsyncIterator[Workspace]:
    """Open the engine on a fresh database and memory in ``folder`` (emptied first if an
    earlier run made it), with ``card`` in place of the persona's installed card if given.

    ``embedder=None`` runs without memory (no recall, and no contradiction or drift flags).
    Raises :class:`FileExistsError` when ``folder`` exists and was not made here, and
    :class:`personas.UnknownPersonaError` for an unknown persona.
    """
    _fresh(folder)
    run_settings = settings.model_copy(
        update={
            "data_dir": folder,
            "database_url": None,
            # The data dir moved: the cards imported into the configured one still load.
            "persona_dirs": list(settings.persona_search_dirs),
        }
    )
    memory = None
    if embedder is not None:
        from memory import MemoryService

        memory = MemoryService.open(path=folder / "chroma", embedder=embedder)
    try:
        async with open_runtime(
            run_settings, model=model, memory=memory if memory is not None else False
        ) as runtime:
            if card is not None:
                runtime.personas.add(Persona(card))
                await runtime.engine.sync_personas()
            outlet = TranscriptOutlet()
            runtime.decisions.add_outlet(TRANSPORT, outlet)
            yield Workspace(runtime, outlet, runtime.personas.get(persona))
    finally:
        if memory is not None:
            memory.close()
