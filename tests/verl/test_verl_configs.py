"""The shipped verl overlays compose with verl's own configs and pass verl's own validation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CONFIGS, compose_overlay
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.import_utils import resolve_config_path

from rlver_agents.config import load_config
from rlver_agents.emotion import RLVER_TRAIN
from training.verl.agent_loop import RlverDialogueAgentLoop
from training.verl.settings import AGENT_NAME, REPO_ROOT, DialogueLoopSettings

OVERLAYS = ("rlver_base.yaml", "rlver_ppo.yaml", "rlver_grpo.yaml", "rlver_interaction.yaml")


def has_key(config: DictConfig, dotted: str) -> bool:
    """Whether ``dotted`` names a key, even one whose value verl leaves mandatory (``???``)."""
    parent, _, last = dotted.rpartition(".")
    node = OmegaConf.select(config, parent) if parent else config
    return isinstance(node, DictConfig) and last in node.keys()


def leaves(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


@pytest.fixture(scope="module")
def verl_defaults() -> DictConfig:
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(config_name="ppo_trainer")


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_overlay_key_is_one_of_verls(name: str, verl_defaults: DictConfig) -> None:
    """A misspelt key would be silently added by Hydra; here it fails."""
    document = yaml.safe_load((CONFIGS / name).read_text())
    keys = [k for k in leaves(document) if k.split(".")[0] not in {"hydra", "defaults"}]
    assert keys
    unknown = [k for k in keys if not has_key(verl_defaults, k)]
    assert not unknown, f"{name}: not in verl's ppo_trainer: {unknown}"


def test_ppo_overlay_has_rlvers_settings() -> None:
    config = compose_overlay("rlver_ppo")
    assert config.algorithm.adv_estimator == "gae" and need_critic(config)
    assert not need_reference_policy(config)
    assert config.algorithm.use_kl_in_reward is False
    assert config.actor_rollout_ref.actor.use_kl_loss is False
    assert config.actor_rollout_ref.actor.kl_loss_coef == 0
    assert config.actor_rollout_ref.actor.entropy_coeff == pytest.approx(0.001)
    assert config.actor_rollout_ref.actor.optim.lr == pytest.approx(1e-6)
    assert config.actor_rollout_ref.actor.optim.lr_warmup_steps_ratio == pytest.approx(0.02)
    assert config.critic.optim.lr == pytest.approx(5e-6)
    assert config.critic.optim.lr_warmup_steps_ratio == pytest.approx(0.05)
    assert config.critic.model.path == config.actor_rollout_ref.model.path
    assert config.data.train_batch_size == 32
    assert config.actor_rollout_ref.actor.ppo_mini_batch_size == 32
    rollout = config.actor_rollout_ref.rollout
    assert (rollout.n, rollout.temperature, rollout.top_p) == (1, 1.0, 1.0)
    assert rollout.calculate_log_probs is True
    assert rollout.agent.default_agent_loop == AGENT_NAME
    assert (config.trainer.total_training_steps, config.trainer.save_freq) == (1000, 5)


def test_grpo_overlay_samples_four_dialogues_per_persona() -> None:
    config = compose_overlay("rlver_grpo")
    assert config.algorithm.adv_estimator == "grpo" and not need_critic(config)
    assert config.actor_rollout_ref.rollout.n == 4
    assert config.actor_rollout_ref.actor.optim.lr == pytest.approx(1e-6)
    assert config.data.train_batch_size == 32


@pytest.mark.parametrize("name", ["rlver_ppo", "rlver_grpo", "rlver_interaction"])
@pytest.mark.parametrize(("nodes", "gpus"), [(1, 4), (4, 8)])
def test_verl_accepts_the_overlays(name: str, nodes: int, gpus: int, tiny_checkpoint: Path) -> None:
    """verl's own checks; the critic's config reads the model's files, hence the tiny model."""
    config = compose_overlay(
        name,
        [
            f"trainer.nnodes={nodes}",
            f"trainer.n_gpus_per_node={gpus}",
            f"actor_rollout_ref.model.path={tiny_checkpoint}",
        ],
    )
    validate_config(
        config,
        use_reference_policy=need_reference_policy(config),
        use_critic=need_critic(config),
    )


def test_the_agent_loop_file_is_read_as_verl_reads_it() -> None:
    config = compose_overlay("rlver_ppo")
    path = resolve_config_path(config.actor_rollout_ref.rollout.agent.agent_loop_config_path)
    entries = OmegaConf.load(path)
    entry = next(e for e in entries if e.name == AGENT_NAME)
    assert entry._target_ == f"{RlverDialogueAgentLoop.__module__}.RlverDialogueAgentLoop"
    assert _agent_loop_registry[AGENT_NAME]["_target_"] == entry._target_
    settings = DialogueLoopSettings.model_validate(OmegaConf.to_container(entry.settings))
    assert settings.emotion_rules() == RLVER_TRAIN and RLVER_TRAIN.max_turns == 9
    run = settings.load_run_config()
    assert run.simulator.model.kind == "openai" and run.simulator.appraiser.kind == "llm"


def test_the_simulator_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = DialogueLoopSettings(run_config="training/verl/configs/simulator_vllm.yaml")
    assert settings.load_run_config().simulator.model.base_url == "http://127.0.0.1:8001/v1"
    monkeypatch.setenv("RLVER_SIMULATOR_URL", "http://10.0.0.7:8001/v1")
    assert settings.load_run_config().simulator.model.base_url == "http://10.0.0.7:8001/v1"


def test_relative_paths_resolve_from_the_repository(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = DialogueLoopSettings(run_config="training/verl/configs/simulator_vllm.yaml")
    assert settings.load_run_config().simulator.model.model == "simulator"


def test_the_eval_config_loads_in_rlver() -> None:
    run = load_config(REPO_ROOT / "training" / "verl" / "configs" / "eval_policy.yaml")
    assert run.agent.model.kind == "openai" and run.agent.model.model == "rlver-policy"
    assert run.emotion_rules().name == "sage"
