"""Greenroom's language-model layer: the configured chat model and one guarded generation.

``build_chat_model(settings)`` gives a langchain chat model (bundled local SmolLM2, any
OpenAI-compatible server, or an instant fake); ``generate(...)`` streams one reply with a
deadline and typed failures.
"""

from __future__ import annotations

from .errors import GenerationError, GenerationFailure, ModelUnavailableError
from .factory import GenerationResult, build_chat_model, describe_model, generate
from .fake import FakeChatModel
from .local import LocalLlamaChatModel

__all__ = [
    "FakeChatModel",
    "GenerationError",
    "GenerationFailure",
    "GenerationResult",
    "LocalLlamaChatModel",
    "ModelUnavailableError",
    "build_chat_model",
    "describe_model",
    "generate",
]
