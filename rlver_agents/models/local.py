"""``LocalChatCompletionClient``: an AutoGen model client backed by a local transformers model.

Clients are cheap and meant to be made one per dialogue: each keeps its own usage counters and
its own ``records`` (one token-exact ``GenerationRecord`` per ``create``), while the weights and
the request batcher live in the process-wide engine of ``rlver_agents.models.engine``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal, Self

from autogen_core import CancellationToken, Component
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    ChatCompletionTokenLogprob,
    CreateResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelCapabilities,  # pyright: ignore[reportDeprecated]
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel, Field

from rlver_agents.models.embedded import cached_embedded_path, embedded_model_path
from rlver_agents.models.engine import Engine, get_engine, loaded_engine
from rlver_agents.models.records import GenerationRecord, SamplingParams
from rlver_agents.thinking import CLOSE_TAG, OPEN_TAG, split_think

EMBEDDED = "embedded"
_SAMPLING = {"temperature", "top_p", "max_new_tokens", "seed", "greedy", "repetition_penalty"}
_OVERRIDABLE = _SAMPLING | {"max_tokens"}


class LocalChatCompletionClientConfig(BaseModel):
    """Serialisable settings of a local client."""

    model: str = Field(
        default=EMBEDDED,
        description="Checkpoint directory, or 'embedded' for the bundled SmolLM2-135M-Instruct.",
    )
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=256, ge=1)
    seed: int | None = Field(
        default=None,
        description="Seeds the client's call sequence: call k samples with seed + k, so a "
        "dialogue replays exactly while a retried or repeated prompt still gets fresh samples.",
    )
    greedy: bool = False
    repetition_penalty: float = Field(
        default=1.0, gt=0.0, description="Penalty on tokens already in the completion; 1 is off."
    )
    max_context: int | None = Field(
        default=None, ge=2, description="Context limit; defaults to the model's own."
    )
    dtype: str = "float32"
    device: str = "cpu"
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra variables for the chat template, e.g. {'enable_thinking': True}.",
    )


class LocalChatCompletionClient(ChatCompletionClient, Component[LocalChatCompletionClientConfig]):
    """Chat completions from a local checkpoint, with exact token ids and logprobs per call."""

    component_type = "model"
    component_config_schema = LocalChatCompletionClientConfig
    component_provider_override = "rlver_agents.models.local.LocalChatCompletionClient"

    def __init__(
        self,
        model: str = EMBEDDED,
        *,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        seed: int | None = None,
        greedy: bool = False,
        repetition_penalty: float = 1.0,
        max_context: int | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self._config = LocalChatCompletionClientConfig(
            model=model,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
            greedy=greedy,
            repetition_penalty=repetition_penalty,
            max_context=max_context,
            dtype=dtype,
            device=device,
            chat_template_kwargs=dict(chat_template_kwargs or {}),
        )
        self._engine: Engine | None = None
        self._total_usage = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._actual_usage = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._closed = False
        self._calls = 0
        self.records: list[GenerationRecord] = []
        """One record per ``create`` call, in call order."""

    @property
    def config(self) -> LocalChatCompletionClientConfig:
        return self._config

    @property
    def engine(self) -> Engine:
        """The shared engine of this client's model (loaded on first use)."""
        if self._engine is None:
            path = embedded_model_path() if self._config.model == EMBEDDED else self._config.model
            self._engine = get_engine(path, dtype=self._config.dtype, device=self._config.device)
        return self._engine

    def _engine_in_memory(self) -> Engine | None:
        """The shared engine if this process has loaded it already, found without blocking."""
        path = cached_embedded_path() if self._config.model == EMBEDDED else self._config.model
        if path is None:
            return None
        return loaded_engine(path, dtype=self._config.dtype, device=self._config.device)

    @property
    def max_context(self) -> int:
        limit = self.engine.max_context
        return min(limit, self._config.max_context) if self._config.max_context else limit

    def _to_chat(self, messages: Sequence[LLMMessage]) -> list[dict[str, str]]:
        chat: list[dict[str, str]] = []
        for message in messages:
            if isinstance(message, SystemMessage):
                chat.append({"role": "system", "content": message.content})
            elif isinstance(message, UserMessage):
                if not isinstance(message.content, str):
                    raise ValueError(
                        "LocalChatCompletionClient: user messages must be text (no images)"
                    )
                chat.append({"role": "user", "content": message.content})
            elif isinstance(message, AssistantMessage):
                if not isinstance(message.content, str):
                    raise ValueError("LocalChatCompletionClient: function calls are not supported")
                chat.append({"role": "assistant", "content": message.content})
            elif isinstance(message, FunctionExecutionResultMessage):
                raise ValueError("LocalChatCompletionClient: function results are not supported")
            else:
                raise ValueError(f"LocalChatCompletionClient: unknown message type {type(message)}")
        return chat

    def _prompt(self, messages: Sequence[LLMMessage]) -> tuple[str, list[int]]:
        tokenizer = self.engine.tokenizer
        text = tokenizer.apply_chat_template(
            self._to_chat(messages),
            tokenize=False,
            add_generation_prompt=True,
            **self._config.chat_template_kwargs,
        )
        if not isinstance(text, str):
            raise TypeError(f"The chat template of {self._config.model} did not render a string")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return text, list(ids)

    def _sampling(self, extra: Mapping[str, Any]) -> SamplingParams:
        unknown = set(extra) - _OVERRIDABLE
        if unknown:
            raise ValueError(
                f"LocalChatCompletionClient: unsupported extra_create_args {sorted(unknown)}; "
                f"supported: {sorted(_OVERRIDABLE)}"
            )
        settings = self._config.model_dump(include=_SAMPLING)
        if settings["seed"] is not None:
            settings["seed"] += self._calls
        self._calls += 1
        settings.update(extra)
        if "max_tokens" in settings:
            settings["max_new_tokens"] = settings.pop("max_tokens")
        return SamplingParams(**settings)

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        if self._closed:
            raise RuntimeError("LocalChatCompletionClient: create() after close()")
        if tools:
            raise ValueError("LocalChatCompletionClient: tools are not supported")
        if json_output:
            raise ValueError("LocalChatCompletionClient: JSON output is not supported")
        sampling = self._sampling(extra_create_args)
        if self._engine is None:
            self._engine = self._engine_in_memory()
        if self._engine is None:  # loading reads (or first converts) weights: keep it off the loop
            await asyncio.to_thread(lambda: self.engine)
        prompt_text, prompt_ids = self._prompt(messages)
        if len(prompt_ids) >= self.max_context:
            raise ValueError(
                f"LocalChatCompletionClient: the prompt has {len(prompt_ids)} tokens, the "
                f"context limit is {self.max_context}"
            )
        sampling = sampling.model_copy(
            update={
                "max_new_tokens": min(sampling.max_new_tokens, self.max_context - len(prompt_ids))
            }
        )
        task = asyncio.ensure_future(self.engine.generate(prompt_ids, sampling))
        if cancellation_token is not None:
            cancellation_token.link_future(task)
        output = await task

        tokenizer = self.engine.tokenizer
        text_ids = output.completion_ids
        if output.finish_reason == "stop":
            text_ids = text_ids[:-1]
        text = tokenizer.decode(text_ids, skip_special_tokens=False)
        record = GenerationRecord(
            prompt_token_ids=prompt_ids,
            completion_token_ids=output.completion_ids,
            completion_logprobs=output.logprobs,
            prompt_text=prompt_text,
            completion_text=text,
            finish_reason=output.finish_reason,
            sampling=sampling,
            model=self.engine.key.path,
        )
        self.records.append(record)
        usage = RequestUsage(
            prompt_tokens=len(prompt_ids), completion_tokens=len(output.completion_ids)
        )
        self._total_usage = _add(self._total_usage, usage)
        self._actual_usage = _add(self._actual_usage, usage)

        # A well-formed think block is returned split, as reasoning servers do; anything
        # malformed is passed through whole so the agent's own split flags the violation.
        thought: str | None = None
        content = text
        if OPEN_TAG in text or CLOSE_TAG in text:
            split = split_think(text, require_think=False)
            if split.well_formed:
                thought, content = split.thought, split.reply
        logprobs = [
            ChatCompletionTokenLogprob(
                token=piece, logprob=logprob, bytes=list(piece.encode("utf-8"))
            )
            for piece, logprob in zip(
                (tokenizer.decode([i]) for i in output.completion_ids), output.logprobs, strict=True
            )
        ]
        return CreateResult(
            finish_reason=output.finish_reason,
            content=content,
            usage=usage,
            cached=False,
            logprobs=logprobs,
            thought=thought,
        )

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
        """Yield the whole result once generation ends (the batcher decodes whole requests)."""
        yield await self.create(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            json_output=json_output,
            extra_create_args=extra_create_args,
            cancellation_token=cancellation_token,
        )

    async def close(self) -> None:
        """Detach from the engine; the shared weights stay loaded for other clients."""
        self._closed = True
        self._engine = None

    def actual_usage(self) -> RequestUsage:
        return self._actual_usage

    def total_usage(self) -> RequestUsage:
        return self._total_usage

    def count_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        """Prompt tokens for ``messages``, including the assistant header the call would add."""
        if tools:
            raise ValueError("LocalChatCompletionClient: tools are not supported")
        return len(self._prompt(messages)[1])

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        return self.max_context - self.count_tokens(messages, tools=tools)

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

    def _to_config(self) -> LocalChatCompletionClientConfig:
        return self._config.model_copy(deep=True)

    @classmethod
    def _from_config(cls, config: LocalChatCompletionClientConfig) -> Self:
        return cls(**config.model_dump())


def _add(a: RequestUsage, b: RequestUsage) -> RequestUsage:
    return RequestUsage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
    )
