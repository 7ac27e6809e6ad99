"""Scripted simulated users and a small config for training tests (no simulator model)."""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path

from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, TextMessage
from autogen_core import CancellationToken

from rlver_agents.appraisal import Appraisal, AppraisalEvent
from rlver_agents.emotion import EmotionMetadata, EmotionRules, apply_change, initial_state
from rlver_agents.episode import AgentFactory, EpisodeContext
from rlver_agents.personas import Persona
from training.config import TrainConfig

PERSONAS = [
    Persona(
        id=f"p{i}",
        profile="A nurse on night shifts.",
        scene="Her manager moved her shifts again without asking.",
        hidden_need="She wants to hear that her frustration is fair.",
        first_talk="I feel so tired and nobody at work listens to me.",
    )
    for i in range(2)
]


class ScriptedUser(BaseChatAgent):
    """Follows the SimulatedUser contract; its lines and changes come from two functions."""

    def __init__(
        self,
        rules: EmotionRules,
        line: Callable[[int], str],
        change: Callable[[str], int] = lambda _: 0,
    ) -> None:
        super().__init__("user", "a scripted simulated user")
        self._rules = rules
        self._line = line
        self._change = change
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
                appraisal=Appraisal(change=change, reaction="scripted"),
                step=self._state.steps[-1],
            )
        metadata = EmotionMetadata.from_state(self._state).to_metadata()
        yield Response(
            chat_message=TextMessage(
                source=self.name, content=self._line(self._state.turn), metadata=metadata
            )
        )

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        self._state = initial_state(self._rules)


def scripted_users(
    line: Callable[[EpisodeContext, int], str] = lambda _, turn: f"hello {turn}",
    change: Callable[[str], int] = lambda _: 0,
) -> AgentFactory:
    return lambda ctx: ScriptedUser(ctx.rules, lambda turn: line(ctx, turn), change)


def random_lines(words: Sequence[str]) -> Callable[[EpisodeContext, int], str]:
    """Lines of 1-3 words drawn with the episode's seed (independent of the agent)."""

    def line(ctx: EpisodeContext, turn: int) -> str:
        rng = random.Random(f"{ctx.seed}:{turn}")
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))

    return line


def tiny_config(checkpoint: Path, output_dir: Path, **grpo: object) -> TrainConfig:
    """GRPO on the tiny checkpoint: 2-turn dialogues, short turns, high learning rate."""
    return TrainConfig.model_validate(
        {
            "algorithm": "grpo",
            "output_dir": str(output_dir),
            "max_steps": 2,
            "save_steps": 1,
            "use_cpu": True,
            "policy": {"model": str(checkpoint)},
            "rollout": {
                "personas": "train",
                "rules": {"name": "test", "initial_score": 30, "max_turns": 2},
                "group_size": 4,
                "max_new_tokens": 6,
                "concurrency": 8,
            },
            "logging": {"tensorboard": False},
            "grpo": {
                "learning_rate": 1e-3,
                "per_device_train_batch_size": 8,
                "loss_type": "grpo",
                **grpo,
            },
        }
    )
