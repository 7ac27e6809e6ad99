"""`EmpatheticAgent`: an AutoGen `AssistantAgent` that can think privately before it speaks.

In think mode the model writes ``<think>…</think>`` and then its reply. Only the reply is sent
to the team; the thought is kept as a `ThoughtEvent`, so it lands in run records but never in
another agent's view. By default the agent's own model context remembers what it said, not what
it thought (as RLVER's turn unit trains); with ``keep_thoughts`` it remembers the model's whole
output, thoughts included, as the dialogue training unit sees it. Malformed output falls back
to a short visible reply and is flagged in the reply's ``metadata["format_violation"]`` for the
format reward.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, ClassVar, Self

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.agents._assistant_agent import AssistantAgentConfig
from autogen_agentchat.base import Handoff, Response
from autogen_agentchat.messages import (
    BaseAgentEvent,
    BaseChatMessage,
    ModelClientStreamingChunkEvent,
    TextMessage,
    ThoughtEvent,
)
from autogen_core import CancellationToken, FunctionCall
from autogen_core.memory import Memory
from autogen_core.model_context import ChatCompletionContext, ChatCompletionContextState
from autogen_core.models import AssistantMessage, ChatCompletionClient, FunctionExecutionResult
from autogen_core.tools import BaseTool, Workbench

from rlver_agents.prompts import Language, render
from rlver_agents.thinking import (
    CLOSE_TAG,
    FALLBACK_REPLY,
    FALLBACK_REPLY_ZH,
    OPEN_TAG,
    ThinkSplit,
    split_think,
)

FORMAT_VIOLATION_KEY = "format_violation"
"""Metadata key of the reply `TextMessage`: "" when well formed, else a `FormatViolation` value."""

DEFAULT_DESCRIPTION = "A warm, caring friend who listens and helps the other person feel better."

_FALLBACKS: dict[Language, str] = {"en": FALLBACK_REPLY, "zh": FALLBACK_REPLY_ZH}


def default_system_message(language: Language = "en", *, think: bool = False) -> str:
    """The packaged system prompt for a language, with or without the think-then-say format."""
    return render("agent_system_think" if think else "agent_system", language)


def fallback_reply(language: Language = "en") -> str:
    """What the agent says when its output cannot be used as a reply."""
    return _FALLBACKS[language]


# AutoGen 0.7 exports no public name for AssistantAgent's config; EmpatheticAgentConfig must
# extend it so that every AssistantAgent field (tools, workbench, model context, ...) keeps
# serialising exactly as AssistantAgent's own. tests/test_agent.py round-trips it.
class EmpatheticAgentConfig(AssistantAgentConfig):
    """Declarative configuration: the `AssistantAgent` fields plus ``think``,
    ``keep_thoughts``, ``language`` and ``say_fallback``.

    A missing ``system_message`` means the packaged prompt for ``language`` and ``think``.
    """

    description: str = DEFAULT_DESCRIPTION
    reflect_on_tool_use: bool = False
    tool_call_summary_format: str = "{result}"
    think: bool = False
    keep_thoughts: bool = False
    language: Language = "en"
    say_fallback: bool = True


class _ReplyOnlyStream:
    """Lets streamed text through only after the thought has closed, so chunks never show it."""

    def __init__(self) -> None:
        self._text = ""
        self._sent = 0

    def feed(self, chunk: str) -> str:
        self._text += chunk
        _, closed, after = self._text.partition(CLOSE_TAG)
        if not closed:
            return ""
        new = after[self._sent :]
        self._sent = len(after)
        return new


class EmpatheticAgent(AssistantAgent):
    """A drop-in `AssistantAgent` with a friend's system prompt and optional think-then-say.

    Args:
        name: The agent's name in a team.
        model_client: Any AutoGen `ChatCompletionClient`.
        think: Ask for ``<think>…</think>`` before the reply and keep the thought private.
        keep_thoughts: In think mode, keep the model's whole output (thought and reply, or the
            malformed text) in the agent's own model context instead of the visible reply, so a
            deployed agent sees its past turns as the dialogue training unit did. A thought the
            client returned separately is put back as ``<think>\n…\n</think>\n\n`` before
            the reply (the layout chat templates use), so whitespace may differ from what was
            sampled.
        language: ``"en"`` or ``"zh"``; selects the packaged prompt and the fallback reply.
        say_fallback: In think mode, say the packaged fallback line when the output holds no
            reply (only a thought, or an unclosed one), as an app should. ``False`` sends the
            empty reply as it is, flagged in ``format_violation``, so that a simulated user
            scores the silence the model produced: a benchmark or a trainer must not let a
            stock line earn what the model did not (the builders' setting).
        system_message: Overrides the packaged prompt; ``None`` uses it.

    The remaining keyword arguments mean what they mean for `AssistantAgent`. Structured
    output is not offered: a think-then-say reply is text.
    """

    component_config_schema = EmpatheticAgentConfig
    component_provider_override = "rlver_agents.agents.EmpatheticAgent"
    component_version: ClassVar[int] = 1

    def __init__(
        self,
        name: str,
        model_client: ChatCompletionClient,
        *,
        think: bool = False,
        keep_thoughts: bool = False,
        language: Language = "en",
        say_fallback: bool = True,
        system_message: str | None = None,
        description: str = DEFAULT_DESCRIPTION,
        tools: list[BaseTool[Any, Any] | Callable[..., Any] | Callable[..., Awaitable[Any]]]
        | None = None,
        workbench: Workbench | Sequence[Workbench] | None = None,
        handoffs: list[Handoff | str] | None = None,
        model_context: ChatCompletionContext | None = None,
        model_client_stream: bool = False,
        reflect_on_tool_use: bool | None = None,
        max_tool_iterations: int = 1,
        tool_call_summary_format: str = "{result}",
        tool_call_summary_formatter: Callable[[FunctionCall, FunctionExecutionResult], str]
        | None = None,
        memory: Sequence[Memory] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        if language not in _FALLBACKS:
            raise ValueError(
                f"EmpatheticAgent {name!r}: language must be one of {sorted(_FALLBACKS)}, "
                f"got {language!r}"
            )
        if keep_thoughts and not think:
            raise ValueError(f"EmpatheticAgent {name!r}: keep_thoughts needs think=True")
        super().__init__(
            name,
            model_client,
            tools=tools,
            workbench=workbench,
            handoffs=handoffs,
            model_context=model_context,
            description=description,
            system_message=system_message
            if system_message is not None
            else default_system_message(language, think=think),
            model_client_stream=model_client_stream,
            reflect_on_tool_use=reflect_on_tool_use,
            max_tool_iterations=max_tool_iterations,
            tool_call_summary_format=tool_call_summary_format,
            tool_call_summary_formatter=tool_call_summary_formatter,
            memory=list(memory) if memory is not None else None,
            metadata=metadata,
        )
        self._think = think
        self._keep_thoughts = keep_thoughts
        self._language: Language = language
        self._say_fallback = say_fallback

    @property
    def model_client(self) -> ChatCompletionClient:
        """The client this agent calls (read-only), e.g. to read its token records."""
        return self._model_client

    @property
    def think(self) -> bool:
        return self._think

    @property
    def keep_thoughts(self) -> bool:
        return self._keep_thoughts

    @property
    def language(self) -> Language:
        return self._language

    @property
    def say_fallback(self) -> bool:
        return self._say_fallback

    async def on_messages_stream(
        self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
    ) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | Response, None]:
        """Run the `AssistantAgent` turn, then make the final text reply visible-only."""
        stream = _ReplyOnlyStream()
        client_thought: str | None = None
        async for item in super().on_messages_stream(messages, cancellation_token):
            if not self._think:
                yield _flagged(item, None) if isinstance(item, Response) else item
            elif isinstance(item, ModelClientStreamingChunkEvent):
                visible = stream.feed(item.content)
                if visible:
                    yield item.model_copy(update={"content": visible})
            elif isinstance(item, ThoughtEvent):
                # The client already separated the thought (e.g. a vLLM reasoning parser).
                client_thought = item.content
                yield item
            elif isinstance(item, Response) and isinstance(item.chat_message, TextMessage):
                async for out in self._finish_turn(
                    item, item.chat_message, client_thought=client_thought
                ):
                    yield out
            else:
                yield item

    async def _finish_turn(
        self, response: Response, message: TextMessage, *, client_thought: str | None
    ) -> AsyncGenerator[ThoughtEvent | Response, None]:
        """Split the final reply, emit its thought, and keep in the context the visible reply
        (or, with ``keep_thoughts``, the model's whole output)."""
        split = split_think(
            message.content,
            require_think=client_thought is None,
            fallback=fallback_reply(self._language) if self._say_fallback else "",
        )
        inner = list(response.inner_messages or [])
        if split.thought:
            thought = ThoughtEvent(content=split.thought, source=self.name)
            inner.append(thought)
            yield thought
        if not self._keep_thoughts:
            await self._remember(message.content, split.reply)
        elif client_thought is not None:
            # the client split the output; put the thought back the way chat templates write it
            await self._remember(
                message.content, f"{OPEN_TAG}\n{client_thought}\n{CLOSE_TAG}\n\n{message.content}"
            )
        yield _flagged(Response(chat_message=message, inner_messages=inner), split)

    async def _remember(self, raw: str, kept: str) -> None:
        """Replace the raw output the `AssistantAgent` stored with what the context keeps."""
        state = ChatCompletionContextState.model_validate(await self._model_context.save_state())
        for index in range(len(state.messages) - 1, -1, -1):
            stored = state.messages[index]
            if isinstance(stored, AssistantMessage) and stored.content == raw:
                state.messages[index] = AssistantMessage(content=kept, source=stored.source)
                await self._model_context.load_state(state.model_dump())
                return

    def _to_config(self) -> EmpatheticAgentConfig:
        base = super()._to_config()
        return EmpatheticAgentConfig.model_validate(
            {
                **base.model_dump(),
                "think": self._think,
                "keep_thoughts": self._keep_thoughts,
                "language": self._language,
                "say_fallback": self._say_fallback,
            }
        )

    @classmethod
    def _from_config(cls, config: AssistantAgentConfig) -> Self:
        if not isinstance(config, EmpatheticAgentConfig):
            config = EmpatheticAgentConfig.model_validate(config.model_dump())
        if config.structured_message_factory is not None:
            raise ValueError(
                f"EmpatheticAgent {config.name!r}: config field 'structured_message_factory' is "
                "not supported; the agent replies with text"
            )
        return cls(
            name=config.name,
            model_client=ChatCompletionClient.load_component(config.model_client),
            think=config.think,
            keep_thoughts=config.keep_thoughts,
            language=config.language,
            say_fallback=config.say_fallback,
            system_message=config.system_message,
            description=config.description,
            tools=[BaseTool.load_component(tool) for tool in config.tools]
            if config.tools
            else None,
            workbench=[Workbench.load_component(wb) for wb in config.workbench]
            if config.workbench
            else None,
            handoffs=config.handoffs,
            model_context=ChatCompletionContext.load_component(config.model_context)
            if config.model_context
            else None,
            model_client_stream=config.model_client_stream,
            reflect_on_tool_use=config.reflect_on_tool_use,
            max_tool_iterations=config.max_tool_iterations,
            tool_call_summary_format=config.tool_call_summary_format,
            memory=[Memory.load_component(memory) for memory in config.memory]
            if config.memory
            else None,
            metadata=config.metadata,
        )


def _flagged(response: Response, split: ThinkSplit | None) -> Response:
    """The response with its text reply (and the flag) taken from ``split``."""
    message = response.chat_message
    if not isinstance(message, TextMessage):
        return response
    update: dict[str, Any] = {
        "metadata": {
            **message.metadata,
            FORMAT_VIOLATION_KEY: split.violation.value if split and split.violation else "",
        }
    }
    if split is not None:
        update["content"] = split.reply
    return Response(
        chat_message=message.model_copy(update=update), inner_messages=response.inner_messages
    )
