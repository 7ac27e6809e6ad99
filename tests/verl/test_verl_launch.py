"""The launch scripts prepare the data and build a main_ppo command that verl accepts.

They stop short of starting the trainer (``RLVER_DRY_RUN``): that needs GPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config

from rlver_agents.personas import load_split
from training.verl.data import read_rows
from training.verl.settings import INTERACTION_NAME, REPO_ROOT, USER_TOOL_AGENT_NAME

LAUNCH = REPO_ROOT / "training" / "verl" / "launch"


def run_script(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PATH": path, "RLVER_DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_single_node_writes_the_data_and_a_command_verl_accepts(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RLVER_SIMULATOR_URL", raising=False)
    data = tmp_path / "data"
    done = run_script(
        "single_node.sh",
        ["grpo", "trainer.total_training_steps=3"],
        {"DATA": str(data), "POLICY": str(tiny_checkpoint), "TRAIN_GPUS": "0,1,2,3"},
    )
    assert done.returncode == 0, done.stderr
    assert len(read_rows(data / "train.parquet")) == len(load_split("train"))
    assert len(read_rows(data / "test.parquet")) == len(load_split("test"))

    args = done.stdout.splitlines()
    assert args[:3] == ["python", "-m", "verl.trainer.main_ppo"]
    config_dir = args[args.index("--config-path") + 1]
    name = args[args.index("--config-name") + 1]
    overrides = args[args.index("--config-name") + 2 :]
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        config = compose(config_name=name, overrides=overrides)
    assert config.algorithm.adv_estimator == "grpo" and config.actor_rollout_ref.rollout.n == 4
    assert config.data.train_files == str(data / "train.parquet")
    assert config.actor_rollout_ref.model.path == str(tiny_checkpoint)
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (1, 4)
    assert config.trainer.total_training_steps == 3
    assert config.actor_rollout_ref.actor.fsdp_config.optimizer_offload is True
    assert config.critic.fsdp.optimizer_offload is True
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
    assert env_vars.RLVER_SIMULATOR_URL == "http://127.0.0.1:8001/v1"
    assert str(REPO_ROOT) in env_vars.PYTHONPATH.split(os.pathsep)
    assert Path(config.actor_rollout_ref.rollout.agent.agent_loop_config_path).is_file()
    validate_config(config, need_reference_policy(config), need_critic(config))


def test_train_names_what_is_missing(tmp_path: Path) -> None:
    done = run_script("train.sh", ["dpo"], {"RLVER_SIMULATOR_URL": "http://h:1/v1"})
    assert done.returncode == 2 and "unknown algorithm 'dpo'" in done.stderr
    done = run_script(
        "train.sh", ["ppo"], {"RLVER_SIMULATOR_URL": "http://h:1/v1", "DATA": str(tmp_path)}
    )
    assert done.returncode == 2 and f"{tmp_path}/train.parquet is missing" in done.stderr


def test_the_cluster_submit_needs_shared_storage() -> None:
    env = {k: "" for k in ("DATA", "CKPT_DIR", "RLVER_SIMULATOR_URL")}
    done = run_script("ray_cluster.sh", ["submit", "ppo"], env)
    assert done.returncode != 0 and "DATA" in done.stderr


def test_the_interaction_route_writes_its_own_rows_and_a_command_verl_accepts(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RLVER_SIMULATOR_URL", raising=False)
    data = tmp_path / "data"
    done = run_script(
        "single_node.sh",
        ["interaction"],
        {"DATA": str(data), "POLICY": str(tiny_checkpoint)},
    )
    assert done.returncode == 0, done.stderr
    rows = read_rows(data / "interaction" / "train.parquet")
    assert len(rows) == len(load_split("train")) and not (data / "train.parquet").exists()
    assert {row.agent_name for row in rows} == {USER_TOOL_AGENT_NAME}
    assert {row.extra_info.interaction_kwargs.name for row in rows} == {INTERACTION_NAME}

    args = done.stdout.splitlines()
    config_dir = args[args.index("--config-path") + 1]
    name = args[args.index("--config-name") + 1]
    assert name == "rlver_interaction"
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        config = compose(config_name=name, overrides=args[args.index("--config-name") + 2 :])
    assert config.data.train_files == str(data / "interaction" / "train.parquet")
    assert config.actor_rollout_ref.rollout.agent.default_agent_loop == USER_TOOL_AGENT_NAME
    assert config.reward.custom_reward_function.name == "compute_score"
    assert config.algorithm.adv_estimator == "grpo" and not need_critic(config)
    validate_config(config, need_reference_policy(config), need_critic(config))
