"""verl's custom reward function for dialogues played through an interaction.

verl's reward loop (which scores each sample as its agent loop finishes, whenever no reward
model shares the trainer's GPUs) hands a custom ``compute_score`` the row's ``extra_info`` with
the agent loop's ``extra_fields`` merged in; its default scores ignore ``turn_scores``, and it
puts the one number it gets on the response's last token. This function makes that number
RLVER's: the interaction's outcome (``interaction_score``, ``max(final, 0) / 100`` for
:class:`~training.verl.interaction.RlverInteraction`), plus ``process_weight`` times the sum
of the per-turn scores (each turn's emotion change / 100) when asked. Point verl at it:

    reward.custom_reward_function.path=training/verl/reward.py
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.process_weight=0.5   # optional

The ``rlver_dialogue`` loop scores its dialogues itself and does not need this.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class InteractionReward(BaseModel):
    """What a dialogue played through an interaction leaves in ``extra_info``."""

    model_config = ConfigDict(extra="ignore")

    interaction_score: float
    turn_scores: list[float] = []
    final_score: int | None = None


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    *,
    process_weight: float = 0.0,
    **_: Any,
) -> dict[str, float]:
    """The outcome plus ``process_weight`` x the summed turn scores, with the parts for logging.

    A row without ``interaction_score`` was not played through an interaction; it is an error
    rather than a reward of 0, which would teach the policy that a broken rollout is a bad one.
    """
    try:
        played = InteractionReward.model_validate(extra_info or {})
    except ValidationError as exc:
        raise ValueError(
            f"compute_score ({data_source}): extra_info lacks the interaction's score; was the "
            f"row played by the rlver_user_tool_agent loop? {exc}"
        ) from None
    process = sum(played.turn_scores)
    return {
        "score": played.interaction_score + process_weight * process,
        "outcome": played.interaction_score,
        "process": process,
        "turns": float(len(played.turn_scores)),
        "final_score": float("nan") if played.final_score is None else float(played.final_score),
    }
