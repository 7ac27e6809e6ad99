"""The SAGE result importer on small hand-written result files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rlver_agents.emotion import TerminationReason
from rlver_agents.evaluation.rewards import outcome_reward, process_rewards
from rlver_agents.evaluation.sage import (
    SageFileError,
    read_sage_file,
    replay_dialogue,
    sage_benchmark,
    sage_episodes,
    score_sage_file,
)

FIXTURES = Path(__file__).parent / "fixtures" / "sage"
SMALL = FIXTURES / "results_small.jsonl"


def test_headline_numbers_and_exact_dump() -> None:
    score = score_sage_file(SMALL)
    assert json.loads(score.model_dump_json()) == {
        "file": str(SMALL),
        "n": 4,
        "mean": pytest.approx((100 + 5 + 52 + 62) / 4),
        "success": 1,
        "failure": 1,
        "replay_mismatches": 1,
    }


def test_wrong_trajectory_found_at_the_right_turn() -> None:
    (mismatch,) = score_sage_file(SMALL).mismatches
    assert (mismatch.dialogue_id, mismatch.line, mismatch.first_turn) == ("sage-wrong", 3, 3)
    assert [(m.turn, m.field, m.expected, m.recorded) for m in mismatch.turns] == [
        (3, "emotion-point", 46, 48),
        (4, "emotion-point", 50, 52),
        (4, "emo_point", 50, 52),
    ]
    assert mismatch.describe().startswith(
        "line 3, dialogue 'sage-wrong': turn 3 emotion-point expected 46, recorded 48;"
    )


def test_parsing_of_strings_openings_and_clipping() -> None:
    dialogues = {d.id: d for d in read_sage_file(SMALL)}
    failure = dialogues["sage-failure"]
    assert failure.final_score == 5
    assert failure.opening_point == 40
    assert failure.changes == [-10, -10, -10, -5]
    assert failure.points == [30, 20, 10, 5]
    success = dialogues["sage-success"]
    assert success.changes[0] == 15  # raw, from the string "+15"; the rules clip it to +10
    assert replay_dialogue(success) is None
    maxturns = dialogues["sage-maxturns"]
    assert maxturns.opening_point is None
    assert (maxturns.num_turns, len(maxturns.changes)) == (10, 10)
    assert maxturns.persona["main_cha"] == "passive"
    assert "history" not in maxturns.persona


def test_opening_score_is_checked() -> None:
    dialogue = next(d for d in read_sage_file(SMALL) if d.id == "sage-success")
    mismatch = replay_dialogue(dialogue.model_copy(update={"opening_point": 30}))
    assert mismatch is not None
    assert (mismatch.turns[0].turn, mismatch.turns[0].expected, mismatch.turns[0].recorded) == (
        0,
        40,
        30,
    )


def test_as_episodes() -> None:
    episodes = {e.persona_id: e for e in sage_episodes(SMALL)}
    success = episodes["sage-success"]
    assert success.termination is TerminationReason.SUCCESS
    assert episodes["sage-failure"].termination is TerminationReason.FAILURE
    assert episodes["sage-maxturns"].termination is TerminationReason.MAX_TURNS
    assert outcome_reward(success) == 1.0
    assert process_rewards(success) == pytest.approx([0.1] * 6)
    assert process_rewards(episodes["sage-wrong"]) == pytest.approx([0.05, 0.03, 0.0, 0.04])
    report = sage_benchmark(SMALL)
    assert report.mean_turns == pytest.approx(6.0)
    assert [row.persona_id for row in report.per_persona][:2] == ["sage-success", "sage-failure"]


def test_bad_value_names_file_line_and_field() -> None:
    with pytest.raises(SageFileError) as info:
        read_sage_file(FIXTURES / "bad_change.jsonl")
    message = str(info.value)
    assert "bad_change.jsonl, line 3" in message
    assert "history[4].planning.change" in message
    assert "'a lot'" in message


def _write(tmp_path: Path, record: object) -> Path:
    path = tmp_path / "result.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return path


def _record() -> dict[str, Any]:
    return json.loads(SMALL.read_text(encoding="utf-8").splitlines()[2])


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.pop("emo_point"), "emo_point"),
        (lambda r: r["history"][2].pop("planning"), "history[2].planning"),
        (lambda r: r["history"][2]["planning"].pop("change"), "history[2].planning.change"),
        (lambda r: r["history"][4].pop("emotion-point"), "history[4].emotion-point"),
        (lambda r: r["history"][1].update(role="system"), "history[1].role"),
        (lambda r: r["history"][1].update(content=None), "history[1].content"),
        (lambda r: r["history"][2]["planning"].update(change=True), "history[2].planning.change"),
        (lambda r: r["history"][2]["planning"].update(change=4.5), "history[2].planning.change"),
        (lambda r: r.update(history="none"), "history"),
    ],
)
def test_malformed_records(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], object], field: str
) -> None:
    record = _record()
    mutate(record)
    with pytest.raises(SageFileError) as info:
        read_sage_file(_write(tmp_path, record))
    assert info.value.field == field
    assert info.value.line == 1
    assert "result.jsonl" in str(info.value)


def test_numbers_in_many_spellings(tmp_path: Path) -> None:
    record = _record()
    record["history"][2]["planning"]["change"] = " +5 "
    record["history"][2]["emotion-point"] = "45.0"
    record["history"][4]["emotion-point"] = 48.0
    (dialogue,) = read_sage_file(_write(tmp_path, record))
    assert dialogue.changes[0] == 5
    assert dialogue.points[:2] == [45, 48]


def test_invalid_json_and_non_object(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"id": 1,\n', encoding="utf-8")
    with pytest.raises(SageFileError, match=r"broken\.jsonl, line 1: invalid JSON"):
        read_sage_file(path)
    path.write_text("\n[]\n", encoding="utf-8")
    with pytest.raises(SageFileError, match="line 2: expected a JSON object"):
        read_sage_file(path)
