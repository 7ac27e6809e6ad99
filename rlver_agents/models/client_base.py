"""Shared pieces of this package's chat clients, so each one holds only what is its own.

:class:`DelegatingChatCompletionClient` is the base of wrappers that change how calls are made
(retries, gating) and hand everything else to the wrapped client. :class:`TextOnlyClient` gives
clients of plain text models that produce whole generations their ``create_stream`` and model
info.
:func:`split_reasoning` returns a completion's thought and reply the way reasoning servers do.
Torch-free.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal

from autogen_core import CancellationToken
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelCapabilities,  # pyright: ignore[reportDeprecated]
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from rlver_agents.thinking import CLOSE_TAG, OPEN_TAG, split_think


def split_reasoning(text: str) -> tuple[str | None, str]:
    """``(thought, reply)`` of a completion, as a reasoning server returns it.

    A well-formed think block comes back split off; anything malformed stays whole in the
    reply with no thought, so the agent's own parser sees it and flags the format.
    """
    if OPEN_TAG in text or CLOSE_TAG in text:
        split = split_think(text, require_think=False)
        if split.well_formed:
            return split.thought, split.reply
    return None, text


class TextOnlyClient(ChatCompletionClient):
    """A client of a plain text model that generates whole results: no tools, vision or JSON
    mode, and ``create_stream`` yields the result once."""

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
        include_usage: bool | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        yield await self.create(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            json_output=json_output,
            extra_create_args=extra_create_args,
            cancellation_token=cancellation_token,
        )

    @property
    def capabilities(self) -> ModelCapabilities:  # pyright: ignore[reportDeprecated]
        return self.model_info  # type: ignore[return-value]

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            vision=False,
            function_calling=False,
            json_output=False,
            family="unknown",
            structured_output=False,
            multiple_system_messages=False,
        )


class DelegatingChatCompletionClient(ChatCompletionClient):
    """A wrapper that hands usage, token counting, model info and closing to ``inner``.

    Subclasses implement ``create`` and ``create_stream``; closing the wrapper closes the
    wrapped client.
    """

    def __init__(self, inner: ChatCompletionClient) -> None:
        self._inner = inner

    @property
    def inner(self) -> ChatCompletionClient:
        return self._inner

    async def close(self) -> None:
        await self._inner.close()

    def actual_usage(self) -> RequestUsage:
        return self._inner.actual_usage()

    def total_usage(self) -> RequestUsage:
        return self._inner.total_usage()

    def count_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()
    ) -> int:
        return self._inner.count_tokens(messages, tools=tools)

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()
    ) -> int:
        return self._inner.remaining_tokens(messages, tools=tools)

    @property
    def capabilities(self) -> ModelCapabilities:  # pyright: ignore[reportDeprecated]
        return self._inner.capabilities

    @property
    def model_info(self) -> ModelInfo:
        return self._inner.model_info
