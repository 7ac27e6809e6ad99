"""Advantage estimators for token sequences whose policy tokens are interleaved with others.

Every tensor here is ``[batch, tokens]`` over the completion part of a sample, with a mask
that is 1 on tokens the policy sampled and 0 on tokens the environment wrote (the simulated
user's turns inside a dialogue sample, and padding). A mask-0 token is not a time step: it
carries no action, no value and no reward, so GAE steps from one policy token straight to
the next policy token across any gap. The functions are pure so they can be checked by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1."""
    count = mask.sum()
    if count == 0:
        raise ValueError("masked_mean: the mask selects no token")
    return (values * mask).sum() / count


def whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Shift to mean 0 and scale to variance 1 over the selected tokens; others become 0.

    ``reduce`` sums a tensor over all training processes, so the statistics are the whole
    batch's rather than one process's share (``None``: this process holds the whole batch).
    """
    mask = mask.to(values.dtype)
    sums = torch.stack([(values * mask).sum(), (values**2 * mask).sum(), mask.sum()])
    if reduce is not None:
        sums = reduce(sums)
    total, squares, count = sums.unbind()
    if count < 2:
        raise ValueError(f"whiten: needs at least 2 selected tokens, got {int(count)}")
    mean = total / count
    var = (squares / count - mean**2) * count / (count - 1)
    return (values - mean) / (var.clamp(min=0).sqrt() + eps) * mask


def _check_shapes(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> None:
    if rewards.dim() != 2 or rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(
            "gae: rewards, values and mask must share one [batch, tokens] shape, got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    stray = (rewards != 0) & (mask == 0)
    if stray.any():
        row, column = (int(i) for i in stray.nonzero()[0])
        raise ValueError(
            f"gae: reward {float(rewards[row, column])} sits on a mask-0 token (row {row}, "
            f"token {column}); rewards belong on tokens the policy sampled"
        )


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over policy tokens, walking each row backwards.

    At a policy token ``t`` whose next policy token is ``t'`` (none after the last one, where
    the sample ends and the next value is 0)::

        delta_t = r_t + gamma * V_t' - V_t
        A_t     = delta_t + gamma * lam * A_t'

    Returns ``(advantages, returns)`` with ``returns = advantages + values``; both are 0 on
    mask-0 tokens, which neither act nor are valued.
    """
    _check_shapes(rewards, values, mask)
    mask = mask.to(values.dtype)
    batch, length = rewards.shape
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(batch, dtype=values.dtype, device=values.device)
    next_advantage = torch.zeros_like(next_value)
    for t in reversed(range(length)):
        acts = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * acts
        # A mask-0 token leaves the carried value and advantage untouched: the gap is skipped.
        next_value = torch.where(acts > 0, values[:, t], next_value)
        next_advantage = torch.where(acts > 0, advantage, next_advantage)
    returns = (advantages + values) * mask
    return advantages, returns


def group_normalized(
    scores: Sequence[float], groups: Sequence[str], *, eps: float = 1e-6
) -> list[float]:
    """GRPO's outcome advantage: each score minus its group's mean, over the group's std.

    ``groups[i]`` names the group of ``scores[i]`` (the persona the dialogue was played
    with). The std is the unbiased one; a group of one sample has no spread and gets 0.
    """
    if len(scores) != len(groups):
        raise ValueError(f"group_normalized: {len(scores)} scores for {len(groups)} group ids")
    members: dict[str, list[int]] = {}
    for position, group in enumerate(groups):
        members.setdefault(group, []).append(position)
    normalized = [0.0] * len(scores)
    for positions in members.values():
        group_scores = torch.tensor([float(scores[i]) for i in positions], dtype=torch.float64)
        if len(positions) == 1:
            continue
        mean = group_scores.mean()
        std = group_scores.std()
        for i, score in zip(positions, group_scores, strict=True):
            normalized[i] = float((score - mean) / (std + eps))
    return normalized


def broadcast_to_tokens(per_sample: Sequence[float], mask: torch.Tensor) -> torch.Tensor:
    """Give every policy token of row ``i`` the value ``per_sample[i]`` (0 elsewhere)."""
    if len(per_sample) != mask.shape[0]:
        raise ValueError(
            f"broadcast_to_tokens: {len(per_sample)} values for {mask.shape[0]} samples"
        )
    column = torch.tensor(per_sample, dtype=torch.float32, device=mask.device).unsqueeze(1)
    return column * mask.to(torch.float32)
