"""PPO's forward passes and losses: step-0 ratio, masks and clipping, on the tiny random Qwen2."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlver_agents.emotion import TerminationReason
from rlver_agents.episodes.episode import Episode, Turn
from rlver_agents.episodes.samples import TokenSample
from rlver_agents.models.engine import get_engine
from rlver_agents.models.records import SamplingParams
from training.config import RewardSettings
from training.policy import load_critic
from training.ppo import (
    collate,
    critic_forward,
    dialogue_outcomes,
    explained_variance,
    policy_forward,
    policy_loss,
    policy_segments,
    token_rewards,
    value_loss,
)
from training.ppo_config import CriticSettings


def _sample(
    prompt: list[int],
    completion: list[int],
    mask: list[int],
    logprobs: list[float],
    turn: int | None = 1,
) -> TokenSample:
    return TokenSample(
        persona_id="p",
        sample=0,
        unit="turn" if turn is not None else "dialogue",
        turn=turn,
        prompt_ids=prompt,
        completion_ids=completion,
        completion_mask=mask,
        logprobs=logprobs,
        truncated=False,
        policy_version=0,
    )


def _generate(path: Path, prompt: list[int], temperature: float, top_p: float, seed: int):
    engine = get_engine(path)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=12, seed=seed)
    return asyncio.run(engine.generate(prompt, params))


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9)])
def test_ratio_is_one_and_approx_kl_zero_at_step_zero(
    tiny_checkpoint: Path, temperature: float, top_p: float
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    chat = [{"role": "user", "content": "I feel so tired and nobody listens."}]
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    prompt = tokenizer.encode(text)
    first = _generate(tiny_checkpoint, prompt, temperature, top_p, seed=1)
    user = tokenizer.encode("<|im_start|>user\nthank you<|im_end|>\n<|im_start|>assistant\n")
    second = _generate(
        tiny_checkpoint, prompt + first.completion_ids + user, temperature, top_p, seed=2
    )
    short = _generate(tiny_checkpoint, prompt[:5], temperature, top_p, seed=3)
    samples = [
        _sample(prompt, first.completion_ids, [1] * len(first.completion_ids), first.logprobs),
        # A dialogue sample: the user's tokens sit between two policy generations with mask 0.
        _sample(
            prompt,
            first.completion_ids + user + second.completion_ids,
            [1] * len(first.completion_ids) + [0] * len(user) + [1] * len(second.completion_ids),
            first.logprobs + [0.0] * len(user) + second.logprobs,
            turn=None,
        ),
        _sample(prompt[:5], short.completion_ids, [1] * len(short.completion_ids), short.logprobs),
    ]
    batch = collate(samples, pad_token_id=tokenizer.pad_token_id)
    policy = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    with torch.no_grad():
        new, _ = policy_forward(policy, batch, temperature)
    ratio = torch.exp(new - batch.rollout_logprobs)[batch.mask.bool()]
    assert ratio.numel() == int(batch.mask.sum())
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-4)
    advantages = torch.randn_like(new) * batch.mask
    stats = policy_loss(new, batch.rollout_logprobs, advantages, batch.mask, 0.2, 1.0)
    tokens = float(batch.mask.sum())
    assert abs(stats.approx_kl_sum / tokens) < 1e-4
    assert abs(stats.ratio_sum / tokens - 1.0) < 1e-4
    assert stats.clipped_tokens == 0


def test_policy_loss_ignores_mask_zero_tokens() -> None:
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    new = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    old = torch.tensor([[-1.1, -2.0, -0.4]])
    advantages = torch.tensor([[0.5, 0.0, -1.0]])
    reference = policy_loss(new, old, advantages, mask, 0.2, 2.0)
    reference.loss.backward()
    assert new.grad is not None and new.grad[0, 1] == 0
    # Garbage on the masked token (its old logprob, its advantage) changes nothing.
    new2 = new.detach().clone().requires_grad_(True)
    garbage = policy_loss(
        new2,
        torch.tensor([[-1.1, 50.0, -0.4]]),
        torch.tensor([[0.5, 99.0, -1.0]]),
        mask,
        0.2,
        2.0,
    )
    garbage.loss.backward()
    assert torch.equal(garbage.loss.detach(), reference.loss.detach())
    assert torch.equal(new2.grad, new.grad)
    assert garbage.approx_kl_sum == pytest.approx(reference.approx_kl_sum)


def test_clipping_stops_the_gradient_only_past_the_trust_region() -> None:
    # Ratios 1.5, 1.5, 0.5, 0.5, 1.1 with advantages +, -, +, -, + (clip 0.2).
    old = torch.zeros(1, 5)
    new = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1]])).requires_grad_(True)
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0]])
    mask = torch.ones(1, 5)
    stats = policy_loss(new, old, advantages, mask, 0.2, 5.0)
    stats.loss.backward()
    grad = new.grad[0]
    # Clipped: a good action already made more likely, a bad one already made less likely.
    assert grad[0] == 0 and grad[3] == 0
    # Not clipped: moving back toward the region, or inside it.
    assert grad[1] != 0 and grad[2] != 0 and grad[4] != 0
    assert stats.clipped_tokens == 2
    expected = -(1.2 * 1 + -1.5 * 1 + 0.5 * 1 + -0.8 * 1 + 1.1) / 5
    assert float(stats.loss) == pytest.approx(expected)


def test_value_loss_clips_around_the_rollout_value() -> None:
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, 9.0]])
    new = torch.tensor([[2.0, 0.3, 5.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, clipped = value_loss(new, old, returns, mask, 0.5, 2.0)
    # Token 0: clipped value 0.5 -> error 0.25 vs unclipped 1.0 -> max is 1.0 (unclipped).
    # Token 1: both inside -> 0.49. Token 2 is masked.
    assert float(loss) == pytest.approx(0.5 * (1.0 + 0.49) / 2)
    assert clipped == 0
    # Token 0 jumped past the clip toward the return: the clipped error (0.5 - 1)^2 = 0.25
    # exceeds the unclipped 0.04 and is the one kept, so the jump earns no credit.
    loss2, clipped2 = value_loss(torch.tensor([[0.8, 0.3, 0.0]]), old, returns, mask, 0.5, 2.0)
    assert float(loss2) == pytest.approx(0.5 * (0.25 + 0.49) / 2)
    assert clipped2 == 1
    loss.backward()
    assert new.grad is not None and new.grad[0, 2] == 0


def test_critic_starts_at_zero_and_reads_values_before_each_token(tiny_checkpoint: Path) -> None:
    critic = load_critic(CriticSettings(), str(tiny_checkpoint))
    samples = [_sample([5, 6, 7], [8, 9], [1, 1], [-1.0, -1.0]), _sample([5], [8], [1], [-1.0])]
    batch = collate(samples, pad_token_id=0)
    values = critic_forward(critic, batch)
    assert values.shape == (2, 2) and torch.all(values == 0)
    with torch.no_grad():
        critic.score.weight.normal_()
    values = critic_forward(critic, batch)
    full = critic(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits[0, :, 0]
    # The value of completion token j is read at the position just before it.
    assert torch.allclose(values[0], full[2:4], atol=1e-5)
    assert values[1, 0] == 0  # padding column of the shorter sample


def test_explained_variance_and_segments() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 4) + 2.0, returns, mask) == pytest.approx(0.0)
    assert policy_segments([1, 1, 0, 0, 1, 0, 1]) == [(0, 2), (4, 5), (6, 7)]


def _episode(final: int, changes: list[int]) -> Episode:
    turns = [Turn(index=0, speaker="user", source="user", text="hi")]
    for k, change in enumerate(changes):
        turns.append(Turn(index=2 * k + 1, speaker="agent", source="agent", text="ok"))
        turns.append(
            Turn(index=2 * k + 2, speaker="user", source="user", text="hm", applied_change=change)
        )
    return Episode(
        persona_id="p",
        sample=0,
        turns=turns,
        termination=TerminationReason.MAX_TURNS,
        final_score=final,
        num_turns=len(changes),
    )


def test_a_masked_truncated_turn_gets_no_reward_and_an_unmasked_empty_one_is_an_error() -> None:
    episode = {("p", 0): _episode(60, [20, 10])}
    masked = _sample([1], [4, 5, 6], [0, 0, 0], [0.0] * 3, turn=1).model_copy(
        update={"truncated": True}
    )
    kept = _sample([1], [7, 8], [1, 1], [0.0] * 2, turn=2)
    weights = RewardSettings()
    rewards = token_rewards(
        [masked, kept], episode, weights, 3, dialogue_outcomes(episode, weights)
    )
    assert rewards[0].tolist() == [0, 0, 0]
    assert rewards[1].tolist() == pytest.approx([0, 0, 0.6])
    broken = masked.model_copy(update={"truncated": False})
    with pytest.raises(ValueError, match="no policy token"):
        token_rewards([broken], episode, weights, 3, dialogue_outcomes(episode, weights))


def test_rewards_sit_on_the_last_token_of_each_turn() -> None:
    episode = {("p", 0): _episode(60, [20, 10])}
    turn_1 = _sample([1], [4, 5, 6], [1, 1, 1], [0.0] * 3, turn=1)
    turn_2 = _sample([1], [7, 8], [1, 1], [0.0] * 2, turn=2)
    dialogue = _sample([1], [4, 5, 9, 9, 7, 8], [1, 1, 0, 0, 1, 1], [0.0] * 6, turn=None)
    samples = [turn_1, turn_2, dialogue]
    outcome_only = token_rewards(
        samples, episode, RewardSettings(), 6, dialogue_outcomes(episode, RewardSettings())
    )
    # Every turn sample of the dialogue gets the outcome 0.6 on its own last token.
    assert outcome_only[0].tolist() == pytest.approx([0, 0, 0, 0, 0, 0.6])
    assert outcome_only[1].tolist() == pytest.approx([0, 0, 0, 0, 0, 0.6])
    assert outcome_only[2].tolist() == pytest.approx([0, 0, 0, 0, 0, 0.6])
    weights = RewardSettings(process=1.0)
    with_process = token_rewards(samples, episode, weights, 6, dialogue_outcomes(episode, weights))
    # Turn 1 earned +0.2 and turn 2 +0.1, each on the last token of that turn.
    assert with_process[0].tolist() == pytest.approx([0, 0, 0, 0, 0, 0.8])
    assert with_process[1].tolist() == pytest.approx([0, 0, 0, 0, 0, 0.7])
    assert with_process[2].tolist() == pytest.approx([0, 0.2, 0, 0, 0, 0.7])
