"""All personas Greenroom knows: the bundled cards plus cards from configured folders."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from .card_io import CardError, avatar_png, is_png, parse_card, read_card_bytes
from .persona import Persona
from .schema import CharacterCard

__all__ = ["CARD_SUFFIXES", "PersonaRegistry", "UnknownPersonaError", "bundled_cards_dir"]

_log = logging.getLogger(__name__)

#: File suffixes read as cards when a folder is loaded (other files are ignored).
CARD_SUFFIXES = (".json", ".png")


def bundled_cards_dir() -> Path:
    """The folder of cards shipped with Greenroom."""
    return Path(__file__).resolve().parent / "cards"


class UnknownPersonaError(KeyError):
    """No persona has that name. ``str()`` is one line listing the known names."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = list(known)

    def __str__(self) -> str:
        known = ", ".join(self.known) if self.known else "(none)"
        return f"unknown persona {self.name!r}; known: {known}"


class PersonaRegistry:
    """Personas by name (case-insensitive). Later cards replace earlier ones of the same name.

    Cards that fail to load do not stop the others; their errors are kept in ``errors``.
    """

    def __init__(self) -> None:
        self._personas: dict[str, Persona] = {}
        self.errors: list[CardError] = []

    @classmethod
    def load(cls, dirs: Sequence[Path] = ()) -> PersonaRegistry:
        """The bundled cards, then each folder of ``dirs`` in order (files sorted by name)."""
        registry = cls()
        for folder in (bundled_cards_dir(), *map(Path, dirs)):
            registry.load_dir(folder)
        return registry

    def load_dir(self, folder: Path) -> None:
        """Add every ``.json``/``.png`` card in ``folder``; failures go to ``errors``."""
        folder = Path(folder)
        if not folder.is_dir():
            self._record(CardError("persona folder does not exist", path=folder))
            return
        files = sorted(
            (p for p in folder.iterdir() if p.suffix.lower() in CARD_SUFFIXES and p.is_file()),
            key=lambda p: p.name,
        )
        for path in files:
            try:
                self.add(_persona_of(read_card_bytes(path), path))
            except CardError as exc:
                self._record(exc)

    def _record(self, error: CardError) -> None:
        _log.warning("skipping card: %s", error)
        self.errors.append(error)

    def add(self, persona: Persona | CharacterCard) -> Persona:
        """Add (or replace, by case-insensitive name) a persona; returns it."""
        if isinstance(persona, CharacterCard):
            persona = Persona(persona)
        key = persona.name.casefold()
        previous = self._personas.get(key)
        if previous is not None and previous.version_hash != persona.version_hash:
            _log.info("persona %r replaced by a later card", persona.name)
        self._personas[key] = persona
        return persona

    def get(self, name: str) -> Persona:
        """The persona called ``name`` (any case); raises :class:`UnknownPersonaError`."""
        try:
            return self._personas[name.strip().casefold()]
        except KeyError:
            raise UnknownPersonaError(name, self.names()) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().casefold() in self._personas

    def names(self) -> list[str]:
        """Display names, sorted case-insensitively."""
        return [persona.name for persona in self]

    def __iter__(self) -> Iterator[Persona]:
        return iter(sorted(self._personas.values(), key=lambda p: p.name.casefold()))

    def __len__(self) -> int:
        return len(self._personas)

    def import_card(self, path: Path, dest_dir: Path) -> Persona:
        """Validate a card file, copy it unchanged into ``dest_dir`` and add it.

        The copy is named after the persona (``Captain Vex`` -> ``captain-vex.png``) and
        replaces an earlier import of the same name and format. Raises :class:`CardError`
        (and copies nothing) when the card is invalid.
        """
        path = Path(path)
        # Read once, so the bytes copied are the bytes validated.
        content = read_card_bytes(path)
        persona = _persona_of(content, path)
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        suffix = ".png" if is_png(content) else ".json"
        target = dest_dir / f"{_slug(persona.name)}{suffix}"
        if not (target.exists() and target.samefile(path)):
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=dest_dir)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(content)
                os.replace(tmp_name, target)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
        _log.info("imported persona %r into %s", persona.name, target)
        return self.add(persona)


def _persona_of(content: bytes, path: Path) -> Persona:
    """The persona of a card file's bytes; a PNG card's picture becomes its avatar."""
    if path.suffix.lower() == ".png" and not is_png(content):
        raise CardError("not a PNG image (bad signature)", path=path)
    card = parse_card(content, source=str(path))
    return Persona(card, avatar=avatar_png(content) if is_png(content) else None)


def _slug(name: str) -> str:
    slug = re.sub(r"[^\w]+", "-", name.casefold(), flags=re.UNICODE).strip("-_")
    return slug[:64] or "persona"
