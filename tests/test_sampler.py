"""The bfloat16 sampling copy and the truncated importance weight that corrects it."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_training_ppo_run import ppo_config
from training_users import PERSONAS, scripted_users, tiny_config
from transformers import AutoModelForCausalLM

from training.config import TrainConfig, TrainConfigError, parse_train_config
from training.grpo import build_trainer
from training.policy import METRICS_FILE
from training.ppo import PPORun, policy_loss
from training.rollout import Rollout
from training.sampler import BFloat16Sampler, ImportanceWeights

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _assert_copy_of(sampler: BFloat16Sampler, weights: dict[str, torch.Tensor]) -> None:
    copied = sampler.model.state_dict()
    assert set(copied) == set(weights)
    for name, tensor in weights.items():
        assert copied[name].dtype == torch.bfloat16
        assert torch.equal(copied[name], tensor.to(torch.bfloat16)), name


def test_the_copy_follows_the_trained_weights(tiny_checkpoint: Path) -> None:
    policy = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    sampler = BFloat16Sampler(policy)
    _assert_copy_of(sampler, policy.state_dict())
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    assert not torch.equal(
        sampler.model.lm_head.weight, policy.lm_head.weight.to(torch.bfloat16)
    ), "the copy is its own memory, not a view of the policy"
    sampler.refresh()
    _assert_copy_of(sampler, policy.state_dict())
    assert all(p.dtype == torch.float32 for p in policy.parameters())


def test_the_copy_runs_its_own_weights_when_the_policy_forward_is_wrapped(
    tiny_checkpoint: Path,
) -> None:
    """A trainer wraps its model's forward (accelerate casts outputs to float32 that way); the
    copy must still compute in bfloat16, not call back into the float32 policy."""
    policy = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    inner = policy.forward
    policy.forward = lambda *args, **kwargs: inner(*args, **kwargs)  # type: ignore[method-assign]
    sampler = BFloat16Sampler(policy)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        copied = sampler.model(input_ids=ids).logits
        trained = policy(input_ids=ids).logits
    assert copied.dtype == torch.bfloat16
    assert float((copied.float() - trained).abs().max()) > 1e-2, "the float32 policy ran"


def test_a_lora_policy_is_sampled_with_its_adapter_merged(tiny_checkpoint: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    policy = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05)  # a trained adapter: B is no longer zero
    sampler = BFloat16Sampler(policy)
    assert not hasattr(sampler.model, "peft_config")
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    _assert_copy_of(sampler, merged)
    untrained = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).state_dict()
    assert any(not torch.equal(merged[name], tensor) for name, tensor in untrained.items()), (
        "the merged weights differ from the base's"
    )


def test_importance_weights_are_capped_and_report_the_gap() -> None:
    train = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
    sample = torch.tensor([[-1.0, -0.5, -2.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    weights = ImportanceWeights(train, sample, mask, cap=3.0)
    assert weights.weights is not None
    expected = torch.tensor([[1.0, torch.exp(torch.tensor(-1.5)).item(), 3.0, 0.0]])
    assert torch.allclose(weights.weights, expected)
    assert weights.gap_max == pytest.approx(1.5)
    assert weights.gap_mean == pytest.approx(1.0)
    assert weights.capped_share == pytest.approx(1 / 3)
    uncorrected = ImportanceWeights(train, sample, mask, cap=None)
    assert uncorrected.weights is None and uncorrected.gap_max == pytest.approx(1.5)


def _policy_gradient(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor | None,
) -> torch.Tensor:
    """The gradient of PPO's surrogate at ratio 1, as one update step computes it."""
    logits = logits.clone().requires_grad_(True)
    logprobs = torch.log_softmax(logits, dim=-1)[tokens].unsqueeze(0)
    mask = torch.ones_like(logprobs)
    loss = policy_loss(
        logprobs,
        logprobs.detach(),
        advantages.unsqueeze(0),
        mask,
        clip_ratio=0.2,
        normaliser=float(len(tokens)),
        sampling_weights=weights,
    )
    loss.loss.backward()
    assert logits.grad is not None
    return -logits.grad


def test_the_correction_removes_the_sampler_bias_and_its_absence_does_not() -> None:
    """Tokens drawn from a sampler far from the policy: the capped weights recover the
    policy's own gradient; without them the estimate points elsewhere."""
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    policy = torch.softmax(logits, dim=-1)
    sampler = torch.tensor([0.1, 0.2, 0.3, 0.4])  # the policy's order, reversed
    reward = torch.tensor([1.0, 0.0, 0.5, -1.0])
    advantage = reward - (policy * reward).sum()
    # the exact gradient of E_policy[advantage] in the logits
    exact = policy * (advantage - (policy * advantage).sum())

    generator = torch.Generator().manual_seed(0)
    tokens = torch.multinomial(sampler, 40_000, replacement=True, generator=generator)
    train_logprobs = torch.log(policy)[tokens].unsqueeze(0)
    sample_logprobs = torch.log(sampler)[tokens].unsqueeze(0)
    correction = ImportanceWeights(
        train_logprobs, sample_logprobs, torch.ones_like(train_logprobs), cap=5.0
    )
    assert correction.gap_max > 1.0 and correction.capped_share == 0.0

    corrected = _policy_gradient(logits, tokens, advantage[tokens], correction.weights)
    uncorrected = _policy_gradient(logits, tokens, advantage[tokens], None)
    error = (corrected - exact).norm() / exact.norm()
    bias = (uncorrected - exact).norm() / exact.norm()
    assert error < 0.1, (corrected, exact)
    assert bias > 0.5, (uncorrected, exact)


def test_a_bfloat16_sampler_is_checked_against_the_policy_and_generation() -> None:
    base = {"algorithm": "grpo", "output_dir": "x"}
    with pytest.raises(TrainConfigError, match=r"rollout\.sampler"):
        parse_train_config(
            {**base, "policy": {"dtype": "bfloat16"}, "rollout": {"sampler": "bfloat16"}},
            Path("run.yaml"),
        )
    with pytest.raises(TrainConfigError, match=r"rollout: .*bfloat16 copy is for local"):
        parse_train_config(
            {**base, "rollout": {"sampler": "bfloat16", "generation": "vllm", "temperature": 1.0}},
            Path("run.yaml"),
        )
    exact = parse_train_config(base, Path("run.yaml"))
    assert not exact.rollout.corrected
    copy = parse_train_config({**base, "rollout": {"sampler": "bfloat16"}}, Path("run.yaml"))
    assert copy.rollout.corrected
    off = parse_train_config(
        {**base, "rollout": {"sampler": "bfloat16", "importance_cap": None}}, Path("run.yaml")
    )
    assert off.rollout.inexact_sampler and not off.rollout.corrected


def _bf16_config(checkpoint: Path, output: Path) -> TrainConfig:
    config = tiny_config(checkpoint, output)
    return config.model_copy(
        update={
            "max_steps": 2,
            "save_steps": 1000,
            "rollout": config.rollout.model_copy(update={"sampler": "bfloat16"}),
        }
    )


def test_grpo_samples_from_the_copy_and_logs_the_gap(tiny_checkpoint: Path, tmp_path: Path) -> None:
    config = _bf16_config(tiny_checkpoint, tmp_path / "run")
    users = scripted_users(change=lambda text: len(text) % 7 - 3)
    rollout = Rollout(config, personas=PERSONAS, users=users)
    trainer, rollout_func = build_trainer(config, rollout=rollout)
    trainer.train()

    sampler = rollout_func.pause.sampler
    assert sampler is not None and sampler.refreshes == 2
    assert rollout_func.pause.engine is not None
    assert rollout_func.pause.engine.model is sampler.model
    assert rollout_func.pause.engine.key.dtype == "bfloat16"
    _assert_copy_of(sampler, trainer.model.state_dict())
    assert not trainer.use_vllm, "the vLLM flag is raised only inside scoring and the loss"

    logged = [json.loads(line) for line in (config.output_dir / METRICS_FILE).open()]
    steps = [row for row in logged if "sampling/sampling_logp_difference/mean" in row]
    assert len(steps) == 2
    for row in steps:
        # bfloat16 rounding moves the logprobs (the float32 policy itself sampling would give
        # about 1e-6), but far less than the cap
        assert 1e-3 < row["sampling/sampling_logp_difference/mean"] < 0.5
        assert (
            row["sampling/sampling_logp_difference/max"]
            >= row["sampling/sampling_logp_difference/mean"]
        )
        assert 0 <= row["sampling/capped_share"] < 0.05


def test_grpo_loss_carries_the_importance_weight(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """With the correction, TRL's loss scales with p_train / p_sample (computed from the loss's
    own float32 logprobs, no extra forward pass); without it, the sampler's logprobs are
    ignored."""
    config = _bf16_config(tiny_checkpoint, tmp_path / "run")
    users = scripted_users(change=lambda text: len(text) % 7 - 3)
    rollout = Rollout(config, personas=PERSONAS, users=users)
    trainer, _ = build_trainer(config, rollout=rollout)
    batch = [{"prompt": persona.id} for persona in PERSONAS for _ in range(4)]
    inputs = trainer._generate_and_score_completions(batch)
    assert "old_per_token_logps" not in inputs, "no extra forward pass for the old logprobs"
    if not bool(inputs["advantages"].abs().sum() > 0):
        pytest.skip("every dialogue of the group scored alike; nothing to weigh")

    def loss(sampling_shift: float) -> float:
        shifted = {
            **inputs,
            "sampling_per_token_logps": inputs["sampling_per_token_logps"] + sampling_shift,
        }
        return float(trainer._compute_loss(trainer.model, shifted).detach())

    # a sampler twice as likely to pick every token halves every weight, and so the loss
    assert loss(math.log(2)) == pytest.approx(loss(0.0) / 2, rel=1e-4)
    assert trainer.sampling_gap.pop()["sampling/sampling_logp_difference/mean"] > 0
    trainer.local_correction = False
    assert loss(math.log(2)) == pytest.approx(loss(0.0))


def test_ppo_samples_from_the_copy_and_weights_its_loss(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    config = ppo_config(tiny_checkpoint, tmp_path / "run")
    config = config.model_copy(
        update={"rollout": config.rollout.model_copy(update={"sampler": "bfloat16"})}
    )
    users = scripted_users(change=lambda text: 5 if "you" in text else -5)
    run = PPORun(config, rollout=Rollout(config, personas=PERSONAS, users=users))
    try:
        metrics = [run.step() for _ in range(2)]
        assert run.sampler is not None and run.sampler.refreshes == 2
        assert run.engine is not None and run.engine.model is run.sampler.model
        _assert_copy_of(run.sampler, run.accelerator.unwrap_model(run.learner.policy).state_dict())
    finally:
        run.close()
    for step in metrics:
        assert 1e-3 < step["sampling/sampling_logp_difference/mean"] < 0.5
        assert 0 <= step["sampling/capped_share"] < 0.05
