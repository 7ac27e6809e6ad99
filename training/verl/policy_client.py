"""The policy's side of a verl dialogue: an AutoGen model client over verl's server manager.

The `EmpatheticAgent` calls ``create`` with its whole chat every turn, as it would with any
client. The client never re-renders that chat. It keeps one append-only token stream per
dialogue, built with verl's continuous-token helpers: the first call renders the system prompt
and the user's opening (the prompt); each later call appends only the new user message's
template tokens (mask 0) and then the tokens the policy samples (mask 1, with their
logprobs). So the tokens trained on are exactly the tokens the policy was conditioned on when
it sampled, turn after turn.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from autogen_core import CancellationToken
from autogen_core.models import (
    AssistantMessage,
    CreateResult,
    LLMMessage,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from rlver_agents.models.client_base import TextOnlyClient, split_reasoning

if TYPE_CHECKING:
    from verl.experimental.agent_loop.agent_loop import AgentLoopBase

Chat = list[dict[str, str]]


class PolicyStreamError(RuntimeError):
    """The policy's token stream cannot go on; the message says why."""


class TokenBudgetExceeded(PolicyStreamError):
    """The dialogue's response tokens reached verl's ``rollout.response_length``."""


@dataclass
class Generation:
    """One policy turn as sampled."""

    token_ids: list[int]
    text: str
    finish_reason: Literal["stop", "length"]


@dataclass
class TokenStream:
    """One dialogue's prompt and response tokens, with the response mask and logprobs.

    ``loop`` supplies verl's continuous-token helpers, the server manager, the tokenizer and
    the rollout lengths. ``messages`` is the chat as the stream holds it: assistant turns are
    the decoded samples, which the agent's own context may later shorten (think mode).
    """

    loop: AgentLoopBase
    request_id: str
    sampling_params: Mapping[str, Any]
    max_tokens_per_turn: int
    messages: Chat = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    prompt_length: int = 0
    response_mask: list[int] = field(default_factory=list)
    response_logprobs: list[float] | None = None
    generations: list[Generation] = field(default_factory=list)
    generate_seconds: float = 0.0
    num_preempted: int = -1

    @property
    def started(self) -> bool:
        return bool(self.token_ids)

    @property
    def wants_logprobs(self) -> bool:
        return bool(self.sampling_params.get("logprobs", True))

    @property
    def prompt_ids(self) -> list[int]:
        return self.token_ids[: self.prompt_length]

    @property
    def response_ids(self) -> list[int]:
        return self.token_ids[self.prompt_length :]

    async def extend(self, chat: Chat) -> None:
        """Bring the stream up to ``chat``: render it the first time, then append new turns."""
        if not self.started:
            await self._start(chat)
            return
        new = self._new_messages(chat)
        merged, mask, logprobs = await self.loop.ct_merge_context_msg(
            self.messages,
            self.messages + new,
            self.token_ids,
            self.response_mask,
            self.response_logprobs,
        )
        self.token_ids = list(merged.token_ids)
        self.response_mask = mask
        self.response_logprobs = logprobs
        self.messages = self.messages + new
        self._check_budget()

    async def _start(self, chat: Chat) -> None:
        ids = await self.loop.ct_build_initial_tokens(chat)
        limit = self.loop.rollout_config.prompt_length
        if len(ids) >= limit:
            full = self.loop.continuous_token_builder.build_initial_tokens(chat)
            if len(full) > limit:
                raise PolicyStreamError(
                    f"the dialogue's prompt (system message and opening) has {len(full)} "
                    f"tokens, more than actor_rollout_ref.rollout.prompt_length={limit}; raise "
                    "data.max_prompt_length"
                )
        self.token_ids = list(ids)
        self.prompt_length = len(ids)
        self.response_logprobs = [] if self.wants_logprobs else None
        self.messages = list(chat)

    def _new_messages(self, chat: Chat) -> Chat:
        """The messages ``chat`` adds after the stream's; anything else cannot be appended."""
        held = self.messages
        if len(chat) <= len(held):
            raise PolicyStreamError(
                f"the agent's context has {len(chat)} messages, the token stream {len(held)}: "
                "a context that drops or merges messages cannot be trained append-only"
            )
        for index, (seen, now) in enumerate(zip(held, chat, strict=False)):
            if seen["role"] != now["role"] or (
                seen["role"] != "assistant" and seen["content"] != now["content"]
            ):
                raise PolicyStreamError(
                    f"message {index} of the agent's context changed after it was tokenized "
                    f"({seen['role']} -> {now['role']}); the token stream is append-only"
                )
        new = chat[len(held) :]
        if any(message["role"] == "assistant" for message in new):
            raise PolicyStreamError(
                "the agent's context gained an assistant message the policy did not sample"
            )
        return new

    def _check_budget(self) -> int:
        budget = self.loop.rollout_config.response_length - len(self.response_mask)
        if budget <= 0:
            raise TokenBudgetExceeded(
                f"the dialogue used all {self.loop.rollout_config.response_length} response "
                "tokens (actor_rollout_ref.rollout.response_length) before the user ended it"
            )
        return budget

    async def generate(self, eos_ids: frozenset[int]) -> Generation:
        """Sample one policy turn from the server manager and append it with mask 1."""
        budget = self._check_budget()
        params = dict(self.sampling_params)
        params["max_tokens"] = min(self.max_tokens_per_turn, budget)
        clock = time.monotonic()
        output = await self.loop.server_manager.generate(
            request_id=self.request_id, prompt_ids=list(self.token_ids), sampling_params=params
        )
        self.generate_seconds += time.monotonic() - clock
        if output.stop_reason == "aborted" or not output.token_ids:
            raise PolicyStreamError(
                f"the rollout server returned no tokens (stop reason {output.stop_reason!r})"
            )
        if output.num_preempted is not None:
            self.num_preempted = max(self.num_preempted, 0) + output.num_preempted
        sampled = list(output.token_ids)
        logprobs = list(output.log_probs) if output.log_probs is not None else None
        if self.response_logprobs is not None and logprobs is None:
            raise PolicyStreamError(
                "the rollout server returned no logprobs although they were asked for "
                "(actor_rollout_ref.rollout.calculate_log_probs)"
            )
        merged, mask, stream_logprobs = await self.loop.ct_merge_assistant_token(
            self.token_ids,
            sampled,
            self.response_mask,
            self.response_logprobs,
            assistant_logprobs=logprobs if self.response_logprobs is not None else None,
        )
        self.token_ids = list(merged.token_ids)
        self.response_mask = mask
        self.response_logprobs = stream_logprobs
        stopped = sampled[-1] in eos_ids
        text_ids = sampled[:-1] if stopped else sampled
        text = self.loop.tokenizer.decode(text_ids, skip_special_tokens=False)
        self.messages = [*self.messages, {"role": "assistant", "content": text}]
        generation = Generation(
            token_ids=sampled, text=text, finish_reason="stop" if stopped else "length"
        )
        self.generations.append(generation)
        return generation


def eos_token_ids(tokenizer: Any) -> frozenset[int]:
    """The ids that end a chat turn: the tokenizer's eos and, when present, ``<|im_end|>``."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return frozenset(ids)


def to_chat(messages: Sequence[LLMMessage]) -> Chat:
    """AutoGen messages as chat-template dicts; text only, as the dialogue is."""
    chat: Chat = []
    for message in messages:
        if isinstance(message, SystemMessage):
            chat.append({"role": "system", "content": message.content})
        elif isinstance(message, UserMessage) and isinstance(message.content, str):
            chat.append({"role": "user", "content": message.content})
        elif isinstance(message, AssistantMessage) and isinstance(message.content, str):
            chat.append({"role": "assistant", "content": message.content})
        else:
            raise ValueError(
                f"PolicyServerClient: only text system, user and assistant messages can be "
                f"tokenized, got {type(message).__name__}"
            )
    return chat


class PolicyServerClient(TextOnlyClient):
    """An AutoGen client whose completions are sampled by verl's rollout servers.

    One client serves one dialogue (it owns the dialogue's :class:`TokenStream`). It is not a
    serialisable component: it exists only inside a verl rollout.
    """

    def __init__(self, stream: TokenStream) -> None:
        self._stream = stream
        self._eos = eos_token_ids(stream.loop.tokenizer)
        self._usage = RequestUsage(prompt_tokens=0, completion_tokens=0)

    @property
    def stream(self) -> TokenStream:
        return self._stream

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
        if tools or json_output or extra_create_args:
            raise ValueError(
                "PolicyServerClient: tools, JSON output and extra create arguments are not "
                "supported; sampling comes from verl's rollout config"
            )
        await self._stream.extend(to_chat(messages))
        prompt_tokens = len(self._stream.token_ids)
        generation = await self._stream.generate(self._eos)
        usage = RequestUsage(
            prompt_tokens=prompt_tokens, completion_tokens=len(generation.token_ids)
        )
        self._usage = RequestUsage(
            prompt_tokens=self._usage.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self._usage.completion_tokens + usage.completion_tokens,
        )
        thought, content = split_reasoning(generation.text)
        return CreateResult(
            finish_reason=generation.finish_reason,
            content=content,
            usage=usage,
            cached=False,
            thought=thought,
        )

    async def close(self) -> None:
        """Nothing to release: the server manager belongs to the verl worker."""

    def actual_usage(self) -> RequestUsage:
        return self._usage

    def total_usage(self) -> RequestUsage:
        return self._usage

    def count_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        """Tokens the stream holds now (what the next generation is conditioned on, so far)."""
        return len(self._stream.token_ids)

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        return self._stream.loop.rollout_config.response_length - len(self._stream.response_mask)
