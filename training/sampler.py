"""The weights the rollout samples from: the trained policy itself, or a bfloat16 copy of it.

A bfloat16 copy reads half the bytes per decode step. It is refreshed from the trained
weights after every optimizer step, while the live engine is paused, so every rollout samples
the current policy up to bfloat16 rounding. The trainers take the old logprobs from a float32
forward pass and weight each policy token's loss by the truncated ratio
``min(p_train / p_sample, cap)`` (:class:`ImportanceWeights`), the correction that TRL's vLLM
path and verl's rollout correction apply to a sampler that is not the trainer. On a 2-core
CPU it decodes 1.06-1.34x faster and the step gains at most 1.03x (``benchmarks/step_time.py``),
so the CPU configs keep the exact sampler.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import AutoModelForCausalLM


def _plain_weights(policy: torch.nn.Module) -> torch.nn.Module:
    """The policy as one plain model: a LoRA adapter is merged into a copy of its base."""
    if hasattr(policy, "merge_and_unload"):
        return copy.deepcopy(policy).merge_and_unload()
    return policy


class BFloat16Sampler:
    """A bfloat16 copy of ``policy`` for the live engine to sample from.

    The copy is built afresh from the policy's config and weights, not deep-copied: a trainer
    wraps its model's ``forward`` (accelerate's output casting, for one), and a deep copy would
    keep calling the original's.
    """

    def __init__(self, policy: torch.nn.Module) -> None:
        self.policy = policy
        plain: Any = _plain_weights(policy)
        model: Any = AutoModelForCausalLM.from_config(
            copy.deepcopy(plain.config), dtype=torch.bfloat16
        )
        model.generation_config = copy.deepcopy(plain.generation_config)
        self.model = model.to(next(plain.parameters()).device).eval()
        self.model.requires_grad_(False)
        self._copy_weights()
        self.refreshes = 0

    def refresh(self) -> None:
        """Copy the trained weights in, rounded to bfloat16 (call while the engine is paused)."""
        self._copy_weights()
        self.refreshes += 1

    @torch.no_grad()
    def _copy_weights(self) -> None:
        source = _plain_weights(self.policy).state_dict()
        target = self.model.state_dict()
        missing = sorted(set(target) - set(source))
        if missing:
            raise RuntimeError(f"sampler refresh: the policy has no weights for {missing[:3]}")
        for name, tensor in target.items():
            tensor.copy_(source[name])


def sampling_model(policy: torch.nn.Module, sampler: BFloat16Sampler | None) -> Any:
    """What the live engine serves: the sampling copy if there is one, else the policy."""
    return sampler.model if sampler is not None else policy


class ImportanceWeights:
    """Per-token truncated importance weights and what they say about the sampler's gap."""

    def __init__(
        self,
        train_logprobs: torch.Tensor,
        sample_logprobs: torch.Tensor,
        mask: torch.Tensor,
        cap: float | None,
    ) -> None:
        gap = (train_logprobs - sample_logprobs) * mask
        selected = mask.bool()
        self.weights: torch.Tensor | None = None
        """``min(p_train / p_sample, cap)`` on policy tokens, 0 elsewhere; None without a cap."""
        self.capped_share = 0.0
        if cap is not None:
            ratio = torch.exp(gap)
            self.weights = torch.clamp(ratio, max=cap) * mask
            capped = (ratio >= cap)[selected]
            self.capped_share = float(capped.float().mean()) if capped.numel() else 0.0
        absolute = gap.abs()[selected]
        self.tokens = absolute.numel()
        self.gap_mean = float(absolute.mean()) if self.tokens else 0.0
        self.gap_max = float(absolute.max()) if self.tokens else 0.0

    def metrics(self) -> dict[str, float]:
        """The gap (mean and max absolute log-prob difference) and the share at the cap,
        under the names TRL's GRPO logs them."""
        return {
            "sampling/sampling_logp_difference/mean": self.gap_mean,
            "sampling/sampling_logp_difference/max": self.gap_max,
            "sampling/capped_share": self.capped_share,
        }


class SamplingGap:
    """The gap over one optimizer step's micro-batches: token-weighted mean, max, capped share."""

    def __init__(self) -> None:
        self._parts: list[ImportanceWeights] = []

    def add(self, weights: ImportanceWeights) -> None:
        self._parts.append(weights)

    def pop(self) -> dict[str, float]:
        """The step's figures under :meth:`ImportanceWeights.metrics`' names; {} if none."""
        parts, self._parts = self._parts, []
        tokens = sum(p.tokens for p in parts)
        if not tokens:
            return {}
        return {
            "sampling/sampling_logp_difference/mean": sum(p.gap_mean * p.tokens for p in parts)
            / tokens,
            "sampling/sampling_logp_difference/max": max(p.gap_max for p in parts),
            "sampling/capped_share": sum(p.capped_share * p.tokens for p in parts) / tokens,
        }
