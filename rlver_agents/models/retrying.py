"""Per-call timeouts and retries for model clients: a failed call is sent again on its own.

Restarting a dialogue for one lost request throws away every turn played so far. A call that
timed out, lost its connection, got an HTTP 5xx or a malformed body is instead sent again after
a short backoff; only a call that keeps failing reaches the episode runner, which then starts
the dialogue over (:class:`~rlver_agents.episodes.RetryPolicy`). The error it raises names the
role (agent, simulator, judge) and the server, so an errored episode says which one failed.
Other errors (a 4xx, a refused structured output) pass through unchanged: sending the same
request again would fail the same way. Torch-free.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal, Self

from autogen_core import CancellationToken, Component, ComponentModel
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel, ConfigDict, Field

from rlver_agents.errors import describe_error, is_transient
from rlver_agents.models.client_base import DelegatingChatCompletionClient
from rlver_agents.models.openai_compat import DEFAULT_CALL_TIMEOUT_S

_log = logging.getLogger(__name__)

Role = Literal["agent", "simulator", "judge"]


class CallPolicy(BaseModel):
    """How long one model call may take and how often a failed one is sent again.

    Retry ``k`` (from 1) waits ``min(max_backoff_s, backoff_s * 2**(k-1))`` shortened by up to
    ``jitter`` of itself at random, so calls that failed together do not return together.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(DEFAULT_CALL_TIMEOUT_S, gt=0)
    retries: int = Field(3, ge=0, description="Further tries after the first.")
    backoff_s: float = Field(1.0, ge=0)
    max_backoff_s: float = Field(20.0, ge=0)
    jitter: float = Field(0.5, ge=0, le=1)

    def delay_s(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...)."""
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** max(retry - 1, 0))
        return delay * (1 - self.jitter * rng.random())


class ModelCallError(RuntimeError):
    """A model call that failed on every try; the cause is the last try's error."""

    def __init__(self, role: str, server: str, tries: int, last: BaseException) -> None:
        super().__init__(
            f"{role} call to {server} failed {tries} time(s); last: {describe_error(last)}"
        )
        self.role = role
        self.server = server
        self.tries = tries


class RetryingClientConfig(BaseModel):
    client: ComponentModel
    role: Role
    server: str
    policy: CallPolicy = Field(default_factory=CallPolicy)


class RetryingChatCompletionClient(DelegatingChatCompletionClient, Component[RetryingClientConfig]):
    """Wraps any chat client: each call gets a deadline and transient failures are retried.

    ``server`` is how errors name the server (the builders pass ``model 'x' at base_url``).
    ``retried`` counts the retries sent, for logs and tests. The wrapped client may be shared
    with other wrappers (one per role); closing the wrapper closes it.
    """

    component_type = "model"
    component_config_schema = RetryingClientConfig
    component_provider_override = "rlver_agents.models.retrying.RetryingChatCompletionClient"

    def __init__(
        self,
        client: ChatCompletionClient,
        *,
        role: Role,
        server: str,
        policy: CallPolicy | None = None,
    ) -> None:
        super().__init__(client)
        self._role: Role = role
        self._server = server
        self._policy = policy or CallPolicy()
        self._rng = random.Random()
        self.retried = 0

    @property
    def role(self) -> Role:
        return self._role

    @property
    def policy(self) -> CallPolicy:
        return self._policy

    async def _before_retry(
        self, error: Exception, tries: int, cancellation_token: CancellationToken | None
    ) -> None:
        """Wait out the backoff after failed try ``tries``, or raise when retrying is pointless."""
        if isinstance(error, TimeoutError) and not str(error):
            error = TimeoutError(f"no answer within {self._policy.timeout_s:g}s")
        if not is_transient(error) or (cancellation_token and cancellation_token.is_cancelled()):
            raise error
        if tries > self._policy.retries:
            raise ModelCallError(self._role, self._server, tries, error) from error
        delay = self._policy.delay_s(tries, self._rng)
        _log.info(
            "%s call to %s failed (%s); retry %d of %d in %.1fs",
            self._role,
            self._server,
            describe_error(error),
            tries,
            self._policy.retries,
            delay,
        )
        self.retried += 1
        await asyncio.sleep(delay)

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] | None = None,
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        tries = 0
        while True:
            tries += 1
            try:
                async with asyncio.timeout(self._policy.timeout_s):
                    return await self._inner.create(
                        messages,
                        tools=tools,
                        tool_choice=tool_choice,
                        json_output=json_output,
                        extra_create_args=extra_create_args or {},
                        cancellation_token=cancellation_token,
                    )
            except Exception as exc:
                await self._before_retry(exc, tries, cancellation_token)

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] | None = None,
        cancellation_token: CancellationToken | None = None,
        include_usage: bool | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        """Streams; a failure before the first chunk is retried, one after it is raised.

        The deadline covers the wait for the first chunk; once text flows, the SDK's own
        request timeout bounds each read.
        """
        options: dict[str, Any] = {"include_usage": include_usage} if include_usage else {}
        for tries in itertools.count(1):
            stream = self._inner.create_stream(
                messages,
                tools=tools,
                tool_choice=tool_choice,
                json_output=json_output,
                extra_create_args=extra_create_args or {},
                cancellation_token=cancellation_token,
                **options,
            )
            try:
                async with asyncio.timeout(self._policy.timeout_s):
                    first = await anext(stream)
            except StopAsyncIteration:
                return
            except Exception as exc:
                await stream.aclose()
                await self._before_retry(exc, tries, cancellation_token)
                continue
            yield first
            async for item in stream:
                yield item
            return

    def _to_config(self) -> RetryingClientConfig:
        return RetryingClientConfig(
            client=self._inner.dump_component(),
            role=self._role,
            server=self._server,
            policy=self._policy,
        )

    @classmethod
    def _from_config(cls, config: RetryingClientConfig) -> Self:
        return cls(
            ChatCompletionClient.load_component(config.client),
            role=config.role,
            server=config.server,
            policy=config.policy,
        )
