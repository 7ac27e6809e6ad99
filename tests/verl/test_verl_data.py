"""Persona files to verl parquet, read back by verl's own RLHFDataset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf
from verl.utils.dataset.rl_dataset import RLHFDataset

from rlver_agents.agents.agent import default_system_message
from rlver_agents.personas import PERSONA_SPLITS, Persona, load_personas, load_split
from training.verl.data import convert, read_rows
from training.verl.settings import AGENT_NAME, REPO_ROOT

RLVER_PROFILES = REPO_ROOT.parent / "shared" / "data" / "rlver" / "train_profile.jsonl"


def verl_rows(path: Path, tokenizer: Any, tmp_path: Path) -> list[dict[str, Any]]:
    config = OmegaConf.create({"cache_dir": str(tmp_path / "cache"), "max_prompt_length": 4096})
    dataset = RLHFDataset(str(path), tokenizer, config)
    return [dataset[i] for i in range(len(dataset))]


def check_rows(rows: list[dict[str, Any]], personas: list[Persona], split: str) -> None:
    assert len(rows) == len(personas)
    for number, (row, persona) in enumerate(zip(rows, personas, strict=True)):
        assert row["agent_name"] == AGENT_NAME
        assert Persona.model_validate_json(row["persona"]) == persona
        assert row["persona_id"] == persona.id and row["language"] == persona.language
        assert row["raw_prompt"] == [
            {"role": "system", "content": default_system_message(persona.language)}
        ]
        assert row["index"] == number
        assert row["extra_info"]["split"] == split


@pytest.mark.parametrize("split", PERSONA_SPLITS)
def test_bundled_personas_convert(
    split: str, tmp_path: Path, tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    out = tmp_path / f"{split}.parquet"
    written = convert([split], out)
    assert read_rows(out) == written
    check_rows(verl_rows(out, tiny_tokenizer, tmp_path), load_split(split), split)


def test_rlver_profiles_convert(
    tmp_path: Path, tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not RLVER_PROFILES.is_file():
        pytest.skip(f"{RLVER_PROFILES} is not present (the public RLVER profile file)")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    out = tmp_path / "rlver.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "training.verl.data", str(RLVER_PROFILES), "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    personas = load_personas(RLVER_PROFILES)
    assert f"wrote {len(personas)} rows (zh)" in done.stdout
    check_rows(verl_rows(out, tiny_tokenizer, tmp_path), personas, "train_profile")


def test_bad_input_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "player": "someone"}\n')
    done = subprocess.run(
        [sys.executable, "-m", "training.verl.data", str(broken), "--out", str(tmp_path / "x")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert f"{broken}, line 1, field 'task'" in done.stderr
    assert not (tmp_path / "x").exists()
