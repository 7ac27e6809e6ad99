"""Reward functions for TRL's ``GRPOTrainer``: plain callables over the rollout's columns.

TRL calls each with ``completions`` plus every column the rollout function returned, one list
entry per row (see :class:`training.rollout.DialogueRow`). An errored dialogue has
``final_score=None``; every function returns ``None`` for it, which TRL reads as
"unscorable": the row gets a zero advantage and stays out of its group's baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rlver_agents.evaluation.rewards import outcome_reward as rlver_outcome

RewardFunc = Callable[..., list[float | None]]


def _check(name: str, column: Sequence[Any], completions: Sequence[Any]) -> None:
    if len(column) != len(completions):
        raise ValueError(f"{name} has {len(column)} entries for {len(completions)} completions")


def outcome_reward(
    completions: Sequence[Any], final_score: Sequence[int | None], **_: Any
) -> list[float | None]:
    """RLVER's reward: ``max(final, 0) / 100`` of the dialogue."""
    _check("final_score", final_score, completions)
    return [None if score is None else rlver_outcome(score) for score in final_score]


def process_reward(
    completions: Sequence[Any],
    final_score: Sequence[int | None],
    emotion: Sequence[Sequence[int]],
    **_: Any,
) -> list[float | None]:
    """The per-turn process rewards (each turn's emotion change / 100) summed over the dialogue.

    On one sequence per dialogue the sum is ``(final - start) / 100``: within a group, where
    every dialogue starts from the same score, it ranks dialogues as the outcome does, so its
    weight acts as extra weight on the outcome. Per-turn credit needs the turn unit (PPO).
    """
    _check("emotion", emotion, completions)
    return [
        None if score is None else (trajectory[-1] - trajectory[0]) / 100
        for score, trajectory in zip(final_score, emotion, strict=True)
    ]


def make_format_reward(penalty: float) -> RewardFunc:
    """``-penalty`` for every agent turn of the dialogue that broke the think format."""
    if penalty < 0:
        raise ValueError(f"penalty must be >= 0 (it is subtracted), got {penalty}")

    def format_reward(
        completions: Sequence[Any],
        final_score: Sequence[int | None],
        format_violations: Sequence[int],
        **_: Any,
    ) -> list[float | None]:
        _check("format_violations", format_violations, completions)
        return [
            None if score is None else -penalty * count
            for score, count in zip(final_score, format_violations, strict=True)
        ]

    return format_reward
