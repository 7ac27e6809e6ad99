"""Model backends: the embedded SmolLM2, local transformers models and OpenAI-compatible servers.

Importing this package stays torch-free. The torch-backed names (``LocalChatCompletionClient``,
``embedded_model_path``, ``get_engine``, ``register_engine``) load their modules on first access.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from rlver_agents.models.openai_compat import (
    KNOWN_FAMILIES,
    ReasoningOpenAIChatCompletionClient,
    model_info_for,
    openai_compatible_client,
)
from rlver_agents.models.records import GenerationRecord, GenerationRecorder, SamplingParams
from rlver_agents.models.spec import ModelSpec, ModelSpecError, build_chat_client

if TYPE_CHECKING:
    from rlver_agents.models.embedded import EmbeddedModelError, embedded_model_path
    from rlver_agents.models.engine import Engine, get_engine, register_engine, unregister_engine
    from rlver_agents.models.local import (
        LocalChatCompletionClient,
        LocalChatCompletionClientConfig,
    )

_LAZY = {
    "EmbeddedModelError": "rlver_agents.models.embedded",
    "embedded_model_path": "rlver_agents.models.embedded",
    "Engine": "rlver_agents.models.engine",
    "get_engine": "rlver_agents.models.engine",
    "register_engine": "rlver_agents.models.engine",
    "unregister_engine": "rlver_agents.models.engine",
    "LocalChatCompletionClient": "rlver_agents.models.local",
    "LocalChatCompletionClientConfig": "rlver_agents.models.local",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rlver_agents.models' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "KNOWN_FAMILIES",
    "EmbeddedModelError",
    "Engine",
    "GenerationRecord",
    "GenerationRecorder",
    "LocalChatCompletionClient",
    "LocalChatCompletionClientConfig",
    "ModelSpec",
    "ModelSpecError",
    "ReasoningOpenAIChatCompletionClient",
    "SamplingParams",
    "build_chat_client",
    "embedded_model_path",
    "get_engine",
    "model_info_for",
    "openai_compatible_client",
    "register_engine",
    "unregister_engine",
]
