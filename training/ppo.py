"""PPO with a learned critic on the agent's dialogues: RLVER's headline algorithm.

Read top to bottom, like CleanRL's ``ppo.py``; the settings are :mod:`training.ppo_config`,
loading and saving the models :mod:`training.policy`, the vLLM lockstep
:mod:`training.lockstep`, and the advantage arithmetic :mod:`training.advantages`.

1. **Samples**: token samples (one per agent turn by default, as RLVER did; one per
   dialogue as an option) packed into left-padded tensors whose completions line up at the
   right edge.
2. **Rewards**: the outcome ``max(final, 0) / 100`` on the last token of every sample of the
   dialogue; optionally the per-turn process reward and the format penalty on the last token
   of the turn that earned them; optionally a per-token KL penalty against the reference.
3. **Advantages**: GAE over policy tokens (``advantage: gae``), or the outcome normalised in
   each persona's group with no critic (``advantage: grpo``), then whitened over the batch.
4. **Losses**: clipped surrogate, clipped value loss, entropy, approximate KL, clip fraction.
5. **Update**: epochs of shuffled mini-batches, micro-batches for memory, gradient clipping.
6. **The loop**: :meth:`PPORun.step` is rollout → rewards → advantages → update → log;
   :func:`train_ppo` adds checkpoints and resume.

Tokens with mask 0 (the simulated user's words inside a dialogue sample, and padding) carry no
action, no value target and no loss, everywhere below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_constant_schedule_with_warmup

from rlver_agents.episodes.episode import Episode
from rlver_agents.episodes.samples import TokenSample, dialogue_sample, turn_samples
from rlver_agents.evaluation.rewards import episode_rewards, outcome_reward
from rlver_agents.models.engine import Engine, unregister_engine
from rlver_agents.seeds import stable_seed
from training.advantages import broadcast_to_tokens, gae, group_normalized, whiten
from training.config import RewardSettings, TrainConfig
from training.lockstep import (
    Completion,
    LockstepScheduler,
    live_engine,
    lockstep_engine,
    vllm_completions,
)
from training.policy import (
    FINAL_DIR,
    STATE_DIR,
    append_metrics,
    checkpoint_step,
    export_model,
    last_checkpoint,
    load_critic,
    load_policy,
    load_reference,
    save_checkpoint,
)
from training.ppo_config import PPOSettings
from training.rollout import Rollout, plan_jobs, rollout_stats
from training.sampler import BFloat16Sampler, ImportanceWeights, sampling_model

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# 1. Samples as tensors
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
# 2. Rewards
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


ExtraOutcome = Callable[[Episode], float]
"""An extra outcome term per dialogue (tests and experiments), added to the outcome reward."""

DialogueKey = tuple[str, int]
"""``(persona_id, sample)``: one dialogue of a step."""


def dialogue_outcomes(
    episodes: dict[DialogueKey, Episode],
    weights: RewardSettings,
    extra_outcome: ExtraOutcome | None = None,
) -> dict[DialogueKey, float]:
    """Each scored dialogue's outcome term: ``weights.outcome * max(final, 0) / 100``, plus
    ``extra_outcome`` when given. Computed once a step: :func:`token_rewards` puts it on the
    last tokens, the ``grpo`` advantage normalises it within each persona's group."""
    outcomes = {key: weights.outcome * outcome_reward(e) for key, e in episodes.items()}
    if extra_outcome is not None:
        outcomes = {key: outcomes[key] + extra_outcome(e) for key, e in episodes.items()}
    return outcomes


def token_rewards(
    samples: Sequence[TokenSample],
    episodes: dict[DialogueKey, Episode],
    weights: RewardSettings,
    completion_length: int,
    outcomes: dict[DialogueKey, float],
) -> torch.Tensor:
    """Per-token rewards ``[N, C]``, right-aligned like :func:`collate`'s completions.

    Every sample of a dialogue gets its outcome term (``outcomes``, from
    :func:`dialogue_outcomes`) on its last token (RLVER gave every turn the dialogue's final
    emotion). The process reward and format penalty of agent turn ``k`` go on
    the last token of turn ``k``: the turn sample numbered ``k``, or the ``k``-th policy
    segment of a dialogue sample.
    """
    rewards = torch.zeros((len(samples), completion_length))
    per_turn_terms = weights.process != 0 or weights.format != 0
    per_turn_of: dict[DialogueKey, list[float]] = {}
    for row, sample in enumerate(samples):
        key = (sample.persona_id, sample.sample)
        if key not in per_turn_of:
            per_turn_of[key] = []
            if per_turn_terms:
                earned = episode_rewards(episodes[key], format_penalty=weights.format_penalty)
                per_turn_of[key] = [
                    weights.process * process + weights.format * penalty
                    for process, penalty in zip(earned.process, earned.format, strict=True)
                ]
        per_turn = per_turn_of[key]
        offset = completion_length - len(sample.completion_ids)
        segments = policy_segments(sample.completion_mask)
        if not segments:
            if sample.truncated:  # masked by rollout.mask_truncated: no reward, no gradient
                continue
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
        rewards[row, offset + segments[-1][1] - 1] += outcomes[key]
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
# 3. Advantages
# ---------------------------------------------------------------------------------------------


def compute_advantages(
    settings: PPOSettings,
    rewards: torch.Tensor,
    values: torch.Tensor | None,
    mask: torch.Tensor,
    samples: Sequence[TokenSample],
    outcomes: dict[DialogueKey, float],
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
# 4. Losses
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
    sampling_weights: torch.Tensor | None = None,
) -> PolicyLoss:
    """The clipped surrogate, token-summed and divided by ``normaliser`` (tokens in the step).

    ``approx_kl`` is the low-variance estimator ``(r - 1) - log r`` (0 when nothing moved);
    a token counts as clipped when the clipped term is the one taken. ``sampling_weights``
    (:class:`training.sampler.ImportanceWeights`) reweight each token when the rollout was
    sampled by other weights than the ones the old logprobs come from.
    """
    log_ratio = (new_logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_ratio, 1 + clip_ratio)
    per_token = torch.maximum(unclipped, clipped)
    if sampling_weights is not None:
        per_token = per_token * sampling_weights
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
# 5. Update
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
    sampling_weights: torch.Tensor | None = None
    """Truncated importance weights of an inexact sampler, None for the exact one."""


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
            None
            if buffer.sampling_weights is None
            else buffer.sampling_weights[index][:, -c:].to(accelerator.device),
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
            # The prepared actor runs under accelerate's autocast; the unprepared reference
            # must too, or with bf16 the KL at equal weights is rounding noise, not 0.
            with learner.accelerator.autocast():
                ref_logprobs, _ = policy_forward(reference, micro, temperature)
            ref[rows, -width:] = ref_logprobs.cpu()
        seconds["time_actor_score_s"] += time.perf_counter() - started
        if values is not None and learner.critic is not None:
            started = time.perf_counter()
            values[rows, -width:] = critic_forward(learner.critic, micro).cpu()
            seconds["time_critic_score_s"] += time.perf_counter() - started
    return old, values, ref, seconds


# ---------------------------------------------------------------------------------------------
# 6. The loop
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


class PPORun:
    """One PPO run: the models, the rollout bridge, and the per-step loop of :meth:`step`."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        rollout: Rollout | None = None,
        extra_outcome: ExtraOutcome | None = None,
    ) -> None:
        assert config.ppo is not None
        self.config = config
        self.settings = config.ppo
        self.extra_outcome = extra_outcome
        self.accelerator = Accelerator(
            cpu=config.use_cpu, mixed_precision="bf16" if config.bf16 else "no"
        )
        set_seed(config.seed)
        self.rollout = rollout or Rollout(config)
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
        self.learner, self.reference, self.tokenizer = self._models()
        self.generator = torch.Generator().manual_seed(config.seed)
        self.engine: Engine | None = None
        self.sampler: BFloat16Sampler | None = None
        self.vllm: Any = None
        self.step_index = 0
        self.writer: Any = None
        if config.logging.tensorboard and self.accelerator.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(config.output_dir / "runs"))

    def _models(self) -> tuple[Learner, torch.nn.Module | None, Any]:
        """The actor, the critic (``gae`` only) and their optimizers, prepared by the
        accelerator; the frozen reference (``kl_coef > 0`` only); the tokenizer."""
        config, settings = self.config, self.settings
        path = config.policy.path()
        dtype = getattr(torch, config.policy.dtype)
        policy, tokenizer = load_policy(config)
        policy.config.use_cache = False
        critic = load_critic(settings.critic, path, dtype) if settings.advantage == "gae" else None
        if config.policy.gradient_checkpointing:
            for model in (policy, critic):
                if model is not None:
                    model.gradient_checkpointing_enable()
        reference = load_reference(path, dtype) if settings.kl_coef > 0 else None
        dialogues = settings.personas_per_step * config.rollout.group_size
        updates = (
            config.max_steps * settings.epochs * math.ceil(dialogues / settings.mini_batch_size)
        )

        def optimise(
            model: torch.nn.Module, lr: float, warmup_ratio: float
        ) -> tuple[torch.optim.Optimizer, LRScheduler]:
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=lr, weight_decay=settings.weight_decay
            )
            warmup = math.ceil(warmup_ratio * updates)
            return optimizer, get_constant_schedule_with_warmup(optimizer, warmup)

        actor_optimizer, actor_scheduler = optimise(
            policy, settings.actor_learning_rate, settings.actor_warmup_ratio
        )
        prepared: list[Any] = [policy, actor_optimizer]
        critic_optimizer = critic_scheduler = None
        if critic is not None:
            critic_optimizer, critic_scheduler = optimise(
                critic, settings.critic.learning_rate, settings.critic.warmup_ratio
            )
            prepared += [critic, critic_optimizer]
        prepared = list(self.accelerator.prepare(*prepared))
        self.accelerator.register_for_checkpointing(actor_scheduler)
        if critic_scheduler is not None:
            self.accelerator.register_for_checkpointing(critic_scheduler)
        if reference is not None:
            reference.to(self.accelerator.device)
        learner = Learner(
            accelerator=self.accelerator,
            policy=prepared[0],
            actor_optimizer=prepared[1],
            actor_scheduler=actor_scheduler,
            critic=prepared[2] if critic is not None else None,
            critic_optimizer=prepared[3] if critic is not None else None,
            critic_scheduler=critic_scheduler,
        )
        return learner, reference, tokenizer

    # --- resume ------------------------------------------------------------------------------

    def resume(self) -> int:
        """Load the last checkpoint of ``output_dir`` if resuming; returns the next step."""
        last = last_checkpoint(self.config.output_dir) if self.config.resume else None
        if last is not None:
            self.accelerator.load_state(str(last / STATE_DIR))
            self.step_index = checkpoint_step(last)
            self.generator.manual_seed(self.config.seed + self.step_index)
            _log.info("resumed from %s at step %d", last, self.step_index)
        return self.step_index

    # --- rollouts ----------------------------------------------------------------------------

    def _scheduler(self, width: int) -> LockstepScheduler | None:
        """Serve ``live:policy`` for this step: the trainer's model in-process, or vLLM in
        lockstep (whose scheduler the rollout must run)."""
        model = self.accelerator.unwrap_model(self.learner.policy)
        if self.config.rollout.generation == "local":
            if self.config.rollout.sampler == "bfloat16" and self.sampler is None:
                self.sampler = BFloat16Sampler(model)
            self.engine = live_engine(
                sampling_model(model, self.sampler),
                self.tokenizer,
                self.engine,
                self.config.rollout.concurrency,
            )
            return None
        engine = lockstep_engine(
            self.config,
            model,
            self.tokenizer,
            self._vllm_generate,
            width=width,
            device=str(model.device),
            policy_version=self.step_index,
        )
        self.engine = engine
        return engine.scheduler

    def _vllm_generate(self, prompts: list[list[int]]) -> list[Completion]:
        """TRL's vLLM backend (colocated or a server), created on first use."""
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
        return vllm_completions(self.vllm, prompts)

    def play(self) -> list[Episode]:
        """This process's share of the step's dialogues, played with the current policy."""
        group = self.config.rollout.group_size
        everyone = step_personas(
            list(self.rollout.personas),
            self.step_index,
            self.settings.personas_per_step,
            self.config.seed,
        )
        mine = everyone[self.accelerator.process_index :: self.accelerator.num_processes]
        jobs = plan_jobs([pid for pid in mine for _ in range(group)], self.rollout.personas)
        scheduler = self._scheduler(len(jobs))
        seed = stable_seed("ppo", self.config.seed, self.step_index, self.accelerator.process_index)
        return asyncio.run(self.rollout.play(jobs, seed, scheduler=scheduler))

    def samples_of(self, episodes: Sequence[Episode]) -> list[TokenSample]:
        """The training samples of the scored dialogues, in the configured unit."""
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

    # --- one step ----------------------------------------------------------------------------

    def step(self) -> dict[str, float]:
        """One PPO iteration: rollout → rewards → advantages → update; returns what to log."""
        config, settings = self.config, self.settings
        started = time.perf_counter()

        # 1. Rollout: dialogues with the current policy, as token samples, scored by the
        #    weights that sampled them (old logprobs, values, reference logprobs).
        episodes = self.play()
        rollout_seconds = time.perf_counter() - started
        stats = rollout_stats(episodes, self.accelerator)
        scored = {e.key: e for e in episodes if e.ok}
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

        correction = ImportanceWeights(
            old_logprobs,
            batch.rollout_logprobs,
            batch.mask,
            config.rollout.importance_cap if config.rollout.corrected else None,
        )

        # 2. Rewards: outcome (and per-turn terms) on last tokens, minus the KL penalty.
        outcomes = dialogue_outcomes(scored, config.rewards, self.extra_outcome)
        rewards = token_rewards(samples, scored, config.rewards, batch.completion_length, outcomes)
        if ref_logprobs is not None:
            rewards -= settings.kl_coef * (old_logprobs - ref_logprobs) * batch.mask

        # 3. Advantages: GAE with the critic, or group-normalised outcomes.
        advantages, returns = compute_advantages(
            settings,
            rewards,
            values,
            batch.mask,
            samples,
            outcomes,
            reduce=lambda t: self.accelerator.reduce(t.to(self.accelerator.device), "sum").cpu(),
        )

        # 4. Update, with the live engine paused so no dialogue samples half-updated weights.
        dialogue_of = {key: number for number, key in enumerate(scored)}
        buffer = RolloutBuffer(
            batch=batch,
            dialogue=[dialogue_of[(s.persona_id, s.sample)] for s in samples],
            old_logprobs=old_logprobs,
            old_values=values,
            advantages=advantages,
            returns=returns,
            sampling_weights=correction.weights,
        )
        pause = self.engine.pause(bump_version=True) if self.engine else contextlib.nullcontext()
        with pause:
            update = ppo_update(self.learner, buffer, settings, self.temperature, self.generator)
            if self.sampler is not None:
                self.sampler.refresh()
        if self.vllm is not None:
            self.vllm.sync_weights()
        self.step_index += 1

        # 5. What to log.
        mask = batch.mask.bool()
        metrics = {
            **stats.metrics(),
            "reward/outcome_mean": sum(outcomes.values()) / max(len(outcomes), 1),
            "reward/token_sum_mean": float(rewards.sum(dim=1).mean()),
            "samples": float(len(samples)),
            "policy_tokens": float(batch.mask.sum()),
            **correction.metrics(),
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
        if ref_logprobs is not None:
            metrics["ppo/kl_to_reference"] = float((old_logprobs - ref_logprobs)[mask].mean())
        metrics["time/step_s"] = time.perf_counter() - started
        return metrics

    def log(self, metrics: dict[str, float]) -> None:
        """Console, ``output_dir/metrics.jsonl`` (as GRPO writes it) and TensorBoard."""
        if not self.accelerator.is_main_process:
            return
        append_metrics(self.config.output_dir, self.step_index, metrics)
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

    def save(self) -> Path:
        """``checkpoint-<step>/`` of this run (:func:`training.policy.save_checkpoint`)."""
        return save_checkpoint(
            self.accelerator,
            self.learner.policy,
            self.learner.critic,
            self.tokenizer,
            self.config.output_dir,
            self.step_index,
            self.config.save_total_limit,
        )

    def close(self) -> None:
        if self.engine is not None:
            unregister_engine(self.engine)
        if self.writer is not None:
            self.writer.close()


def train_ppo(
    config: TrainConfig,
    *,
    rollout: Rollout | None = None,
    extra_outcome: ExtraOutcome | None = None,
) -> Path:
    """Train with PPO, resuming from the last checkpoint in ``output_dir`` when ``resume``.

    Returns ``output_dir/final``: the actor as a plain checkpoint with its tokenizer, the same
    kind of directory GRPO writes, which ``rlver eval`` and vLLM load as they are.
    """
    run = PPORun(config, rollout=rollout, extra_outcome=extra_outcome)
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
                run.save()
            if out_of_time:
                _log.info("time limit reached after step %d", run.step_index)
                break
        return export_model(
            run.accelerator, run.learner.policy, config.output_dir / FINAL_DIR, run.tokenizer
        )
    finally:
        run.close()
