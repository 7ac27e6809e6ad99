"""PPO with a learned critic on the agent's dialogues: RLVER's headline algorithm.

Read top to bottom, like CleanRL's ``ppo.py``:

1. **Settings**: ``PPOSettings``, the ``ppo:`` block of a training config.
2. **Models**: the policy (actor, loaded as GRPO loads it), the critic (a value head on a
   backbone loaded from the policy's path or its own), an optional frozen reference for KL.
3. **Samples**: token samples (one per agent turn by default, as RLVER did; one per
   dialogue as an option) packed into left-padded tensors whose completions line up at the
   right edge.
4. **Rewards**: the outcome ``max(final, 0) / 100`` on the last token of every sample of the
   dialogue; optionally the per-turn process reward and the format penalty on the last token
   of the turn that earned them; optionally a per-token KL penalty against the reference.
5. **Advantages**: GAE over policy tokens (``advantage: gae``), or the outcome normalised in
   each persona's group with no critic (``advantage: grpo``), then whitened over the batch.
6. **Losses**: clipped surrogate, clipped value loss, entropy, approximate KL, clip fraction.
7. **Update**: epochs of shuffled mini-batches, micro-batches for memory, gradient clipping.
8. **Checkpoints** and **the loop**: rollouts with the live policy, the update while the
   engine is paused, logging, checkpoints, resume.

Tokens with mask 0 (the simulated user's words inside a dialogue sample, and padding) carry no
action, no value target and no loss, everywhere below.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.optim.lr_scheduler import LRScheduler
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_constant_schedule_with_warmup,
)

from rlver_agents.emotion import TerminationReason
from rlver_agents.models.engine import Engine, EngineKey, register_engine, unregister_engine
from rlver_agents.models.records import SamplingParams
from rlver_agents.rewards import episode_rewards, outcome_reward
from training.advantages import broadcast_to_tokens, gae, group_normalized, whiten

if TYPE_CHECKING:
    from rlver_agents.episode import Episode
    from rlver_agents.samples import TokenSample
    from training.config import RewardSettings, TrainConfig
    from training.lockstep import Completion, LockstepScheduler
    from training.rollout import Rollout

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# 1. Settings
# ---------------------------------------------------------------------------------------------


class CriticSettings(BaseModel):
    """Where the critic's backbone comes from, and how it learns."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["policy", "path"] = Field(
        default="policy",
        description="'policy': a value head on a copy of the policy's weights; 'path': a "
        "separate value model loaded from model_path (RLVER's setting).",
    )
    model_path: str | None = Field(
        default=None,
        description="The critic's own checkpoint (any causal LM or a saved critic) for "
        "source 'path'.",
    )
    learning_rate: float = Field(default=5e-6, gt=0)
    warmup_ratio: float = Field(default=0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _path_when_needed(self) -> CriticSettings:
        if self.source == "path" and not self.model_path:
            raise ValueError("ppo.critic.model_path is required when ppo.critic.source is 'path'")
        if self.source == "policy" and self.model_path:
            raise ValueError(
                "ppo.critic.model_path is set but ppo.critic.source is 'policy'; "
                "set source: path to load the critic from it"
            )
        return self


class PPOSettings(BaseModel):
    """The ``ppo:`` block of a training config. Defaults are RLVER's released settings."""

    model_config = ConfigDict(extra="forbid")

    advantage: Literal["gae", "grpo"] = Field(
        default="gae",
        description="'gae': learned critic and GAE; 'grpo': the outcome normalised within each "
        "persona's group, no critic.",
    )
    gamma: float = Field(default=1.0, ge=0, le=1)
    lam: float = Field(default=1.0, ge=0, le=1)
    whiten_advantages: bool = True
    actor_learning_rate: float = Field(default=1e-6, gt=0)
    actor_warmup_ratio: float = Field(default=0.02, ge=0, le=1)
    critic: CriticSettings = Field(default_factory=CriticSettings)
    kl_coef: float = Field(
        default=0.0, ge=0, description="Per-token KL penalty against the frozen start policy."
    )
    clip_ratio: float = Field(default=0.2, gt=0)
    value_clip: float = Field(default=0.5, gt=0)
    entropy_coef: float = Field(default=0.0, ge=0)
    epochs: int = Field(default=1, ge=1)
    mini_batch_size: int = Field(
        default=32,
        ge=1,
        description="Dialogues per optimizer step over all processes (their samples go together).",
    )
    micro_batch_size: int = Field(
        default=4, ge=1, description="Samples per forward pass (gradient accumulation)."
    )
    max_grad_norm: float = Field(default=1.0, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_server_base_url: str | None = None
    vllm_gpu_memory_utilization: float = Field(default=0.3, gt=0.0, le=1.0)
    vllm_tensor_parallel_size: int = Field(default=1, ge=1)
    personas_per_step: int = Field(
        default=32,
        ge=1,
        description="Personas played per step; each gives rollout.group_size dialogues "
        "(RLVER: 32 personas, one dialogue each).",
    )

    @model_validator(mode="after")
    def _kl_needs_gae(self) -> PPOSettings:
        if self.kl_coef > 0 and self.advantage == "grpo":
            raise ValueError(
                "ppo.kl_coef: the KL penalty is paid in the per-token reward, which only "
                "'gae' uses; set kl_coef: 0 with advantage: grpo"
            )
        return self


# ---------------------------------------------------------------------------------------------
# 2. Models
# ---------------------------------------------------------------------------------------------


def _plain_config(path: str, **overrides: object) -> PreTrainedConfig:
    """The model config without ``quantization_config``, which GGUF-made checkpoints keep
    although their weights are plain floats (transformers refuses to train them otherwise)."""
    config = AutoConfig.from_pretrained(path, **overrides)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    return config


def load_critic(
    settings: CriticSettings, policy_path: str, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """The critic: the backbone of a causal LM with a one-output head at every position.

    A causal-LM checkpoint gets a fresh head with zero weights, so every value starts at 0
    (the critic starts with no opinion rather than a random one); a saved critic keeps its head.
    The head's dropout is off: the values the advantages use must be the ones the loss clips to.
    """
    path = settings.model_path if settings.source == "path" else policy_path
    assert path is not None
    config = _plain_config(path, num_labels=1)
    config.classifier_dropout = 0.0
    critic, info = AutoModelForTokenClassification.from_pretrained(
        path, config=config, dtype=dtype, output_loading_info=True
    )
    head = critic.score
    if any(key.startswith("score") for key in info["missing_keys"]):
        with torch.no_grad():
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()
    critic.config.use_cache = False
    return critic.train()


def load_reference(path: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A frozen copy of the starting policy, only needed when ``kl_coef > 0``."""
    reference = AutoModelForCausalLM.from_pretrained(
        path, config=_plain_config(path), dtype=dtype
    ).eval()
    reference.requires_grad_(False)
    return reference


# ---------------------------------------------------------------------------------------------
# 3. Samples as tensors
# ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Token samples packed for one forward pass.

    ``input_ids`` is left-padded so every sample's completion ends at the last column; the
    completion-aligned tensors (``[samples, completion]``) are right-aligned the same way, and
    column ``j`` of them is predicted by the logits at input column ``L - C - 1 + j``.
    """

    input_ids: torch.Tensor  # [N, L]
    attention_mask: torch.Tensor  # [N, L]
    position_ids: torch.Tensor  # [N, L]
    completion_ids: torch.Tensor  # [N, C]
    mask: torch.Tensor  # [N, C] float, 1 on policy tokens
    rollout_logprobs: torch.Tensor  # [N, C] as recorded when sampling (0 where mask 0)

    @property
    def completion_length(self) -> int:
        return self.completion_ids.shape[1]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(tensor.to(device) for tensor in vars(self).values()))

    def select(self, rows: torch.Tensor) -> Batch:
        """The sub-batch of the given rows, trimmed of columns that are padding in all of them."""
        attention = self.attention_mask[rows]
        mask = self.mask[rows]
        keep_inputs = int(attention.sum(dim=1).max())
        present = (mask.sum(dim=0) > 0).nonzero()
        keep_completion = self.completion_length - int(present[0]) if len(present) else 1
        return Batch(
            input_ids=self.input_ids[rows][:, -keep_inputs:],
            attention_mask=attention[:, -keep_inputs:],
            position_ids=self.position_ids[rows][:, -keep_inputs:],
            completion_ids=self.completion_ids[rows][:, -keep_completion:],
            mask=mask[:, -keep_completion:],
            rollout_logprobs=self.rollout_logprobs[rows][:, -keep_completion:],
        )


def collate(samples: Sequence[TokenSample], pad_token_id: int) -> Batch:
    """Left-pad ``prompt + completion`` of every sample; right-align the completions."""
    if not samples:
        raise ValueError("collate: no samples")
    length = max(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    completion = max(len(s.completion_ids) for s in samples)
    n = len(samples)
    input_ids = torch.full((n, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    completion_ids = torch.full((n, completion), pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, completion))
    logprobs = torch.zeros((n, completion))
    for row, sample in enumerate(samples):
        if not sample.prompt_ids:
            raise ValueError(f"collate: sample {row} ({sample.persona_id}) has an empty prompt")
        ids = list(sample.prompt_ids) + list(sample.completion_ids)
        c = len(sample.completion_ids)
        input_ids[row, length - len(ids) :] = torch.tensor(ids)
        attention_mask[row, length - len(ids) :] = 1
        completion_ids[row, completion - c :] = torch.tensor(sample.completion_ids)
        mask[row, completion - c :] = torch.tensor(sample.completion_mask, dtype=torch.float32)
        logprobs[row, completion - c :] = torch.tensor(sample.logprobs, dtype=torch.float32)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return Batch(input_ids, attention_mask, position_ids, completion_ids, mask, logprobs * mask)


# ---------------------------------------------------------------------------------------------
# 4. Rewards
# ---------------------------------------------------------------------------------------------


def policy_segments(mask: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of 1s in a completion mask: one per policy generation."""
    segments: list[tuple[int, int]] = []
    start: int | None = None
    for position, value in enumerate([*mask, 0]):
        if value and start is None:
            start = position
        elif not value and start is not None:
            segments.append((start, position))
            start = None
    return segments


def token_rewards(
    samples: Sequence[TokenSample],
    episodes: dict[tuple[str, int], Episode],
    weights: RewardSettings,
    completion_length: int,
) -> torch.Tensor:
    """Per-token rewards ``[N, C]``, right-aligned like :func:`collate`'s completions.

    Every sample of a dialogue gets the outcome on its last token (RLVER gave every turn the
    dialogue's final emotion). The process reward and format penalty of agent turn ``k`` go on
    the last token of turn ``k``: the turn sample numbered ``k``, or the ``k``-th policy
    segment of a dialogue sample.
    """
    rewards = torch.zeros((len(samples), completion_length))
    per_turn_terms = weights.process != 0 or weights.format != 0
    cache: dict[tuple[str, int], tuple[float, list[float]]] = {}
    for row, sample in enumerate(samples):
        key = (sample.persona_id, sample.sample)
        if key not in cache:
            episode = episodes[key]
            per_turn: list[float] = []
            if per_turn_terms:
                earned = episode_rewards(episode, format_penalty=weights.format_penalty)
                per_turn = [
                    weights.process * process + weights.format * penalty
                    for process, penalty in zip(earned.process, earned.format, strict=True)
                ]
            cache[key] = (weights.outcome * outcome_reward(episode), per_turn)
        outcome, per_turn = cache[key]
        offset = completion_length - len(sample.completion_ids)
        segments = policy_segments(sample.completion_mask)
        if not segments:
            raise ValueError(f"sample {row} ({sample.persona_id}) has no policy token")
        if sample.unit == "turn":
            if sample.turn is None:
                raise ValueError(f"turn sample {row} ({sample.persona_id}) has no turn number")
            ends = {sample.turn - 1: segments[-1][1] - 1}
        else:
            ends = {k: end - 1 for k, (_, end) in enumerate(segments)}
        for turn_index, end in ends.items():
            if turn_index < len(per_turn):
                rewards[row, offset + end] += per_turn[turn_index]
        rewards[row, offset + segments[-1][1] - 1] += outcome
    return rewards


# ---------------------------------------------------------------------------------------------
# Forward passes: policy logprobs (and entropy) and critic values on completion tokens
# ---------------------------------------------------------------------------------------------


def policy_forward(
    model: torch.nn.Module, batch: Batch, temperature: float, *, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities ``[N, C]`` of the completion tokens at the sampling temperature.

    Dividing the logits by the temperature is what makes these comparable with the on-policy
    logprobs the engine recorded; only the last ``C + 1`` positions get logits.
    """
    c = batch.completion_length
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=c + 1,
    ).logits[:, :-1, :]
    logits = logits.float() / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    chosen = log_probs.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return chosen * batch.mask, entropy


def critic_forward(critic: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Values ``[N, C]``: V at the state before each completion token was sampled."""
    c = batch.completion_length
    scores = critic(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
    ).logits
    return scores[:, -c - 1 : -1, 0].float() * batch.mask


# ---------------------------------------------------------------------------------------------
# 5. Advantages
# ---------------------------------------------------------------------------------------------


def compute_advantages(
    settings: PPOSettings,
    rewards: torch.Tensor,
    values: torch.Tensor | None,
    mask: torch.Tensor,
    samples: Sequence[TokenSample],
    outcomes: dict[tuple[str, int], float],
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages, returns)`` over policy tokens; whitened when the settings say so.

    For ``grpo`` the outcomes are normalised over dialogues (one score per dialogue, grouped
    by persona), so a dialogue's weight does not depend on how many turns it has; the returns
    are then unused. ``reduce`` sums over processes so whitening sees the whole batch.
    """
    if settings.advantage == "gae":
        if values is None:
            raise ValueError("advantage 'gae' needs critic values")
        advantages, returns = gae(rewards, values, mask, gamma=settings.gamma, lam=settings.lam)
    else:
        keys = sorted(outcomes)
        normalized = dict(
            zip(
                keys,
                group_normalized([outcomes[k] for k in keys], [k[0] for k in keys]),
                strict=True,
            )
        )
        per_sample = [normalized[(s.persona_id, s.sample)] for s in samples]
        advantages = broadcast_to_tokens(per_sample, mask)
        returns = torch.zeros_like(advantages)
    if settings.whiten_advantages:
        advantages = whiten(advantages, mask, reduce=reduce)
    return advantages, returns


# ---------------------------------------------------------------------------------------------
# 6. Losses
# ---------------------------------------------------------------------------------------------


@dataclass
class PolicyLoss:
    loss: torch.Tensor  # sum over the selected tokens / normaliser (differentiable)
    clipped_tokens: float
    approx_kl_sum: float
    ratio_sum: float


def policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float,
    normaliser: float,
) -> PolicyLoss:
    """The clipped surrogate, token-summed and divided by ``normaliser`` (tokens in the step).

    ``approx_kl`` is the low-variance estimator ``(r - 1) - log r`` (0 when nothing moved);
    a token counts as clipped when the clipped term is the one taken.
    """
    log_ratio = (new_logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_ratio, 1 + clip_ratio)
    per_token = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio) * mask
        was_clipped = (clipped > unclipped).float() * mask
    return PolicyLoss(
        loss=(per_token * mask).sum() / normaliser,
        clipped_tokens=float(was_clipped.sum()),
        approx_kl_sum=float(approx_kl.sum()),
        ratio_sum=float((ratio.detach() * mask).sum()),
    )


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    value_clip: float,
    normaliser: float,
) -> tuple[torch.Tensor, float]:
    """Clipped value loss ``0.5 * max((V - R)^2, (V_clip - R)^2)``; also the clipped count.

    ``V_clip`` keeps the new value within ``value_clip`` of the value at rollout time, so one
    update cannot move the critic far from the values the advantages were computed with.
    """
    clipped_values = old_values + torch.clamp(new_values - old_values, -value_clip, value_clip)
    unclipped_error = (new_values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    per_token = 0.5 * torch.maximum(unclipped_error, clipped_error)
    clipped_count = float(((clipped_error > unclipped_error).float() * mask).sum())
    return (per_token * mask).sum() / normaliser, clipped_count


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over policy tokens: 1 is a perfect critic, <= 0 a useless one."""
    selected = mask.bool()
    target = returns[selected]
    if target.numel() < 2 or float(target.var()) < 1e-8:
        return float("nan")  # constant returns: there is no variance to explain
    return float(1 - (target - values[selected]).var() / target.var())


# ---------------------------------------------------------------------------------------------
# 7. Update
# ---------------------------------------------------------------------------------------------


@dataclass
class RolloutBuffer:
    """Everything the update needs, computed once per step with the weights that sampled.

    ``dialogue`` maps each sample row to its dialogue, so a mini-batch takes whole dialogues.
    """

    batch: Batch
    dialogue: list[int]
    old_logprobs: torch.Tensor
    old_values: torch.Tensor | None
    advantages: torch.Tensor
    returns: torch.Tensor


@dataclass
class Learner:
    """The models being trained and their optimizers, as the accelerator prepared them."""

    accelerator: Accelerator
    policy: torch.nn.Module
    actor_optimizer: torch.optim.Optimizer
    actor_scheduler: LRScheduler
    critic: torch.nn.Module | None = None
    critic_optimizer: torch.optim.Optimizer | None = None
    critic_scheduler: LRScheduler | None = None


@dataclass
class UpdateStats:
    """Token-summed statistics of one update, averaged at the end."""

    tokens: float = 0.0
    policy_loss: float = 0.0
    value_loss: float = 0.0
    entropy: float = 0.0
    approx_kl: float = 0.0
    clipped: float = 0.0
    value_clipped: float = 0.0
    ratio: float = 0.0
    actor_grad_norm: float = 0.0
    critic_grad_norm: float = 0.0
    optimizer_steps: int = 0
    critic_seconds: float = 0.0
    actor_seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        tokens = max(self.tokens, 1.0)
        steps = max(self.optimizer_steps, 1)
        return {
            "policy_loss": self.policy_loss / tokens,
            "value_loss": self.value_loss / tokens,
            "entropy": self.entropy / tokens,
            "approx_kl": self.approx_kl / tokens,
            "clip_fraction": self.clipped / tokens,
            "value_clip_fraction": self.value_clipped / tokens,
            "ratio_mean": self.ratio / tokens,
            "actor_grad_norm": self.actor_grad_norm / steps,
            "critic_grad_norm": self.critic_grad_norm / steps,
            "time_critic_update_s": self.critic_seconds,
            "time_actor_update_s": self.actor_seconds,
        }


def minibatches(dialogue: Sequence[int], size: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffled groups of sample rows, ``size`` whole dialogues per group."""
    dialogues = sorted(set(dialogue))
    order = torch.randperm(len(dialogues), generator=generator).tolist()
    groups: list[list[int]] = []
    for start in range(0, len(order), size):
        chosen = {dialogues[i] for i in order[start : start + size]}
        groups.append([row for row, d in enumerate(dialogue) if d in chosen])
    return groups


def _micro(rows: list[int], size: int, count: int) -> Iterator[tuple[list[int], bool]]:
    """``count`` micro-batches of ``rows``; beyond the real ones, repeats that only sync.

    Every process must run the same number of backward passes (DDP and FSDP reduce gradients
    in them), so a process with fewer samples repeats its first micro-batch with weight 0.
    """
    chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
    for index in range(count):
        if index < len(chunks):
            yield chunks[index], True
        else:
            yield chunks[0], False


def ppo_update(
    learner: Learner,
    buffer: RolloutBuffer,
    settings: PPOSettings,
    temperature: float,
    generator: torch.Generator,
) -> dict[str, float]:
    """``epochs`` passes of shuffled mini-batches: one critic step and one actor step each."""
    accelerator = learner.accelerator
    stats = UpdateStats()
    for _ in range(settings.epochs):
        per_process = settings.mini_batch_size // accelerator.num_processes
        for rows in minibatches(buffer.dialogue, per_process, generator):
            sub_mask = buffer.batch.mask[rows]
            local = torch.tensor(
                [float(sub_mask.sum()), math.ceil(len(rows) / settings.micro_batch_size)]
            )
            totals = accelerator.reduce(local.to(accelerator.device), reduction="sum")
            most = accelerator.gather(local[1:].to(accelerator.device)).max()
            normaliser = max(float(totals[0]), 1.0)
            count = int(most)
            if learner.critic is not None:
                started = time.perf_counter()
                _critic_step(learner, buffer, rows, settings, normaliser, count, stats)
                stats.critic_seconds += time.perf_counter() - started
            started = time.perf_counter()
            _actor_step(learner, buffer, rows, settings, temperature, normaliser, count, stats)
            stats.actor_seconds += time.perf_counter() - started
            stats.optimizer_steps += 1
    return stats.summary()


def _critic_step(
    learner: Learner,
    buffer: RolloutBuffer,
    rows: list[int],
    settings: PPOSettings,
    normaliser: float,
    count: int,
    stats: UpdateStats,
) -> None:
    assert learner.critic is not None and learner.critic_optimizer is not None
    assert buffer.old_values is not None and learner.critic_scheduler is not None
    accelerator = learner.accelerator
    for micro_rows, real in _micro(rows, settings.micro_batch_size, count):
        index = torch.tensor(micro_rows)
        micro = buffer.batch.select(index).to(accelerator.device)
        c = micro.completion_length
        values = critic_forward(learner.critic, micro)
        loss, clipped = value_loss(
            values,
            buffer.old_values[index][:, -c:].to(accelerator.device),
            buffer.returns[index][:, -c:].to(accelerator.device),
            micro.mask,
            settings.value_clip,
            normaliser,
        )
        accelerator.backward(loss if real else loss * 0.0)
        if real:
            stats.value_loss += float(loss.detach()) * normaliser
            stats.value_clipped += clipped
    norm = accelerator.clip_grad_norm_(learner.critic.parameters(), settings.max_grad_norm)
    stats.critic_grad_norm += float(norm)
    learner.critic_optimizer.step()
    learner.critic_scheduler.step()
    learner.critic_optimizer.zero_grad(set_to_none=True)


def _actor_step(
    learner: Learner,
    buffer: RolloutBuffer,
    rows: list[int],
    settings: PPOSettings,
    temperature: float,
    normaliser: float,
    count: int,
    stats: UpdateStats,
) -> None:
    accelerator = learner.accelerator
    for micro_rows, real in _micro(rows, settings.micro_batch_size, count):
        index = torch.tensor(micro_rows)
        micro = buffer.batch.select(index).to(accelerator.device)
        c = micro.completion_length
        logprobs, entropy = policy_forward(learner.policy, micro, temperature, with_entropy=True)
        assert entropy is not None
        surrogate = policy_loss(
            logprobs,
            buffer.old_logprobs[index][:, -c:].to(accelerator.device),
            buffer.advantages[index][:, -c:].to(accelerator.device),
            micro.mask,
            settings.clip_ratio,
            normaliser,
        )
        entropy_sum = (entropy * micro.mask).sum()
        loss = surrogate.loss - settings.entropy_coef * entropy_sum / normaliser
        accelerator.backward(loss if real else loss * 0.0)
        if real:
            stats.tokens += float(micro.mask.sum())
            stats.policy_loss += float(surrogate.loss.detach()) * normaliser
            stats.entropy += float(entropy_sum.detach())
            stats.approx_kl += surrogate.approx_kl_sum
            stats.clipped += surrogate.clipped_tokens
            stats.ratio += surrogate.ratio_sum
    norm = accelerator.clip_grad_norm_(learner.policy.parameters(), settings.max_grad_norm)
    stats.actor_grad_norm += float(norm)
    learner.actor_optimizer.step()
    learner.actor_scheduler.step()
    learner.actor_optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def score_rollout(
    learner: Learner,
    reference: torch.nn.Module | None,
    batch: Batch,
    temperature: float,
    micro_batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict[str, float]]:
    """Old logprobs, values and reference logprobs ``[N, C]`` with the weights that sampled.

    The old logprobs are recomputed rather than taken from the rollout so the ratio compares
    two passes of the same code; the gap to the recorded ones is logged as a check.
    """
    device = learner.accelerator.device
    n, c = batch.completion_ids.shape
    old = torch.zeros(n, c)
    values = torch.zeros(n, c) if learner.critic is not None else None
    ref = torch.zeros(n, c) if reference is not None else None
    seconds = {"time_critic_score_s": 0.0, "time_actor_score_s": 0.0}
    for start in range(0, n, micro_batch_size):
        rows = torch.arange(start, min(start + micro_batch_size, n))
        micro = batch.select(rows).to(device)
        width = micro.completion_length
        started = time.perf_counter()
        logprobs, _ = policy_forward(learner.policy, micro, temperature)
        old[rows, -width:] = logprobs.cpu()
        if ref is not None and reference is not None:
            ref_logprobs, _ = policy_forward(reference, micro, temperature)
            ref[rows, -width:] = ref_logprobs.cpu()
        seconds["time_actor_score_s"] += time.perf_counter() - started
        if values is not None and learner.critic is not None:
            started = time.perf_counter()
            values[rows, -width:] = critic_forward(learner.critic, micro).cpu()
            seconds["time_critic_score_s"] += time.perf_counter() - started
    return old, values, ref, seconds


# ---------------------------------------------------------------------------------------------
# 8. Checkpoints
# ---------------------------------------------------------------------------------------------

CHECKPOINT_PREFIX = "checkpoint-"
ACTOR_DIR = "actor"
CRITIC_DIR = "critic"
STATE_DIR = "state"


def last_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint with the highest step in ``output_dir`` that finished writing."""
    if not output_dir.is_dir():
        return None
    done = [
        path
        for path in output_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
        and (path / STATE_DIR).is_dir()
        and (path / "trainer_state.json").is_file()
    ]
    return max(done, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)), default=None)


def export_model(
    accelerator: Accelerator,
    model: torch.nn.Module,
    target: Path,
    tokenizer: PreTrainedTokenizerBase | None,
) -> Path:
    """A plain Hugging Face checkpoint (with the tokenizer and its chat template if given).

    A LoRA adapter is merged into a copy first, so ``rlver eval`` and vLLM load the directory
    as an ordinary model while training continues on the adapter.
    """
    unwrapped = accelerator.unwrap_model(model)
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        if hasattr(unwrapped, "merge_and_unload"):
            import copy

            unwrapped = copy.deepcopy(unwrapped).merge_and_unload()
            state = None
        unwrapped.save_pretrained(target, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(target)
    accelerator.wait_for_everyone()
    return target


def save_checkpoint(
    learner: Learner,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: Path,
    step: int,
    keep: int | None,
) -> Path:
    """``checkpoint-<step>/``: the actor and critic as plain checkpoints, and ``state/``
    (accelerate's: every model, optimizer, scheduler and random state) to resume from."""
    target = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    export_model(learner.accelerator, learner.policy, target / ACTOR_DIR, tokenizer)
    if learner.critic is not None:
        export_model(learner.accelerator, learner.critic, target / CRITIC_DIR, None)
    learner.accelerator.save_state(str(target / STATE_DIR))
    if learner.accelerator.is_main_process:
        (target / "trainer_state.json").write_text(json.dumps({"step": step}) + "\n")
        if keep is not None:
            finished = sorted(
                (p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p != target),
                key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)),
            )
            for stale in finished[: max(len(finished) - (keep - 1), 0)]:
                shutil.rmtree(stale)
    learner.accelerator.wait_for_everyone()
    return target


# ---------------------------------------------------------------------------------------------
# 9. The loop
# ---------------------------------------------------------------------------------------------


def step_personas(persona_ids: Sequence[str], step: int, count: int, seed: int) -> list[str]:
    """The personas of ``step``: passes over the split, each pass in its own shuffled order.

    A function of the step alone, so a resumed run plays exactly what the original would have.
    """
    ids = sorted(persona_ids)
    chosen: list[str] = []
    position = step * count
    while len(chosen) < count:
        epoch, offset = divmod(position, len(ids))
        order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed + epoch))
        take = min(count - len(chosen), len(ids) - offset)
        chosen += [ids[i] for i in order[offset : offset + take].tolist()]
        position += take
    return chosen


def _step_seed(seed: int, step: int, process: int) -> int:
    digest = hashlib.blake2b(f"ppo:{seed}:{step}:{process}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") % (2**31)


ExtraReward = Callable[["Episode"], float]
"""An extra outcome term per dialogue (tests and experiments), added to the outcome reward."""


class PPORun:
    """One PPO run: the models, the rollout bridge, and the per-step loop of :meth:`step`."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        rollout: Rollout | None = None,
        extra_reward: ExtraReward | None = None,
    ) -> None:
        from training.grpo import load_policy
        from training.rollout import Rollout as RolloutBridge

        assert config.ppo is not None
        self.config = config
        self.settings = config.ppo
        self.extra_reward = extra_reward
        self.accelerator = Accelerator(
            cpu=config.use_cpu, mixed_precision="bf16" if config.bf16 else "no"
        )
        set_seed(config.seed)
        self.rollout = rollout or RolloutBridge(config)
        processes = self.accelerator.num_processes
        for name in ("personas_per_step", "mini_batch_size"):
            if getattr(self.settings, name) % processes:
                raise ValueError(
                    f"ppo.{name} ({getattr(self.settings, name)}) must divide evenly over "
                    f"{processes} processes"
                )
        self.temperature = config.rollout.temperature
        if config.policy.lora is not None:
            raise ValueError("policy.lora: PPO here trains full weights; remove the lora block")
        path = config.policy.path()
        policy, self.tokenizer = load_policy(config)
        policy.config.use_cache = False
        if config.policy.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        dtype = getattr(torch, config.policy.dtype)
        critic = None
        if self.settings.advantage == "gae":
            critic = load_critic(self.settings.critic, path, dtype)
            if config.policy.gradient_checkpointing:
                critic.gradient_checkpointing_enable()
        self.reference = load_reference(path, dtype) if self.settings.kl_coef > 0 else None
        dialogues = self.settings.personas_per_step * config.rollout.group_size
        updates = (
            config.max_steps
            * self.settings.epochs
            * math.ceil(dialogues / self.settings.mini_batch_size)
        )
        actor_optimizer = torch.optim.AdamW(
            policy.parameters(),
            lr=self.settings.actor_learning_rate,
            weight_decay=self.settings.weight_decay,
        )
        actor_scheduler = get_constant_schedule_with_warmup(
            actor_optimizer, math.ceil(self.settings.actor_warmup_ratio * updates)
        )
        prepared = [policy, actor_optimizer]
        critic_optimizer = critic_scheduler = None
        if critic is not None:
            critic_optimizer = torch.optim.AdamW(
                critic.parameters(),
                lr=self.settings.critic.learning_rate,
                weight_decay=self.settings.weight_decay,
            )
            critic_scheduler = get_constant_schedule_with_warmup(
                critic_optimizer, math.ceil(self.settings.critic.warmup_ratio * updates)
            )
            prepared += [critic, critic_optimizer]
        prepared = list(self.accelerator.prepare(*prepared))
        self.accelerator.register_for_checkpointing(actor_scheduler)
        if critic_scheduler is not None:
            self.accelerator.register_for_checkpointing(critic_scheduler)
        if self.reference is not None:
            self.reference.to(self.accelerator.device)
        self.learner = Learner(
            accelerator=self.accelerator,
            policy=prepared[0],
            actor_optimizer=prepared[1],
            actor_scheduler=actor_scheduler,
            critic=prepared[2] if critic is not None else None,
            critic_optimizer=prepared[3] if critic is not None else None,
            critic_scheduler=critic_scheduler,
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.engine: Engine | None = None
        self.vllm: Any = None
        self.step_index = 0
        self.writer: Any = None
        if config.logging.tensorboard and self.accelerator.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(config.output_dir / "runs"))

    # --- resume ------------------------------------------------------------------------------

    def resume(self) -> int:
        """Load the last checkpoint of ``output_dir`` if resuming; returns the next step."""
        last = last_checkpoint(self.config.output_dir) if self.config.resume else None
        if last is not None:
            self.accelerator.load_state(str(last / STATE_DIR))
            self.step_index = json.loads((last / "trainer_state.json").read_text())["step"]
            self.generator.manual_seed(self.config.seed + self.step_index)
            _log.info("resumed from %s at step %d", last, self.step_index)
        return self.step_index

    # --- rollouts ----------------------------------------------------------------------------

    def _engine(self, width: int) -> tuple[Engine, LockstepScheduler | None]:
        """The live engine serving ``live:policy``: the trainer's model, or vLLM in lockstep."""
        from training.lockstep import LockstepEngine, LockstepScheduler
        from training.rollout import POLICY_ENGINE

        model = self.accelerator.unwrap_model(self.learner.policy)
        if self.config.rollout.generation == "local":
            if self.engine is None:
                self.engine = register_engine(
                    Engine.from_model(model, self.tokenizer, name=POLICY_ENGINE)
                )
            return self.engine, None
        scheduler = LockstepScheduler(
            self._vllm_generate, _all_done, width=width, filler=[self.tokenizer.eos_token_id]
        )
        sampling = SamplingParams(
            temperature=self.config.rollout.temperature,
            top_p=self.config.rollout.top_p,
            max_new_tokens=self.config.rollout.max_new_tokens,
        )
        key = EngineKey(f"live:{POLICY_ENGINE}", self.config.policy.dtype, str(model.device))
        engine = LockstepEngine(
            key, model, self.tokenizer, scheduler, sampling, policy_version=self.step_index
        )
        self.engine = register_engine(engine)
        return engine, scheduler

    def _vllm_generate(self, prompts: list[list[int]]) -> list[Completion]:
        """TRL's vLLM backend (colocated or a server), created on first use."""
        from training.lockstep import Completion

        if self.vllm is None:
            from trl.generation.vllm_generation import VLLMGeneration

            self.vllm = VLLMGeneration(
                self.learner.policy,
                self.accelerator,
                self.tokenizer,
                mode=self.settings.vllm_mode,
                server_base_url=self.settings.vllm_server_base_url,
                tensor_parallel_size=self.settings.vllm_tensor_parallel_size,
                gpu_memory_utilization=self.settings.vllm_gpu_memory_utilization,
                temperature=self.config.rollout.temperature,
                top_p=self.config.rollout.top_p,
                max_completion_length=self.config.rollout.max_new_tokens,
            )
            self.vllm.sync_weights()
        _, completion_ids, logprobs, _ = self.vllm.generate(
            prompts=prompts, images=None, num_generations=1
        )
        return [
            Completion(list(ids), [float(token[0]) for token in lps])
            for ids, lps in zip(completion_ids, logprobs, strict=True)
        ]

    def play(self) -> list[Episode]:
        """This process's share of the step's dialogues, played with the current policy."""
        from training.rollout import plan_jobs

        group = self.config.rollout.group_size
        everyone = step_personas(
            list(self.rollout.personas),
            self.step_index,
            self.settings.personas_per_step,
            self.config.seed,
        )
        mine = everyone[self.accelerator.process_index :: self.accelerator.num_processes]
        jobs = plan_jobs([pid for pid in mine for _ in range(group)], self.rollout.personas)
        _, scheduler = self._engine(len(jobs))
        seed = _step_seed(self.config.seed, self.step_index, self.accelerator.process_index)
        return asyncio.run(self.rollout.play(jobs, seed, scheduler=scheduler))

    # --- one step ----------------------------------------------------------------------------

    def samples_of(self, episodes: Sequence[Episode]) -> list[TokenSample]:
        """The training samples of the scored dialogues, in the configured unit."""
        from rlver_agents.samples import dialogue_sample, turn_samples

        samples: list[TokenSample] = []
        for episode in episodes:
            if not episode.ok:
                continue
            if self.config.unit == "turn":
                samples += turn_samples(episode)
            else:
                samples.append(dialogue_sample(episode))
        if self.config.rollout.mask_truncated:
            samples = [
                s.model_copy(update={"completion_mask": [0] * len(s.completion_mask)})
                if s.truncated
                else s
                for s in samples
            ]
        return samples

    def _episode_stats(self, episodes: Sequence[Episode]) -> dict[str, float]:
        """Dialogue statistics summed over every process, as ``rollout/...`` rates and means."""
        scored = [e for e in episodes if e.ok]
        local = torch.tensor(
            [
                len(episodes),
                len(scored),
                sum(e.termination == TerminationReason.SUCCESS for e in scored),
                sum(e.termination == TerminationReason.FAILURE for e in scored),
                sum(e.final_score or 0 for e in scored),
                sum(e.num_turns for e in scored),
            ],
            dtype=torch.float64,
        )
        total = self.accelerator.reduce(local.to(self.accelerator.device), "sum").tolist()
        dialogues, count, success, failure, score, turns = total
        count = max(count, 1.0)
        return {
            "rollout/final_score_mean": score / count,
            "rollout/success_rate": success / count,
            "rollout/failure_rate": failure / count,
            "rollout/turns_mean": turns / count,
            "rollout/errored": dialogues - count if total[1] else dialogues,
        }

    def step(self) -> dict[str, float]:
        """Rollout, rewards, advantages and the update; returns the step's metrics."""
        config, settings = self.config, self.settings
        started = time.perf_counter()
        episodes = self.play()
        rollout_seconds = time.perf_counter() - started
        stats = self._episode_stats(episodes)
        for episode in episodes:
            if not episode.ok:
                _log.warning(
                    "dialogue %s/%d errored and is left out of the update: %s",
                    episode.persona_id,
                    episode.sample,
                    episode.error,
                )
        scored = {(e.persona_id, e.sample): e for e in episodes if e.ok}
        samples = self.samples_of(episodes)
        if not samples:
            raise RuntimeError(
                f"step {self.step_index}: every dialogue errored; nothing to learn from "
                f"(first error: {episodes[0].error if episodes else 'no dialogues'})"
            )
        batch = collate(samples, self.tokenizer.pad_token_id)

        old_logprobs, values, ref_logprobs, score_seconds = score_rollout(
            self.learner, self.reference, batch, self.temperature, settings.micro_batch_size
        )
        rewards = token_rewards(samples, scored, config.rewards, batch.completion_length)
        outcomes = {key: config.rewards.outcome * outcome_reward(e) for key, e in scored.items()}
        if self.extra_reward is not None:
            extra = {key: self.extra_reward(e) for key, e in scored.items()}
            outcomes = {key: outcomes[key] + extra[key] for key in outcomes}
            for row, sample in enumerate(samples):
                last = batch.completion_length - len(sample.completion_ids)
                last += policy_segments(sample.completion_mask)[-1][1] - 1
                rewards[row, last] += extra[(sample.persona_id, sample.sample)]
        if ref_logprobs is not None:
            rewards -= settings.kl_coef * (old_logprobs - ref_logprobs) * batch.mask
        advantages, returns = compute_advantages(
            settings,
            rewards,
            values,
            batch.mask,
            samples,
            outcomes,
            reduce=lambda t: self.accelerator.reduce(t.to(self.accelerator.device), "sum").cpu(),
        )
        buffer = RolloutBuffer(
            batch=batch,
            dialogue=[list(scored).index((s.persona_id, s.sample)) for s in samples],
            old_logprobs=old_logprobs,
            old_values=values,
            advantages=advantages,
            returns=returns,
        )
        pause = self.engine.pause(bump_version=True) if self.engine else contextlib.nullcontext()
        with pause:
            update = ppo_update(self.learner, buffer, settings, self.temperature, self.generator)
        if self.vllm is not None:
            self.vllm.sync_weights()
        self.step_index += 1
        mask = batch.mask.bool()
        metrics = {
            **stats,
            "reward/outcome_mean": sum(outcomes.values()) / max(len(outcomes), 1),
            "reward/token_sum_mean": float(rewards.sum(dim=1).mean()),
            "samples": float(len(samples)),
            "policy_tokens": float(batch.mask.sum()),
            "rollout_logprob_gap_max": float(
                (old_logprobs - batch.rollout_logprobs)[mask].abs().max()
            ),
            **{f"ppo/{name}": value for name, value in update.items() if "time" not in name},
            "time/rollout_s": rollout_seconds,
            "time/critic_s": score_seconds["time_critic_score_s"] + update["time_critic_update_s"],
            "time/update_s": score_seconds["time_actor_score_s"] + update["time_actor_update_s"],
            "lr/actor": self.learner.actor_scheduler.get_last_lr()[0],
        }
        if values is not None and self.learner.critic_scheduler is not None:
            metrics["ppo/explained_variance"] = explained_variance(values, returns, batch.mask)
            metrics["ppo/value_mean"] = float(values[mask].mean())
            metrics["lr/critic"] = self.learner.critic_scheduler.get_last_lr()[0]
        if self.reference is not None and ref_logprobs is not None:
            metrics["ppo/kl_to_reference"] = float((old_logprobs - ref_logprobs)[mask].mean())
        metrics["time/step_s"] = time.perf_counter() - started
        return metrics

    def log(self, metrics: dict[str, float]) -> None:
        """Console, ``output_dir/metrics.jsonl`` (as GRPO writes it) and TensorBoard."""
        if not self.accelerator.is_main_process:
            return
        from training.grpo import METRICS_FILE

        record = {"step": self.step_index, **metrics}
        path = self.config.output_dir / METRICS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        if self.step_index % self.config.logging.logging_steps == 0:
            shown = (
                "rollout/final_score_mean",
                "ppo/policy_loss",
                "ppo/value_loss",
                "ppo/approx_kl",
                "ppo/clip_fraction",
                "ppo/entropy",
                "ppo/explained_variance",
                "time/step_s",
            )
            _log.info(
                "step %d  %s",
                self.step_index,
                "  ".join(f"{k.split('/')[-1]}={metrics[k]:.4g}" for k in shown if k in metrics),
            )
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, self.step_index)

    def close(self) -> None:
        if self.engine is not None:
            unregister_engine(self.engine)
        if self.writer is not None:
            self.writer.close()


def _all_done(done: bool) -> bool:
    return all(gather_object([done]))


def train_ppo(
    config: TrainConfig,
    *,
    rollout: Rollout | None = None,
    extra_reward: ExtraReward | None = None,
) -> Path:
    """Train with PPO, resuming from the last checkpoint in ``output_dir`` when ``resume``.

    Returns ``output_dir/final``: the actor as a plain checkpoint with its tokenizer, the same
    kind of directory GRPO writes, which ``rlver eval`` and vLLM load as they are.
    """
    from training.grpo import FINAL_DIR

    run = PPORun(config, rollout=rollout, extra_reward=extra_reward)
    try:
        run.resume()
        deadline = (
            time.monotonic() + 60 * config.time_limit_minutes if config.time_limit_minutes else None
        )
        while run.step_index < config.max_steps:
            metrics = run.step()
            run.log(metrics)
            last = run.step_index == config.max_steps
            out_of_time = deadline is not None and time.monotonic() > deadline
            if run.step_index % config.save_steps == 0 or last or out_of_time:
                save_checkpoint(
                    run.learner,
                    run.tokenizer,
                    config.output_dir,
                    run.step_index,
                    config.save_total_limit,
                )
            if out_of_time:
                _log.info("time limit reached after step %d", run.step_index)
                break
        return export_model(
            run.accelerator, run.learner.policy, config.output_dir / FINAL_DIR, run.tokenizer
        )
    finally:
        run.close()
