"""Reports: files written, PNGs valid, numbers and figures in the Markdown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlver_agents.emotion import RLVER_TRAIN, Band, TerminationReason
from rlver_agents.episodes.episode import Episode, EpisodeConfig, Turn
from rlver_agents.episodes.episode_file import write_episodes
from rlver_agents.evaluation.report import band_transition_counts, write_report
from rlver_agents.evaluation.sage import sage_episodes

SMALL = Path(__file__).parent / "fixtures" / "sage" / "results_small.jsonl"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sage_run() -> list[Episode]:
    return sage_episodes(SMALL)


def errored() -> Episode:
    return Episode(persona_id="p9", termination=TerminationReason.ERROR, error="boom")


def test_trajectory_and_transitions(sage_run: list[Episode]) -> None:
    episodes = {e.persona_id: e for e in sage_run}
    assert episodes["sage-success"].emotion_trajectory() == [40, 50, 60, 70, 80, 90, 100]
    assert episodes["sage-maxturns"].emotion_trajectory()[:3] == [40, 43, 48]
    assert len(episodes["sage-maxturns"].emotion_trajectory()) == 11
    # errored before any appraisal: the recorded rules' start, or nothing without rules
    assert errored().emotion_trajectory() == []
    with_rules = errored().model_copy(
        update={"config": EpisodeConfig(rules=RLVER_TRAIN.model_dump(mode="json"))}
    )
    assert with_rules.emotion_trajectory() == [RLVER_TRAIN.initial_score]

    counts = band_transition_counts([episodes["sage-success"]])
    assert counts[Band.B][Band.B] == 2
    assert counts[Band.B][Band.A] == 1
    assert counts[Band.A][Band.A] == 2
    assert counts[Band.A][Band.S] == 1
    assert sum(sum(row.values()) for row in counts.values()) == 6
    # failure: 40 (B) -> 30 (C) -> 20 (C) -> 10 (C) -> 5 (F)
    failure = band_transition_counts([episodes["sage-failure"]])
    assert (failure[Band.B][Band.C], failure[Band.C][Band.C], failure[Band.C][Band.F]) == (1, 2, 1)


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 1000, path


def test_write_report_from_runs(tmp_path: Path, sage_run: list[Episode]) -> None:
    other = [*sage_run[:2], errored()]
    report_path = write_report({"sage small": sage_run, "subset": other}, tmp_path / "out")
    assert report_path == tmp_path / "out" / "report.md"
    text = report_path.read_text(encoding="utf-8")
    pngs = sorted(report_path.parent.glob("*.png"))
    assert [p.name for p in pngs] == sorted(
        [
            "run-comparison.png",
            *(f"sage-small-{kind}.png" for kind in ("trajectories", "final-scores", "transitions")),
            *(f"subset-{kind}.png" for kind in ("trajectories", "final-scores", "transitions")),
        ]
    )
    for png in pngs:
        _assert_png(png)
        assert f"]({png.name})" in text
    assert "| sage small | 4 | 54.75 | 1 | 1 | 0 |" in text
    assert "| subset | 2 | 52.50 | 1 | 1 | 1 |" in text
    # band-B row, sage run: B->B 2 (success) + 4 (wrong) + 10 (max turns), B->A 1, B->C 1
    assert "| B | 0 | 1 | 16 | 1 | 0 |" in text
    assert "| B | 0 | 1 | 2 | 1 | 0 |" in text  # the subset run: success and failure only
    assert "## Run `subset`" in text


def test_write_report_from_paths(tmp_path: Path, sage_run: list[Episode]) -> None:
    first = write_episodes(tmp_path / "a" / "run.jsonl", sage_run)
    second = write_episodes(tmp_path / "b" / "run.jsonl", [errored()])
    text = write_report([first, second], tmp_path / "report").read_text(encoding="utf-8")
    assert "| run | 4 | 54.75 | 1 | 1 | 0 |" in text
    assert "| run-2 | 0 | n/a | 0 | 0 | 1 |" in text
    for name in ("run-trajectories.png", "run-2-trajectories.png", "run-comparison.png"):
        _assert_png(tmp_path / "report" / name)


def test_a_run_under_rlver_training_rules_plots_scores_below_zero(tmp_path: Path) -> None:
    """RLVER's training arithmetic has no floor, so a failed dialogue can end below 0."""
    turns = [
        Turn(index=0, speaker="user", source="user", text="hi"),
        Turn(index=1, speaker="agent", source="agent", text="cheer up"),
        Turn(
            index=2,
            speaker="user",
            source="user",
            text="bye",
            raw_change=-42,
            applied_change=-42,
            emotion_before=30,
            emotion_after=-12,
            band=Band.F,
        ),
    ]
    episode = Episode(
        persona_id="p1",
        config=EpisodeConfig(rules=RLVER_TRAIN.model_dump(mode="json")),
        turns=turns,
        termination=TerminationReason.FAILURE,
        final_score=-12,
        num_turns=1,
    )
    assert episode.emotion_trajectory() == [30, -12]
    text = write_report({"rlver": [episode]}, tmp_path).read_text(encoding="utf-8")
    assert "| rlver | 1 | -12.00 | 0 | 1 | 0 |" in text
    for kind in ("trajectories", "final-scores"):
        _assert_png(tmp_path / f"rlver-{kind}.png")


def test_write_report_needs_a_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one run"):
        write_report({}, tmp_path)


def test_importing_stays_light() -> None:
    code = (
        "import sys, rlver_agents.evaluation.report, rlver_agents.evaluation.sage;"
        "import rlver_agents.evaluation.rewards;"
        "print(sorted(m for m in ('matplotlib', 'torch') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
