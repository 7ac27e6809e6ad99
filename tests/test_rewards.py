"""Rewards on hand-computed episodes."""

from __future__ import annotations

import pytest

from rlver_agents.emotion import SAGE, EmotionRules, TerminationReason, apply_change, initial_state
from rlver_agents.episodes.episode import Episode, EpisodeConfig, Turn
from rlver_agents.evaluation.rewards import (
    DEFAULT_FORMAT_PENALTY,
    EpisodeNotScorable,
    episode_rewards,
    final_score_of,
    format_penalties,
    outcome_reward,
    process_rewards,
)


def build_episode(
    changes: list[int],
    *,
    violations: tuple[int, ...] = (),
    rules: EmotionRules = SAGE,
    persona_id: str = "p1",
) -> Episode:
    """An episode whose user turns follow the rules exactly, opening line first."""
    state = initial_state(rules)
    turns = [Turn(index=0, speaker="user", source="user", text="I had a rough day.")]
    for k, change in enumerate(changes):
        turns.append(
            Turn(
                index=len(turns),
                speaker="agent",
                source="agent",
                text=f"reply {k}",
                format_violation="missing_think" if k in violations else None,
            )
        )
        before = state.score
        state = apply_change(state, change, rules)
        turns.append(
            Turn(
                index=len(turns),
                speaker="user",
                source="user",
                text=f"answer {k}",
                raw_change=change,
                applied_change=state.steps[-1].applied_change,
                emotion_before=before,
                emotion_after=state.score,
                band=state.band,
            )
        )
    return Episode(
        persona_id=persona_id,
        config=EpisodeConfig(rules=rules.model_dump()),
        turns=turns,
        termination=state.reason or TerminationReason.MAX_TURNS,
        final_score=state.score,
        num_turns=len(changes),
    )


def errored_episode() -> Episode:
    return Episode(
        persona_id="p1",
        turns=[Turn(index=0, speaker="user", source="user", text="hello")],
        termination=TerminationReason.ERROR,
        error="appraiser timed out",
    )


def test_outcome_reward_from_scores() -> None:
    assert outcome_reward(37) == pytest.approx(0.37)
    assert outcome_reward(100) == 1.0
    assert outcome_reward(-5) == 0.0
    assert outcome_reward(0) == 0.0


def test_hand_computed_episode() -> None:
    # 40 -> +15 clipped to +10 -> 50 -> -3 -> 47 -> +5 -> 52
    episode = build_episode([15, -3, 5], violations=(1,))
    assert episode.final_score == 52
    assert outcome_reward(episode) == pytest.approx(0.52)
    assert process_rewards(episode) == pytest.approx([0.10, -0.03, 0.05])
    assert format_penalties(episode) == [0.0, -DEFAULT_FORMAT_PENALTY, 0.0]
    assert format_penalties(episode, penalty=0.5) == [0.0, -0.5, 0.0]
    rewards = episode_rewards(episode, format_penalty=0.25)
    assert rewards.outcome == pytest.approx(0.52)
    assert rewards.process == pytest.approx([0.10, -0.03, 0.05])
    assert rewards.total == pytest.approx(0.52 - 0.25)


def test_process_reward_uses_applied_not_raw_change_at_the_cap() -> None:
    # 40 + 10*5 = 90, then +10 -> 100 (S); a raw +30 would read 0.3 if the raw value leaked in.
    episode = build_episode([10, 10, 10, 10, 10, 30])
    assert process_rewards(episode) == pytest.approx([0.1] * 6)
    assert sum(process_rewards(episode)) == pytest.approx(
        outcome_reward(episode) - SAGE.initial_score / 100
    )


def test_errored_episode_is_refused_everywhere() -> None:
    episode = errored_episode()
    for function in (final_score_of, outcome_reward, process_rewards, format_penalties):
        with pytest.raises(EpisodeNotScorable, match="appraiser timed out"):
            function(episode)
    with pytest.raises(EpisodeNotScorable):
        episode_rewards(episode)


def test_scored_episode_without_final_score_is_refused() -> None:
    episode = build_episode([5]).model_copy(update={"final_score": None})
    with pytest.raises(EpisodeNotScorable, match="no final_score"):
        outcome_reward(episode)


def test_unappraised_agent_turn_is_refused() -> None:
    episode = build_episode([5, 5])
    truncated = episode.model_copy(update={"turns": episode.turns[:-1]})
    with pytest.raises(EpisodeNotScorable, match="never appraised"):
        process_rewards(truncated)
    doubled = episode.model_copy(
        update={"turns": [*episode.turns[:2], episode.turns[1], *episode.turns[2:]]}
    )
    with pytest.raises(EpisodeNotScorable, match="another agent turn"):
        process_rewards(doubled)


def test_user_reply_without_applied_change_is_refused() -> None:
    episode = build_episode([5])
    turns = list(episode.turns)
    turns[2] = turns[2].model_copy(update={"applied_change": None})
    with pytest.raises(EpisodeNotScorable, match="user turn 2"):
        process_rewards(episode.model_copy(update={"turns": turns}))


def test_format_penalty_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="penalty"):
        format_penalties(build_episode([5]), penalty=-0.1)
