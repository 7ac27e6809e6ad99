"""Emotion rules: exact arithmetic and hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlver_agents.emotion import (
    PRESETS,
    RLVER_TRAIN,
    SAGE,
    Band,
    EmotionMetadata,
    EmotionRules,
    TerminationReason,
    apply_change,
    band_of,
    clip_change,
    initial_state,
    replay,
)

rules_strategy = st.sampled_from(list(PRESETS.values()))
changes_strategy = st.lists(st.integers(min_value=-10_000, max_value=10_000), max_size=30)


def test_presets_match_the_published_rules() -> None:
    assert (SAGE.initial_score, SAGE.max_turns, SAGE.min_change, SAGE.max_change) == (
        40,
        10,
        -10,
        10,
    )
    assert (RLVER_TRAIN.initial_score, RLVER_TRAIN.max_turns) == (30, 8)
    assert EmotionRules.preset("sage") is SAGE
    with pytest.raises(ValueError, match="unknown emotion rules preset"):
        EmotionRules.preset("nope")


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
    state = replay([1] * 8, RLVER_TRAIN)
    assert state.turn == 8 and state.score == 38
    assert state.reason is TerminationReason.MAX_TURNS


def test_cap_clips_the_applied_change() -> None:
    rules = EmotionRules(initial_score=95)
    state = apply_change(initial_state(rules), 8, rules)
    assert state.score == 100 and state.steps[-1].applied_change == 5


def test_invalid_rules_are_rejected() -> None:
    with pytest.raises(ValueError, match="band thresholds"):
        EmotionRules(band_a=30, band_b=40)


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
        state = apply_change(state, change, rules)
        assert 0 <= state.score <= 100
        assert state.band is band_of(state.score, rules)


@given(rules=rules_strategy, change=st.integers(min_value=-(10**9), max_value=10**9))
def test_clipped_change_never_exceeds_range(rules: EmotionRules, change: int) -> None:
    clipped = clip_change(change, rules)
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
