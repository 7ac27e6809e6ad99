"""``LocalChatCompletionClient``: an AutoGen model client backed by a local transformers model.

Clients are cheap and meant to be made one per dialogue: each keeps its own usage counters and
its own ``records`` (one token-exact ``GenerationRecord`` per ``create``), while the weights and
the request batcher live in the process-wide engine of ``rlver_agents.models.engine``.

Two token modes. ``render`` renders the whole chat through the chat template on every call.
``append`` keeps one token stream per client: a call must extend the previous call's messages
by the reply this client produced and new non-assistant messages, and its prompt is the
previous prompt, the sampled ids as they are, and the template tokens of only the new messages
and the generation prompt. Earlier turns are never re-rendered, so the client's records chain
into one token-exact dialogue (``rlver_agents.samples.dialogue_sample``).

Each client names its dialogue to the engine, which keeps the KV cache of the client's last
call and prefills only the new tokens of its next prompt (in either mode: the longest common
prefix is reused). ``close()``, or the client being garbage-collected, drops that cache.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self

from autogen_core import CancellationToken, Component
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionTokenLogprob,
    CreateResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel, Field, model_validator

from rlver_agents.models.client_base import TextOnlyClient, split_reasoning
from rlver_agents.models.embedded import cached_embedded_path, embedded_model_path
from rlver_agents.models.engine import PREFIX_KEY, Engine, get_engine, loaded_engine
from rlver_agents.models.records import FinishReason, GenerationRecord, SamplingParams, TokenMode
from rlver_agents.thinking import split_think

EMBEDDED = "embedded"
_MARK = "RLVERAPPENDPOINT"
"""Stands in for the last reply when rendering what follows it in append mode."""
_SAMPLING = {
    "temperature",
    "top_p",
    "max_new_tokens",
    "seed",
    "greedy",
    "repetition_penalty",
    "stop",
}
_OVERRIDABLE = _SAMPLING | {"max_tokens"}
_DIALOGUES = itertools.count()
"""Prefix-reuse keys, one per client; never reused within a process (unlike ``id``)."""


def _forget_dialogue(engine: weakref.ref[Engine], key: str) -> None:
    alive = engine()
    if alive is not None:
        alive.forget_prefix(key)


class LocalChatCompletionClientConfig(BaseModel):
    """Serialisable settings of a local client."""

    model: str = Field(
        default=EMBEDDED,
        description="Checkpoint directory, 'embedded' for the bundled SmolLM2-135M-Instruct, or "
        "'live:<name>' for an engine registered in this process (a trainer's policy).",
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
    stop: list[str] = Field(
        default_factory=list,
        description="Strings that end a reply: it ends at the first sampled token holding one, "
        "which stays in the token record and out of the text.",
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
    token_mode: TokenMode = Field(
        default="render",
        description="'render' re-renders the chat each call (turn unit); 'append' keeps one "
        "token stream per client (dialogue unit).",
    )
    on_policy: bool = Field(
        default=False,
        description="A training client: refuse settings whose logprobs a trainer cannot "
        "recompute (repetition penalty other than 1, greedy).",
    )

    @model_validator(mode="after")
    def _trainable(self) -> LocalChatCompletionClientConfig:
        if self.on_policy:
            _check_on_policy(self.repetition_penalty, self.greedy or self.temperature == 0.0)
        return self


def _check_on_policy(repetition_penalty: float, greedy: bool) -> None:
    if repetition_penalty != 1.0:
        raise ValueError(
            f"LocalChatCompletionClient(on_policy=True): repetition_penalty={repetition_penalty}"
            " changes the sampling distribution in a way a trainer's forward pass cannot "
            "recompute; use 1.0"
        )
    if greedy:
        raise ValueError(
            "LocalChatCompletionClient(on_policy=True): greedy decoding (greedy=True or "
            "temperature=0) is not a policy a trainer can take ratios against; sample with a "
            "temperature > 0"
        )


class _Stream(BaseModel):
    """The append-mode token stream after the last successful call."""

    chat: list[dict[str, str]]
    """The messages of that call, as rendered."""
    ids: list[int]
    """Its prompt ids followed by its sampled ids."""
    reply: str
    """The visible reply that call returned."""
    thought: str | None
    completion_text: str
    finish_reason: FinishReason


class LocalChatCompletionClient(TextOnlyClient, Component[LocalChatCompletionClientConfig]):
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
        stop: Sequence[str] = (),
        max_context: int | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        chat_template_kwargs: Mapping[str, Any] | None = None,
        token_mode: TokenMode = "render",
        on_policy: bool = False,
        engine: Engine | None = None,
    ) -> None:
        """``engine``, if given, is used directly (``model`` then defaults to its name)."""
        if engine is not None:
            if model not in (EMBEDDED, engine.key.path):
                raise ValueError(
                    f"LocalChatCompletionClient: model={model!r} does not name the given engine "
                    f"({engine.key.path!r})"
                )
            model = engine.key.path
        self._config = LocalChatCompletionClientConfig(
            model=model,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
            greedy=greedy,
            repetition_penalty=repetition_penalty,
            stop=list(stop),
            max_context=max_context,
            dtype=dtype,
            device=device,
            chat_template_kwargs=dict(chat_template_kwargs or {}),
            token_mode=token_mode,
            on_policy=on_policy,
        )
        self._engine: Engine | None = engine
        self._stream: _Stream | None = None
        self._total_usage = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._actual_usage = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._closed = False
        self._calls = 0
        self._dialogue = f"local-client-{next(_DIALOGUES)}"
        self._forget: weakref.finalize | None = None
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

    def _render(self, chat: list[dict[str, str]]) -> str:
        text = self.engine.tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True, **self._config.chat_template_kwargs
        )
        if not isinstance(text, str):
            raise TypeError(f"The chat template of {self._config.model} did not render a string")
        return text

    def _prompt(
        self, messages: Sequence[LLMMessage]
    ) -> tuple[str, list[int], list[dict[str, str]]]:
        """The prompt text and ids for ``messages``, and the messages as rendered."""
        chat = self._to_chat(messages)
        if self._config.token_mode == "append" and self._stream is not None:
            text, ids = self._appended(chat, self._stream)
            return text, ids, chat
        text = self._render(chat)
        return text, list(self.engine.tokenizer(text, add_special_tokens=False)["input_ids"]), chat

    def _appended(self, chat: list[dict[str, str]], stream: _Stream) -> tuple[str, list[int]]:
        """Extend the stream by the template tokens of the messages after the last reply."""
        where = "LocalChatCompletionClient(token_mode='append')"
        n = len(stream.chat)
        if chat[:n] != stream.chat:
            index = next(
                (i for i, (a, b) in enumerate(zip(chat, stream.chat, strict=False)) if a != b),
                len(chat),
            )
            raise ValueError(
                f"{where}: message {index} is not the one the previous call was given "
                f"(expected {n} earlier messages unchanged, got {len(chat)} messages); append "
                "mode only extends its token stream, so history cannot be trimmed or edited"
            )
        if len(chat) == n or chat[n]["role"] != "assistant":
            raise ValueError(
                f"{where}: message {n} must be the assistant reply of the previous call, got "
                f"{chat[n]['role'] if len(chat) > n else 'nothing'}"
            )
        if not _is_reply_of(chat[n]["content"], stream):
            raise ValueError(
                f"{where}: message {n} is not the reply this client produced (its visible text, "
                f"with or without the thought): {chat[n]['content'][:80]!r} vs "
                f"{stream.reply[:80]!r}. An agent in think mode needs keep_thoughts=True to "
                "keep malformed output in its context"
            )
        new = chat[n + 1 :]
        if any(message["role"] == "assistant" for message in new):
            raise ValueError(
                f"{where}: only one assistant message may follow the previous call's messages; "
                "assistant turns this client did not sample cannot be appended"
            )
        text = self._render([*stream.chat, {"role": "assistant", "content": _MARK}, *new])
        if text.count(_MARK) != 1:
            raise ValueError(
                f"{where}: the chat template of {self._config.model} does not render the last "
                "reply verbatim, so the tokens that follow it cannot be found"
            )
        after = text.split(_MARK, 1)[1]
        tokenizer = self.engine.tokenizer
        if stream.finish_reason == "stop":
            # the sampled end-of-turn token is in the stream; the template's own copy is not added
            stopped = tokenizer.decode(stream.ids[-1:], skip_special_tokens=False)
            after = after.removeprefix(stopped)
        ids = stream.ids + list(tokenizer(after, add_special_tokens=False)["input_ids"])
        return tokenizer.decode(ids, skip_special_tokens=False), ids

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
        sampling = SamplingParams(**settings)
        if self._config.on_policy:
            _check_on_policy(sampling.repetition_penalty, sampling.is_greedy)
        return sampling

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
        prompt_text, prompt_ids, chat = self._prompt(messages)
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
        engine = self.engine
        if self._forget is None:
            self._forget = weakref.finalize(
                self, _forget_dialogue, weakref.ref(engine), self._dialogue
            )
        token = PREFIX_KEY.set(self._dialogue)
        try:  # the task copies the context now, dialogue key included
            task = asyncio.ensure_future(engine.generate(prompt_ids, sampling))
        finally:
            PREFIX_KEY.reset(token)
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
            raw_logprobs=output.raw_logprobs,
            prompt_text=prompt_text,
            completion_text=text,
            finish_reason=output.finish_reason,
            sampling=sampling,
            model=self.engine.key.path,
            policy_version=output.policy_version,
            token_mode=self._config.token_mode,
        )
        self.records.append(record)
        usage = RequestUsage(
            prompt_tokens=len(prompt_ids), completion_tokens=len(output.completion_ids)
        )
        self._total_usage = _add(self._total_usage, usage)
        self._actual_usage = _add(self._actual_usage, usage)

        thought, content = split_reasoning(text)
        if self._config.token_mode == "append":
            self._stream = _Stream(
                chat=chat,
                ids=prompt_ids + output.completion_ids,
                reply=content,
                thought=thought,
                completion_text=text,
                finish_reason=output.finish_reason,
            )
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

    async def close(self) -> None:
        """Detach from the engine, dropping this dialogue's cached prefix; the shared weights
        stay loaded for other clients."""
        self._closed = True
        if self._forget is not None:
            self._forget()  # runs once: garbage collection later does nothing
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

    def _to_config(self) -> LocalChatCompletionClientConfig:
        return self._config.model_copy(deep=True)

    @classmethod
    def _from_config(cls, config: LocalChatCompletionClientConfig) -> Self:
        return cls(**config.model_dump())


def _is_reply_of(content: str, stream: _Stream) -> bool:
    """Whether an assistant message is the stream's last reply, with or without its thought."""
    if content in (stream.reply, stream.completion_text):
        return True
    split = split_think(content, require_think=False)
    return stream.thought is not None and (split.thought, split.reply) == (
        stream.thought,
        stream.reply,
    )


def _add(a: RequestUsage, b: RequestUsage) -> RequestUsage:
    return RequestUsage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
    )
