"""The Sentient benchmark on hand-built episodes, and episode JSONL files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlver_agents.emotion import SAGE, EmotionRules, TerminationReason, apply_change, initial_state
from rlver_agents.episodes.episode import Episode, Turn
from rlver_agents.episodes.episode_file import EpisodeFileError, read_episodes, write_episodes
from rlver_agents.evaluation.benchmark import (
    sentient_benchmark,
)
from rlver_agents.evaluation.rewards import EpisodeNotScorable


def scored(persona_id: str, changes: list[int], sample: int = 0) -> Episode:
    state = initial_state(SAGE)
    for change in changes:
        state = apply_change(state, change, SAGE)
    return Episode(
        persona_id=persona_id,
        sample=sample,
        termination=state.reason or TerminationReason.MAX_TURNS,
        final_score=state.score,
        num_turns=len(changes),
    )


def errored(persona_id: str, sample: int, final_score: int | None = None) -> Episode:
    return Episode(
        persona_id=persona_id,
        sample=sample,
        turns=[Turn(index=0, speaker="user", source="user", text="hi")],
        termination=TerminationReason.ERROR,
        error="model server refused the connection",
        final_score=final_score,
        num_turns=2,
    )


@pytest.fixture
def run() -> list[Episode]:
    return [
        scored("p1", [10] * 6),  # 100, success, 6 turns
        scored("p1", [0] * 10, sample=1),  # 40, 10 turns
        scored("p2", [-10, -10, -10, -5]),  # 5, failure, 4 turns
        errored("p2", sample=1, final_score=0),  # must not count as a 0
        errored("p3", sample=0),
    ]


def test_headline_numbers(run: list[Episode]) -> None:
    report = sentient_benchmark(run)
    assert [e.final_score for e in run[:3]] == [100, 40, 5]
    assert report.n_episodes == 5
    assert report.n_scored == 3
    assert report.errored == 2
    assert report.mean_final_score == pytest.approx(145 / 3)
    assert report.success == 1
    assert report.failure == 1
    assert report.mean_turns == pytest.approx(20 / 3)
    assert (report.success_at, report.failure_below) == (100, 10)


def test_per_persona_table(run: list[Episode]) -> None:
    rows = {row.persona_id: row for row in sentient_benchmark(run).per_persona}
    assert list(rows) == ["p1", "p2", "p3"]
    assert (rows["p1"].n, rows["p1"].mean, rows["p1"].min, rows["p1"].max) == (2, 70.0, 40, 100)
    assert (rows["p2"].n, rows["p2"].mean, rows["p2"].errored) == (1, 5.0, 1)
    assert (rows["p3"].n, rows["p3"].mean, rows["p3"].min, rows["p3"].errored) == (0, None, None, 1)


def test_markdown(run: list[Episode]) -> None:
    text = sentient_benchmark(run).to_markdown()
    assert "| Sentient score (mean final score, 0-100) | 48.33 |" in text
    assert "| errored (not scored) | 2 |" in text
    assert "| p1 | 2 | 70.00 | 40 | 100 | 0 |" in text
    assert "| p3 | 0 | n/a | n/a | n/a | 1 |" in text
    assert "[" not in text  # plain Markdown, no rich markup


def test_errored_dialogues_are_reported_with_their_commonest_reasons(run: list[Episode]) -> None:
    timed_out = errored("p4", 0).model_copy(update={"error": "TimeoutError: user took long"})
    report = sentient_benchmark([*run, timed_out])
    assert [(e.count, e.reason) for e in report.common_errors] == [
        (2, "model server refused the connection"),
        (1, "TimeoutError: user took long"),
    ]
    text = report.to_markdown()
    assert "Errored dialogues, most common reasons first (3 in all):" in text
    assert "- 2 × model server refused the connection" in text
    assert sentient_benchmark(run[:3]).common_errors == []
    assert "Errored dialogues" not in sentient_benchmark(run[:3]).to_markdown()


def test_thresholds_follow_rules(run: list[Episode]) -> None:
    lenient = EmotionRules(band_s=40, band_a=40, band_b=40, band_c=5)
    report = sentient_benchmark(run, lenient)
    assert (report.success, report.failure) == (2, 0)


def test_empty_and_all_errored() -> None:
    report = sentient_benchmark([errored("p1", 0)])
    assert report.mean_final_score is None
    assert report.mean_turns is None
    assert report.errored == 1
    assert "n/a" in report.to_markdown()
    assert sentient_benchmark([]).n_episodes == 0


def test_scored_episode_without_score_is_refused() -> None:
    broken = scored("p1", [5]).model_copy(update={"final_score": None})
    with pytest.raises(EpisodeNotScorable, match="p1"):
        sentient_benchmark([broken])


def test_round_trip(tmp_path: Path, run: list[Episode]) -> None:
    path = write_episodes(tmp_path / "out" / "run.jsonl", run[:2])
    write_episodes(path, run[2:], append=True)
    assert read_episodes(path) == run
    assert len(path.read_text(encoding="utf-8").splitlines()) == 5


def test_later_line_supersedes_same_episode(tmp_path: Path) -> None:
    first_try = errored("p1", sample=0)
    retried = scored("p1", [10] * 6)
    other = scored("p2", [5])
    path = write_episodes(tmp_path / "run.jsonl", [first_try, other, retried])
    episodes = read_episodes(path)
    assert episodes == [retried, other]
    assert sentient_benchmark(episodes).errored == 0


def test_bad_lines_name_file_and_line(tmp_path: Path, run: list[Episode]) -> None:
    path = tmp_path / "bad.jsonl"
    good = run[0].model_dump_json()
    path.write_text(good + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(EpisodeFileError, match=r"bad\.jsonl, line 3: invalid JSON"):
        read_episodes(path)

    record = json.loads(good)
    record["termination"] = "exploded"
    path.write_text(good + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(EpisodeFileError, match=r"line 2, field 'termination'"):
        read_episodes(path)

    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(EpisodeFileError, match="line 1: expected a JSON object"):
        read_episodes(path)
