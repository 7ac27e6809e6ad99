"""Export: episodes to a datasets table and Parquet and back, with every field kept."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rlver_agents.emotion import Band, TerminationReason
from rlver_agents.episodes.episode import Episode, EpisodeConfig, Turn, Usage
from rlver_agents.episodes.episode_file import write_episodes
from rlver_agents.episodes.export import (
    episode_from_row,
    episode_to_row,
    export_parquet,
    features,
    from_dataset,
    read_parquet,
    to_dataset,
)
from rlver_agents.models.records import GenerationRecord, SamplingParams

pytest.importorskip("datasets")


def generation(n: int) -> GenerationRecord:
    return GenerationRecord(
        prompt_token_ids=[1, 2, 3, n],
        completion_token_ids=[40 + n, 41 + n, 2],
        completion_logprobs=[-0.5, -1.25, -0.01],
        raw_logprobs=[-0.75, -1.5, -0.02],
        prompt_text=f"<prompt {n}>",
        completion_text=f"reply {n}",
        finish_reason="stop" if n % 2 else "length",
        sampling=SamplingParams(temperature=0.6, top_p=0.9, seed=7 + n, max_new_tokens=32),
        model="tiny",
    )


def scored_episode() -> Episode:
    turns = [
        Turn(index=0, speaker="user", source="user", text="I had a bad day."),
        Turn(
            index=1,
            speaker="agent",
            source="agent",
            text="That sounds hard.",
            thought="be gentle",
            usage=Usage(prompt_tokens=12, completion_tokens=3),
            generations=[generation(1)],
        ),
        Turn(
            index=2,
            speaker="user",
            source="user",
            text="It was.",
            appraisal={"intent": "comfort", "change": 5, "nested": {"score": [1, 2]}},
            raw_change=5,
            applied_change=5,
            emotion_before=40,
            emotion_after=45,
            band=Band.C,
        ),
        Turn(index=3, speaker="agent", source="agent", text="Tell me.", generations=[]),
    ]
    return Episode(
        persona_id="p0",
        sample=1,
        config=EpisodeConfig(
            agent={"model": {"kind": "local", "temperature": 0.6}},
            rules={"name": "short", "initial_score": 40},
            seed=123,
            package_version="0.1.0",
        ),
        turns=turns,
        termination=TerminationReason.MAX_TURNS,
        final_score=45,
        num_turns=2,
        started_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        duration_s=1.5,
    )


def errored_episode() -> Episode:
    return Episode(
        persona_id="p1",
        termination=TerminationReason.ERROR,
        error="ConnectionError: reset",
        attempts=3,
        attempt_errors=["TimeoutError", "TimeoutError"],
    )


def test_a_row_round_trips_and_free_form_dicts_become_json() -> None:
    episode = scored_episode()
    row = episode_to_row(episode)
    assert json.loads(row["config"]["agent"]) == {"model": {"kind": "local", "temperature": 0.6}}
    assert row["config"]["seed"] == 123  # typed fields stay typed
    assert json.loads(row["turns"][2]["appraisal"])["nested"] == {"score": [1, 2]}
    assert row["turns"][1]["generations"][0]["sampling"]["top_p"] == 0.9
    assert episode_from_row(row) == episode


def test_the_schema_follows_the_models() -> None:
    schema = features()
    generations = schema["turns"].feature["generations"].feature
    assert set(generations) == set(GenerationRecord.model_fields)
    assert set(schema["turns"].feature) == set(Turn.model_fields)
    assert set(schema) == set(Episode.model_fields)


def test_export_round_trips_through_datasets_and_parquet(tmp_path: Path) -> None:
    episodes = [scored_episode(), errored_episode()]
    path = write_episodes(tmp_path / "run.jsonl", episodes)
    dataset = to_dataset(path)
    assert dataset.num_rows == 2 and dataset[0]["turns"][2]["emotion_after"] == 45
    assert dataset[0]["turns"][1]["generations"][0]["raw_logprobs"] == [-0.75, -1.5, -0.02]
    assert dataset[1]["turns"] == [] and dataset[1]["final_score"] is None
    assert from_dataset(dataset) == episodes
    parquet = export_parquet(episodes, tmp_path / "out" / "episodes.parquet")
    assert read_parquet(parquet) == episodes
