"""TRL's reward functions over rollout columns: errored dialogues get ``None``, never 0."""

from __future__ import annotations

import pytest

from training.rewards import make_format_reward, outcome_reward, process_reward


def test_reward_functions_over_columns() -> None:
    columns = {
        "completions": ["a", "b", "c"],
        "prompts": ["x", "y", "z"],
        "final_score": [100, None, 30],
        "emotion": [[30, 100], [30], [30, 45, 30]],
        "format_violations": [0, 1, 2],
    }
    assert outcome_reward(**columns) == pytest.approx([1.0, None, 0.3])
    assert process_reward(**columns) == pytest.approx([0.7, None, 0.0])
    assert make_format_reward(0.1)(**columns) == pytest.approx([0.0, None, -0.2])


def test_reward_functions_refuse_bad_columns() -> None:
    with pytest.raises(ValueError, match="2 completions"):
        outcome_reward(["a", "b"], final_score=[50])
    with pytest.raises(ValueError, match="penalty"):
        make_format_reward(-1.0)
