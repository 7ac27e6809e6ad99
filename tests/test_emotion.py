"""Emotion rules: exact arithmetic and hypothesis properties."""

from __future__ import annotations

from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlver_agents.emotion import (
    PRESETS,
    RLVER_TRAIN,
    RLVER_TRAIN_CLIPPED,
    SAGE,
    Band,
    EmotionMetadata,
    EmotionRules,
    PresetName,
    TerminationReason,
    apply_change,
    band_of,
    clip_change,
    initial_state,
    replay,
)
from rlver_agents.evaluation.rewards import outcome_reward

rules_strategy = st.sampled_from(list(PRESETS.values()))
changes_strategy = st.lists(st.integers(min_value=-10_000, max_value=10_000), max_size=30)


def test_presets_match_the_published_rules() -> None:
    assert (SAGE.initial_score, SAGE.max_turns, SAGE.min_change, SAGE.max_change) == (
        40,
        10,
        -10,
        10,
    )
    assert SAGE.clip_changes and SAGE.floor == 0
    assert (RLVER_TRAIN.initial_score, RLVER_TRAIN.max_turns, RLVER_TRAIN.cap) == (30, 9, 100)
    assert not RLVER_TRAIN.clip_changes and RLVER_TRAIN.floor is None
    clipped = RLVER_TRAIN_CLIPPED.model_dump(exclude={"name", "clip_changes", "floor"})
    assert clipped == RLVER_TRAIN.model_dump(exclude={"name", "clip_changes", "floor"})
    assert RLVER_TRAIN_CLIPPED.clip_changes and RLVER_TRAIN_CLIPPED.floor == 0
    assert EmotionRules.preset("sage") is SAGE
    assert set(get_args(PresetName)) == set(PRESETS)
    with pytest.raises(ValueError, match="unknown emotion rules preset"):
        EmotionRules.preset("nope")


@pytest.mark.parametrize(
    ("rules", "scores", "applied", "reason"),
    [
        # RLVER's training code adds the judge's number as it comes and has no floor.
        (RLVER_TRAIN, [15, 40, 28, -12], [-15, 25, -12, -40], TerminationReason.FAILURE),
        (RLVER_TRAIN_CLIPPED, [20, 30, 20, 10], [-10, 10, -10, -10], None),
        (SAGE, [30, 40, 30, 20], [-10, 10, -10, -10], None),
    ],
)
def test_recorded_changes_replay_per_preset(
    rules: EmotionRules, scores: list[int], applied: list[int], reason: TerminationReason | None
) -> None:
    state = replay([-15, 25, -12, -40], rules)
    assert [s.score for s in state.steps] == scores
    assert [s.applied_change for s in state.steps] == applied
    assert [s.raw_change for s in state.steps] == [-15, 25, -12, -40]
    assert state.reason is reason


def test_rlver_cap_holds_without_clipping() -> None:
    state = replay([+25, +60, +5], RLVER_TRAIN)
    assert [s.score for s in state.steps] == [55, 100]
    assert [s.applied_change for s in state.steps] == [25, 45]
    assert state.reason is TerminationReason.SUCCESS


def test_rlver_failure_lands_below_zero_and_rewards_clip_at_zero() -> None:
    state = replay([-35], RLVER_TRAIN)
    assert (state.score, state.band, state.reason) == (-5, Band.F, TerminationReason.FAILURE)
    assert outcome_reward(state.score) == 0.0
    assert outcome_reward(replay([-25], RLVER_TRAIN).score) == pytest.approx(0.05)
    meta = EmotionMetadata.from_state(state)
    assert EmotionMetadata.from_metadata(meta.to_metadata()) == meta


def test_rlver_runs_nine_appraised_turns() -> None:
    """RLVER's script says max_turns=8; its loop stops once the count exceeds it."""
    state = replay([1] * 20, RLVER_TRAIN)
    assert state.turn == 9 and state.score == 39
    assert state.reason is TerminationReason.MAX_TURNS


@pytest.mark.parametrize(
    ("score", "band"),
    [
        (100, Band.S),
        (99, Band.A),
        (70, Band.A),
        (69, Band.B),
        (40, Band.B),
        (39, Band.C),
        (10, Band.C),
        (9, Band.F),
        (0, Band.F),
    ],
)
def test_band_thresholds(score: int, band: Band) -> None:
    assert band_of(score, SAGE) is band


def test_exact_trajectory_to_success() -> None:
    state = replay([10, 10, 10, 10, 10, 10], SAGE)
    assert [s.score for s in state.steps] == [50, 60, 70, 80, 90, 100]
    assert state.terminal and state.reason is TerminationReason.SUCCESS and state.band is Band.S


def test_large_changes_are_clipped_and_the_cap_holds() -> None:
    state = replay([+100, +100, +100, +100, +100, +100, +100], SAGE)
    assert [s.applied_change for s in state.steps] == [10, 10, 10, 10, 10, 10]
    assert [s.raw_change for s in state.steps][:2] == [100, 100]
    assert state.score == 100 and state.turn == 6


def test_failure_below_ten() -> None:
    state = replay([-10, -10, -10, -1], SAGE)
    assert [s.score for s in state.steps] == [30, 20, 10, 9]
    assert state.reason is TerminationReason.FAILURE


def test_max_turns() -> None:
    state = replay([1] * 12, SAGE)
    assert state.turn == 10 and state.score == 50
    assert state.reason is TerminationReason.MAX_TURNS


def test_cap_clips_the_applied_change() -> None:
    rules = EmotionRules(initial_score=95)
    state = apply_change(initial_state(rules), 8, rules)
    assert state.score == 100 and state.steps[-1].applied_change == 5


def test_invalid_rules_are_rejected() -> None:
    with pytest.raises(ValueError, match="band thresholds"):
        EmotionRules(band_a=30, band_b=40)
    with pytest.raises(ValueError, match="band thresholds"):
        EmotionRules(floor=20)
    with pytest.raises(ValueError, match="initial_score"):
        EmotionRules(floor=10, initial_score=5)


def test_rules_without_floor_survive_component_serialisation() -> None:
    """AutoGen dumps component configs without None fields; no floor must load back as none."""
    dumped = RLVER_TRAIN.model_dump(exclude_none=True)
    assert "floor" not in dumped and EmotionRules.model_validate(dumped) == RLVER_TRAIN
    assert EmotionRules.model_validate(SAGE.model_dump(exclude_none=True)) == SAGE


def test_metadata_round_trip() -> None:
    state = replay([5, -3], SAGE)
    meta = EmotionMetadata.from_state(state)
    strings = meta.to_metadata()
    assert all(isinstance(v, str) for v in strings.values())
    assert EmotionMetadata.from_metadata(strings) == meta
    assert meta.score == 42 and meta.change == -3
    assert EmotionMetadata.from_metadata({}) is None


@given(rules=rules_strategy, changes=changes_strategy)
def test_score_stays_in_range(rules: EmotionRules, changes: list[int]) -> None:
    state = initial_state(rules)
    for change in changes:
        before = state
        state = apply_change(state, change, rules)
        assert state.score <= rules.cap
        assert rules.floor is None or state.score >= rules.floor
        if state is not before and not rules.clip_changes:
            assert state.score == min(rules.cap, before.score + change)
        assert state.band is band_of(state.score, rules)


@given(rules=rules_strategy, change=st.integers(min_value=-(10**9), max_value=10**9))
def test_clipped_change_never_exceeds_range(rules: EmotionRules, change: int) -> None:
    clipped = clip_change(change, rules)
    if not rules.clip_changes:
        assert clipped == change
        return
    assert rules.min_change <= clipped <= rules.max_change
    state = apply_change(initial_state(rules), change, rules)
    assert abs(state.steps[-1].applied_change) <= max(-rules.min_change, rules.max_change)


@given(rules=rules_strategy, changes=changes_strategy, extra=changes_strategy)
def test_terminal_states_are_absorbing(
    rules: EmotionRules, changes: list[int], extra: list[int]
) -> None:
    state = replay(changes, rules)
    if not state.terminal:
        return
    after = state
    for change in extra:
        after = apply_change(after, change, rules)
    assert after == state


@given(rules=rules_strategy, changes=changes_strategy)
def test_dialogue_always_ends_within_max_turns(rules: EmotionRules, changes: list[int]) -> None:
    state = replay(changes + [0] * rules.max_turns, rules)
    assert state.terminal and state.turn <= rules.max_turns
