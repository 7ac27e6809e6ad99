"""Training configuration files: the shipped ones load, bad ones name the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlver_agents.emotion import RLVER_TRAIN
from training.cli import app
from training.config import TrainConfigError, load_train_config
from training.rollout import run_config

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_train_config(path)
    assert config.algorithm in path.name


def test_the_gpu_config_carries_rlvers_settings() -> None:
    config = load_train_config(CONFIGS / "qwen2.5-7b-grpo.yaml")
    assert config.policy.model == "Qwen/Qwen2.5-7B-Instruct" and config.bf16
    assert config.grpo is not None and config.grpo.learning_rate == 1e-6
    assert config.grpo.beta == 0.0
    assert (config.rollout.temperature, config.rollout.top_p) == (1.0, 1.0)
    assert config.rollout.emotion_rules() == RLVER_TRAIN
    assert config.rollout.group_size == 4 and config.rollout.generation == "vllm"
    assert not config.policy.think and config.simulator.model.kind == "openai"


@pytest.mark.parametrize(
    ("name", "unit", "keeps"),
    [
        ("qwen2.5-7b-grpo.yaml", "dialogue", True),
        ("qwen2.5-7b-ppo.yaml", "dialogue", True),
        ("qwen2.5-7b-ppo.yaml", "turn", False),  # RLVER's think mode: thoughts leave the history
    ],
)
def test_rollout_agents_keep_thoughts_only_for_the_think_mode_dialogue_unit(
    name: str, unit: str, keeps: bool
) -> None:
    """The dialogue unit's stream holds every thought, so its agent must keep them too."""
    think = load_train_config(
        CONFIGS / name, {"policy": {"think": True}, "rollout": {"unit": unit}}
    )
    assert run_config(think).agent.keep_thoughts is keeps
    plain = load_train_config(CONFIGS / name, {"policy": {"think": False}})
    assert run_config(plain).agent.keep_thoughts is False


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_an_unknown_field_is_named_with_its_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "algorithm: grpo\noutput_dir: out\nrollout:\n  group_sise: 4\n")
    with pytest.raises(TrainConfigError) as error:
        load_train_config(path)
    assert str(path) in str(error.value)
    assert "rollout.group_sise" in str(error.value)


def test_a_batch_that_splits_groups_names_the_fields(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "algorithm: grpo\noutput_dir: out\nrollout:\n  group_size: 4\n"
        "grpo:\n  per_device_train_batch_size: 6\n",
    )
    with pytest.raises(TrainConfigError, match="per_device_train_batch_size") as error:
        load_train_config(path)
    assert "rollout.group_size = 4" in str(error.value)


def test_grpo_refuses_the_turn_unit_and_vllm_on_cpu(tmp_path: Path) -> None:
    turn = _write(tmp_path, "algorithm: grpo\noutput_dir: out\nrollout:\n  unit: turn\n")
    with pytest.raises(TrainConfigError, match=r"rollout\.unit"):
        load_train_config(turn)
    vllm = _write(
        tmp_path, "algorithm: grpo\noutput_dir: out\nuse_cpu: true\nrollout:\n  generation: vllm\n"
    )
    with pytest.raises(TrainConfigError, match="vllm needs GPUs"):
        load_train_config(vllm)


def test_stop_strings_are_refused_with_the_vllm_backend(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "algorithm: ppo\noutput_dir: out\nrollout:\n  generation: vllm\n  stop: ['\\n']\n",
    )
    with pytest.raises(TrainConfigError, match=r"rollout.*stop.*generation: local"):
        load_train_config(path)


def test_trl_passthrough_cannot_override_shared_settings(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "algorithm: grpo\noutput_dir: out\ngrpo:\n  trl:\n    num_generations: 8\n"
    )
    with pytest.raises(TrainConfigError, match="num_generations"):
        load_train_config(path)


def test_the_cli_reports_a_bad_file_and_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path, "algorithm: sft\noutput_dir: out\n")
    result = CliRunner().invoke(app, [str(path)])
    assert result.exit_code == 2
    assert str(path) in result.output and "algorithm" in result.output
    missing = CliRunner().invoke(app, [str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "no such configuration file" in missing.output
