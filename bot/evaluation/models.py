"""Which chat models a stability run uses: the configured ``[model]`` settings with overrides,
built by the provider factory (:func:`bot.llm.build_chat_model`).

An override is ``KEY=VALUE`` pairs separated by commas, the keys being the fields of
:class:`bot.settings.ModelSettings` (``provider=openai,name=qwen2.5,base_url=http://...``), so
any provider or option the factory learns works here without a change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from bot.settings import ConfigError, ModelSettings

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["USER_MAX_TOKENS", "model_settings", "user_model_settings"]

#: Tokens the simulated user writes at most (its lines are one or two sentences).
USER_MAX_TOKENS = 48
#: Longest override text accepted.
_MAX_SPEC_CHARS = 2000


def model_settings(base: ModelSettings, specs: Sequence[str], *, option: str) -> ModelSettings:
    """``base`` with the ``KEY=VALUE`` overrides of ``specs`` (each comma-separated) applied.

    Raises :class:`ConfigError` with one line naming ``option`` and what was wrong: a pair
    without ``=``, an unknown key, or a value the setting does not allow. An empty value sets
    an optional setting (``base_url=``, ``gguf_path=``) back to none.
    """
    overrides: dict[str, object] = {}
    known = sorted(ModelSettings.model_fields)
    for spec in specs:
        if len(spec) > _MAX_SPEC_CHARS:
            raise ConfigError(f"{option}: longer than {_MAX_SPEC_CHARS} characters")
        for pair in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, value = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise ConfigError(f"{option}: {pair!r} is not KEY=VALUE (keys: {', '.join(known)})")
            if key not in ModelSettings.model_fields:
                raise ConfigError(
                    f"{option}: unknown model setting {key!r}; known: {', '.join(known)}"
                )
            value = value.strip()
            optional = ModelSettings.model_fields[key].default is None
            overrides[key] = None if (optional and value == "") else value
    try:
        return ModelSettings.model_validate({**base.model_dump(), **overrides})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        field = f"model.{where}: " if where else ""
        raise ConfigError(f"{option}: {field}{message}") from None


def user_model_settings(persona_model: ModelSettings) -> ModelSettings:
    """The simulated user's model when none is given: the persona's, writing shorter lines
    (the bundled model's server is shared, so this costs no memory)."""
    return persona_model.model_copy(
        update={"max_tokens": min(persona_model.max_tokens, USER_MAX_TOKENS)}
    )
