"""GAE, whitening and GRPO's group normalisation against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from training.advantages import (
    broadcast_to_tokens,
    gae,
    group_normalized,
    masked_mean,
    whiten,
)

GAMMA = 0.9
LAM = 0.8


def test_gae_skips_mask_zero_tokens_in_the_middle() -> None:
    # Policy tokens 0, 1 and 4; tokens 2-3 are the user's (their values must not matter).
    rewards = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 9.0, -9.0, 0.4]])
    mask = torch.tensor([[1, 1, 0, 0, 1]])
    advantages, returns = gae(rewards, values, mask, gamma=GAMMA, lam=LAM)
    # By hand: t4 is terminal, t1's next policy token is t4, t0's is t1.
    a4 = 1.0 - 0.4
    a1 = (0.0 + GAMMA * 0.4 - 0.2) + GAMMA * LAM * a4
    a0 = (0.0 + GAMMA * 0.2 - 0.5) + GAMMA * LAM * a1
    expected = torch.tensor([[a0, a1, 0.0, 0.0, a4]])
    assert torch.allclose(advantages, expected, atol=1e-6)
    assert math.isclose(a0, 0.10624, abs_tol=1e-9)
    assert torch.allclose(returns, torch.tensor([[a0 + 0.5, a1 + 0.2, 0.0, 0.0, a4 + 0.4]]))


def test_gae_with_process_reward_terminal_reward_and_padding() -> None:
    rewards = torch.tensor([[0.3, 0.0, 1.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    advantages, _ = gae(rewards, values, mask, gamma=GAMMA, lam=LAM)
    assert torch.allclose(advantages, torch.tensor([[0.79328, 0.574, 0.7, 0.0, 0.0]]), atol=1e-6)


def test_gae_rows_are_independent_and_gamma_lam_one_gives_return_minus_value() -> None:
    rewards = torch.tensor([[0.0, 0.0, 0.7], [0.0, 0.2, 0.0]])
    values = torch.tensor([[0.1, 0.4, 0.2], [0.3, 0.6, 5.0]])
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # With gamma = lam = 1 the advantage is the undiscounted reward-to-go minus the value.
    assert torch.allclose(advantages, torch.tensor([[0.6, 0.0, 0.5], [-0.1, -0.4, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[0.7, 0.0, 0.7], [0.2, 0.2, 0.0]]))


def test_gae_refuses_a_reward_on_a_token_the_policy_did_not_sample() -> None:
    with pytest.raises(ValueError, match=r"mask-0 token \(row 0, token 1\)"):
        gae(
            torch.tensor([[0.0, 1.0]]),
            torch.zeros(1, 2),
            torch.tensor([[1, 0]]),
            gamma=1.0,
            lam=1.0,
        )


def test_whiten_uses_policy_tokens_only() -> None:
    values = torch.tensor([[1.0, 100.0, 3.0], [5.0, 7.0, -50.0]])
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    white = whiten(values, mask)
    selected = torch.tensor([1.0, 3.0, 5.0, 7.0])
    expected = (selected - selected.mean()) / selected.std()
    assert torch.allclose(white[mask.bool()], expected, atol=1e-6)
    assert white[0, 1] == 0 and white[1, 2] == 0
    assert abs(float(masked_mean(white, mask))) < 1e-6


def test_group_normalized_within_each_persona() -> None:
    normalized = group_normalized([1.0, 3.0, 0.2, 0.5], ["a", "a", "b", "c"])
    assert normalized[0] == pytest.approx(-1 / math.sqrt(2), abs=1e-5)
    assert normalized[1] == pytest.approx(1 / math.sqrt(2), abs=1e-5)
    # A group of one, or a group without spread, carries no advantage.
    assert normalized[2] == 0.0 and normalized[3] == 0.0
    assert group_normalized([0.4, 0.4], ["x", "x"]) == [0.0, 0.0]


def test_broadcast_to_tokens_fills_policy_tokens_only() -> None:
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]])
    tokens = broadcast_to_tokens([2.0, -1.0], mask)
    assert torch.equal(tokens, torch.tensor([[2.0, 0.0, 2.0], [0.0, -1.0, -1.0]]))
    with pytest.raises(ValueError, match="3 values for 2 samples"):
        broadcast_to_tokens([1.0, 2.0, 3.0], mask)
