"""A simulated user with no model, for tests: its lines and emotion changes come from functions.

One class for the episode tests and the training tests; it follows the SimulatedUser contract
(an ``AppraisalEvent`` before each reply, emotion metadata on every reply).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence

from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, TextMessage
from autogen_core import CancellationToken
from autogen_core.models import RequestUsage

from rlver_agents.appraisers.appraisal import Appraisal, AppraisalEvent
from rlver_agents.emotion import EmotionMetadata, EmotionRules, apply_change, initial_state


def changes_in_order(changes: Sequence[int]) -> Callable[[str], int]:
    """A ``change`` function that says ``changes`` one after the other, then 0."""
    pending = list(changes)
    return lambda _: pending.pop(0) if pending else 0


class ScriptedUser(BaseChatAgent):
    """``line(turn)`` is what it says; ``change(agent_text)`` is its appraisal's change.

    ``emit=False`` leaves the emotion metadata off its replies (a contract breach, for tests).
    """

    def __init__(
        self,
        rules: EmotionRules,
        *,
        line: Callable[[int], str] = lambda turn: f"user line {turn}",
        change: Callable[[str], int] = lambda _: 0,
        name: str = "user",
        emit: bool = True,
    ) -> None:
        super().__init__(name, "a scripted simulated user")
        self._rules = rules
        self._line = line
        self._change = change
        self._emit = emit
        self._state = initial_state(rules)

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(
        self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
    ) -> Response:
        result: Response | None = None
        async for item in self.on_messages_stream(messages, cancellation_token):
            if isinstance(item, Response):
                result = item
        assert result is not None
        return result

    async def on_messages_stream(
        self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
    ) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | Response, None]:
        if messages:
            change = self._change(messages[-1].to_text())
            self._state = apply_change(self._state, change, self._rules)
            yield AppraisalEvent(
                source=self.name,
                appraisal=Appraisal(change=change, reaction=f"felt {change:+d}"),
                step=self._state.steps[-1],
            )
        metadata = EmotionMetadata.from_state(self._state).to_metadata() if self._emit else {}
        yield Response(
            chat_message=TextMessage(
                source=self.name,
                content=self._line(self._state.turn),
                metadata=metadata,
                models_usage=RequestUsage(prompt_tokens=7, completion_tokens=3),
            )
        )

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        self._state = initial_state(self._rules)
