"""Scripted simulated users and a small config for training tests (no simulator model)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

from scripted_user import ScriptedUser

from rlver_agents.episodes.episode import AgentFactory, EpisodeContext
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


def scripted_users(
    line: Callable[[EpisodeContext, int], str] = lambda _, turn: f"hello {turn}",
    change: Callable[[str], int] = lambda _: 0,
) -> AgentFactory:
    return lambda ctx: ScriptedUser(ctx.rules, line=lambda turn: line(ctx, turn), change=change)


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
