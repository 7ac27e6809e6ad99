"""``python -m training CONFIG.yaml`` end to end with real simulated users, and the trained
checkpoint in an AutoGen team."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_the_entry_point_trains_against_simulated_users(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # the simulated user's prompt (persona, rules, history) outgrows the tiny model's 1024
    # positions in its word-level tokenizer; a copy with a longer context plays the user
    voice = tmp_path / "voice"
    shutil.copytree(tiny_checkpoint, voice)
    settings = json.loads((voice / "config.json").read_text())
    settings["max_position_embeddings"] = 8192
    (voice / "config.json").write_text(json.dumps(settings))
    config = {
        "algorithm": "grpo",
        "output_dir": str(tmp_path / "run"),
        "max_steps": 1,
        "use_cpu": True,
        "policy": {"model": str(tiny_checkpoint)},
        # a SimulatedUser with the tiny model's voice and the offline embedding appraiser
        "simulator": {"model": {"kind": "local", "model": str(voice), "max_new_tokens": 6}},
        "rollout": {"personas": "train", "max_turns": 1, "group_size": 2, "max_new_tokens": 4},
        "logging": {"tensorboard": True},
        "grpo": {"per_device_train_batch_size": 2},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    completed = subprocess.run(
        [sys.executable, "-m", "training", str(path)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    final = tmp_path / "run" / "final"
    assert "Final checkpoint" in completed.stderr and (final / "config.json").is_file()
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["rollout/errored"] == 0.0 and logged["rollout/turns_mean"] == 1.0
    assert list((tmp_path / "run" / "runs").rglob("events.out.tfevents.*"))

    # the trained checkpoint drops into an AutoGen team as it is
    team = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "trained_agent_team.py"),
            "--checkpoint",
            str(final),
            "--max-new-tokens",
            "4",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
        check=False,
    )
    assert team.returncode == 0, team.stderr[-3000:]
    lines = team.stdout.splitlines()
    assert any(line.startswith("friend: ") for line in lines), team.stdout
    assert lines[-1].startswith("-- stopped: Maximum number of messages 3"), team.stdout
