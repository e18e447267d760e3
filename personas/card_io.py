"""Read and write character cards as JSON and as PNG images.

PNG cards carry the card as base64 of its UTF-8 JSON in a ``tEXt`` chunk: ``chara`` for V2,
``ccv3`` for V3. When both are present ``ccv3`` wins, and writing a V3 card also writes a
V2-compatible ``chara`` chunk, as the V3 spec recommends, so older tools can still read it.

Every failure raises :class:`CardError`, whose one-line message names the file and the field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, PngImagePlugin, UnidentifiedImageError
from pydantic import ValidationError

from .schema import SPEC_V2, SPEC_V3, CharacterCard

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

__all__ = [
    "MAX_CARD_BYTES",
    "CardError",
    "avatar_png",
    "canonical_json",
    "card_to_dict",
    "dump_card_json",
    "is_png",
    "load_card",
    "parse_card",
    "read_card_bytes",
    "write_card_json",
    "write_card_png",
]

_log = logging.getLogger(__name__)

#: Larger card files are refused before they are read (big lorebooks reach a few MB).
MAX_CARD_BYTES = 32 * 1024 * 1024

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_V2_CHUNK = "chara"
_V3_CHUNK = "ccv3"
_AVATAR_SIZE = (400, 600)


class CardError(Exception):
    """A card could not be read or written.

    ``path`` is the file (``None`` for cards parsed from memory) and ``field`` the dotted
    field path inside the card (``data.character_book.entries[2].keys``), the PNG chunk name,
    or ``None`` when the whole file is unreadable. ``str()`` is one line naming both.
    """

    def __init__(self, problem: str, *, path: Path | None = None, field: str | None = None):
        self.path = path
        self.field = field
        self.problem = problem
        where = str(path) if path is not None else "<memory>"
        message = f"{where}: {field}: {problem}" if field else f"{where}: {problem}"
        super().__init__(" ".join(message.split()))


def parse_card(raw: dict[str, Any] | bytes | str, *, source: str = "<memory>") -> CharacterCard:
    """Validate a card given as a JSON object, JSON text, or PNG/JSON bytes.

    ``source`` names the origin in error messages (a file path, or ``<memory>``).
    """
    path = None if source == "<memory>" else Path(source)
    if isinstance(raw, bytes):
        if is_png(raw):
            return _validate(_read_png_payload(raw, path), path)
        raw = _decode_text(raw, path)
    if isinstance(raw, str):
        return _validate(_load_json_text(raw, path, field=None), path)
    if isinstance(raw, dict):
        try:
            # A JSON round trip copies the input and proves it serialises.
            plain = json.loads(json.dumps(raw, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise CardError(f"card is not plain JSON data ({exc})", path=path) from None
        return _validate(plain, path)
    raise CardError(f"expected a dict, JSON text or PNG bytes, got {type(raw).__name__}", path=path)


def load_card(path: Path) -> CharacterCard:
    """Read a ``.json`` or ``.png`` card file (the format is detected from the content)."""
    path = Path(path)
    content = read_card_bytes(path)
    if path.suffix.lower() == ".png" and not is_png(content):
        raise CardError("not a PNG image (bad signature)", path=path)
    return parse_card(content, source=str(path))


def is_png(content: bytes) -> bool:
    """Whether ``content`` starts with the PNG signature."""
    return content.startswith(_PNG_SIGNATURE)


def read_card_bytes(path: Path) -> bytes:
    """The bytes of a card file, refusing files over :data:`MAX_CARD_BYTES`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CARD_BYTES:
            raise CardError(f"file is {size} bytes, the limit is {MAX_CARD_BYTES}", path=path)
        with path.open("rb") as handle:
            content = handle.read(MAX_CARD_BYTES + 1)
    except OSError as exc:
        raise CardError(f"cannot read file ({exc.strerror or exc})", path=path) from None
    if len(content) > MAX_CARD_BYTES:
        raise CardError(f"file is larger than {MAX_CARD_BYTES} bytes", path=path)
    return content


def card_to_dict(card: CharacterCard) -> dict[str, Any]:
    """The card as a JSON object: exactly the keys and values it was read from."""
    return card.model_dump(mode="json", exclude_unset=True)


def canonical_json(card: CharacterCard) -> str:
    """Compact JSON with sorted keys: equal cards give equal text (used for version hashes)."""
    return json.dumps(card_to_dict(card), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dump_card_json(card: CharacterCard) -> str:
    """The card as indented JSON text (UTF-8 safe, non-ASCII kept as is)."""
    return json.dumps(card_to_dict(card), indent=2, ensure_ascii=False) + "\n"


def write_card_json(card: CharacterCard, path: Path) -> None:
    """Write the card as a JSON file, atomically (a reader never sees half a file)."""
    _write_atomic(Path(path), dump_card_json(card).encode("utf-8"))


def write_card_png(card: CharacterCard, path: Path, *, image: Image.Image | None = None) -> None:
    """Write the card into a PNG (``ccv3`` plus a V2 ``chara`` chunk for V3 cards).

    ``image`` is the avatar; without one a plain avatar is drawn from the card's name. Text
    chunks already in ``image`` are not copied, so a stale card cannot ride along.
    """
    payload = card_to_dict(card)
    info = PngImagePlugin.PngInfo()
    if card.spec == SPEC_V3:
        v2_payload = dict(payload, spec=SPEC_V2, spec_version="2.0")
        info.add_text(_V2_CHUNK, _encode_chunk(v2_payload))
        info.add_text(_V3_CHUNK, _encode_chunk(payload))
    else:
        info.add_text(_V2_CHUNK, _encode_chunk(payload))
    avatar = image if image is not None else _plain_avatar(card.data.name)
    if avatar.mode not in ("RGB", "RGBA", "L", "LA", "P", "1", "I", "I;16"):
        avatar = avatar.convert("RGBA")
    buffer = io.BytesIO()
    avatar.save(buffer, format="PNG", pnginfo=info)
    _write_atomic(Path(path), buffer.getvalue())


#: Discord shows avatars at most 128 px; 256 keeps them sharp on dense screens.
AVATAR_PIXELS = 256


def avatar_png(content: bytes) -> bytes | None:
    """A PNG card's picture as a square avatar (centre crop, :data:`AVATAR_PIXELS` a side)
    without its text chunks, so the card's JSON never rides along; ``None`` if it cannot be
    decoded."""
    try:
        with Image.open(io.BytesIO(content)) as image:
            image.load()
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            square = image.convert("RGBA").crop((left, top, left + side, top + side))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    square.thumbnail((AVATAR_PIXELS, AVATAR_PIXELS))
    buffer = io.BytesIO()
    square.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _encode_chunk(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _plain_avatar(name: str) -> Image.Image:
    """A portrait-sized avatar: a colour picked from the name, a disc, and the initial."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    background = (40 + digest[0] % 120, 40 + digest[1] % 120, 40 + digest[2] % 120)
    image = Image.new("RGB", _AVATAR_SIZE, background)
    draw = ImageDraw.Draw(image)
    width, height = _AVATAR_SIZE
    radius = width // 3
    centre = (width // 2, height // 2)
    disc = tuple(min(255, channel + 70) for channel in background)
    draw.ellipse(
        (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius),
        fill=disc,
    )
    initial = name.strip()[:1].upper() or "?"
    draw.text(centre, initial, fill=(255, 255, 255), anchor="mm", font_size=radius)
    return image


def _write_atomic(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _decode_text(content: bytes, path: Path | None) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CardError(f"not UTF-8 text (byte {exc.start})", path=path) from None


def _load_json_text(text: str, path: Path | None, *, field: str | None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        raise CardError(problem, path=path, field=field) from None
    except RecursionError:
        raise CardError("invalid JSON: nested too deeply", path=path, field=field) from None


def _read_png_payload(content: bytes, path: Path | None) -> Any:
    """The decoded JSON of the ``ccv3`` chunk, else the ``chara`` chunk."""
    try:
        with Image.open(io.BytesIO(content)) as image:
            if image.format != "PNG":
                raise CardError(f"not a PNG image ({image.format})", path=path)
            # ``.text`` also reads chunks after the image data (it decodes the image).
            chunks = {key.lower(): value for key, value in image.text.items()}
    except CardError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CardError(f"not a readable PNG image ({exc})", path=path) from None
    except Image.DecompressionBombError as exc:
        raise CardError(f"image too large ({exc})", path=path) from None
    for chunk_name in (_V3_CHUNK, _V2_CHUNK):
        if chunk_name in chunks:
            return _decode_chunk(str(chunks[chunk_name]), chunk_name, path)
    raise CardError("PNG has no 'ccv3' or 'chara' text chunk", path=path, field=_V2_CHUNK)


def _decode_chunk(value: str, chunk_name: str, path: Path | None) -> Any:
    compact = "".join(value.split())
    compact += "=" * (-len(compact) % 4)
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise CardError("chunk is not valid base64", path=path, field=chunk_name) from None
    try:
        text = decoded.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problem = f"chunk is not UTF-8 JSON (byte {exc.start})"
        raise CardError(problem, path=path, field=chunk_name) from None
    return _load_json_text(text, path, field=chunk_name)


def _validate(payload: Any, path: Path | None) -> CharacterCard:
    if not isinstance(payload, dict):
        raise CardError(f"card must be a JSON object, got {_json_type(payload)}", path=path)
    spec = payload.get("spec")
    if spec not in (SPEC_V2, SPEC_V3):
        if "spec" not in payload:
            problem = "missing (V1 cards without 'spec' are not supported)"
        else:
            problem = f"expected {SPEC_V2!r} or {SPEC_V3!r}, got {spec!r}"
        raise CardError(problem, path=path, field="spec")
    try:
        return CharacterCard.model_validate(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        fields = list(dict.fromkeys(_field_path(error, payload) for error in errors))
        problem = _describe(errors[0])
        if len(fields) > 1:
            problem += (
                f" (also wrong: {', '.join(fields[1:4])}{', ...' if len(fields) > 4 else ''})"
            )
        raise CardError(problem, path=path, field=fields[0]) from None


def _describe(error: ErrorDetails) -> str:
    if error["type"] == "missing":
        return "required field is missing"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    if error["type"].endswith("_type") or error["type"] == "literal_error":
        message += f", got {_json_type(error['input'])}"
    return message


def _field_path(error: ErrorDetails, payload: Any) -> str:
    """A readable path for a validation error, walking the real input to drop pydantic's
    internal labels (union member names such as ``int``/``float``)."""
    parts: list[str] = []
    node = payload
    for step in error["loc"]:
        if isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            parts.append(f"[{step}]")
            node = node[step]
        elif isinstance(node, dict) and isinstance(step, str) and step in node:
            parts.append(f".{step}" if parts else step)
            node = node[step]
        elif isinstance(node, dict) and isinstance(step, str) and error["type"] == "missing":
            parts.append(f".{step}" if parts else step)
            break
    return "".join(parts) or "<card>"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
