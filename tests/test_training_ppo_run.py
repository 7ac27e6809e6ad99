"""PPO end to end on the tiny random Qwen2 with scripted users: updates, checkpoints, resume,
and a learning test that checks the gradient's direction and the user-token mask."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from training_users import PERSONAS, scripted_users
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlver_agents.agents.agent import default_system_message
from rlver_agents.episodes.episode import AgentFactory, Episode, EpisodeContext
from rlver_agents.episodes.samples import TokenSample
from training.config import TrainConfig
from training.policy import ACTOR_DIR, CRITIC_DIR, last_checkpoint
from training.ppo import (
    Learner,
    RolloutBuffer,
    collate,
    policy_forward,
    ppo_update,
    step_personas,
    train_ppo,
)
from training.ppo_config import PPOSettings
from training.rollout import Rollout


def ppo_config(checkpoint: Path, output_dir: Path, **ppo: object) -> TrainConfig:
    """PPO on the tiny checkpoint: 2-turn dialogues, short turns, high learning rates."""
    return TrainConfig.model_validate(
        {
            "algorithm": "ppo",
            "output_dir": str(output_dir),
            "max_steps": 2,
            "save_steps": 1,
            "use_cpu": True,
            "policy": {"model": str(checkpoint)},
            "rollout": {
                "personas": "train",
                "rules": {"name": "test", "initial_score": 30, "max_turns": 2},
                "group_size": 2,
                "max_new_tokens": 6,
                "concurrency": 8,
            },
            "logging": {"tensorboard": False},
            "ppo": {
                "actor_learning_rate": 1e-3,
                "actor_warmup_ratio": 0.0,
                "critic": {"learning_rate": 1e-3, "warmup_ratio": 0.0},
                "personas_per_step": 2,
                "mini_batch_size": 4,
                "micro_batch_size": 4,
                **ppo,
            },
        }
    )


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_two_steps_update_both_models_checkpoint_and_resume(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    output = tmp_path / "run"
    config = ppo_config(tiny_checkpoint, output)
    users = scripted_users(change=lambda text: 5 if "you" in text else -5)
    final = train_ppo(config, rollout=Rollout(config, personas=PERSONAS, users=users))

    start = _weights(tiny_checkpoint)
    first, second = output / "checkpoint-1", output / "checkpoint-2"
    assert last_checkpoint(output) == second
    actor_1 = _weights(first / ACTOR_DIR)
    actor_2 = _weights(second / ACTOR_DIR)
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(actor_1[name], start[name])
    assert not torch.equal(actor_2[name], actor_1[name])
    critic_1 = _weights(first / CRITIC_DIR)
    critic_2 = _weights(second / CRITIC_DIR)
    assert float(critic_1["score.weight"].abs().sum()) > 0  # moved off its zero start
    assert not torch.equal(critic_2["score.weight"], critic_1["score.weight"])
    # The final policy is a plain checkpoint with the tokenizer and its chat template.
    assert torch.equal(_weights(final)[name], actor_2[name])
    assert AutoTokenizer.from_pretrained(final).chat_template

    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        assert line["sampling/sampling_logp_difference/max"] < 1e-4
        assert line["samples"] == 8  # 2 personas x 2 dialogues x 2 agent turns
        assert line["time/rollout_s"] > 0 and line["time/critic_s"] > 0

    # Resume: one more step starts from checkpoint-2's actor, critic and optimizer states.
    resumed = config.model_copy(update={"max_steps": 3})
    train_ppo(resumed, rollout=Rollout(resumed, personas=PERSONAS, users=users))
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    third = _weights(output / "checkpoint-3" / ACTOR_DIR)
    assert not torch.equal(third[name], actor_2[name])
    state = torch.load(output / "checkpoint-3" / "state" / "optimizer.bin", weights_only=False)
    assert state["state"]  # Adam moments were saved


def test_step_personas_cover_the_split_and_depend_on_the_step_only() -> None:
    ids = [f"p{i}" for i in range(5)]
    first_pass = step_personas(ids, 0, 2, 7) + step_personas(ids, 1, 2, 7)
    first_pass += step_personas(ids, 2, 2, 7)[:1]
    assert sorted(first_pass) == ids
    # Pinned values: the choice depends on (step, count, seed) alone, so a resumed run plays
    # what the original would have; step 2 ends the first pass and starts the second, which
    # is shuffled anew.
    assert step_personas(ids, 2, 2, 7) == ["p4", "p3"]
    assert step_personas(ids, 3, 2, 7) == ["p1", "p2"]


def _agent_ids(episode: Episode) -> list[int]:
    return [
        i
        for turn in episode.turns
        if turn.generations
        for record in turn.generations
        for i in record.completion_token_ids
    ]


def _first_word_probabilities(model: Any, tokenizer: Any) -> torch.Tensor:
    """The policy's distribution over the first token of its first reply."""
    text = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": default_system_message()},
            {"role": "user", "content": PERSONAS[0].first_talk},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return torch.softmax(logits.float(), dim=-1)


def _favourite_token(checkpoint: Path) -> tuple[int, float]:
    """The untrained policy's most likely first token (sampled often from the start)."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    probabilities = _first_word_probabilities(model, AutoTokenizer.from_pretrained(checkpoint))
    token = int(probabilities.argmax())
    return token, float(probabilities[token])


def _learn(
    checkpoint: Path,
    output: Path,
    reward: Callable[[Episode], float],
    users: AgentFactory,
    *,
    unit: str,
    advantage: str,
) -> Any:
    """16 PPO steps where ``reward`` replaces the outcome; returns the trained policy."""
    # One optimizer step per rollout (all 8 dialogues in one mini-batch), as GRPO takes.
    config = ppo_config(
        checkpoint, output, advantage=advantage, actor_learning_rate=1e-2, mini_batch_size=8
    )
    config = config.model_copy(
        update={
            "max_steps": 16,
            "save_steps": 1000,
            "rewards": config.rewards.model_copy(update={"outcome": 0.0}),
        }
    )
    config.rollout.group_size = 4
    config.rollout.unit = unit  # type: ignore[assignment]
    train_ppo(config, rollout=Rollout(config, personas=PERSONAS, users=users), extra_outcome=reward)
    return AutoModelForCausalLM.from_pretrained(output / "final")


@pytest.mark.parametrize(("unit", "advantage"), [("turn", "gae"), ("dialogue", "grpo")])
def test_rewarding_a_token_in_the_policy_turns_reinforces_it(
    tiny_checkpoint: Path, tmp_path: Path, unit: str, advantage: str
) -> None:
    token, start = _favourite_token(tiny_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = _learn(
        tiny_checkpoint,
        tmp_path,
        lambda episode: float(_agent_ids(episode).count(token)),
        scripted_users(),
        unit=unit,
        advantage=advantage,
    )
    learned = float(_first_word_probabilities(model, tokenizer)[token])
    assert learned > max(3 * start, 0.3), (start, learned)


def test_a_token_seen_only_in_the_user_turns_is_not_reinforced(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # The dialogue unit puts the user's tokens inside the completion with mask 0. The reward
    # counts the token in the user's lines (a random number of times, whatever the policy
    # does): if those tokens were trained on, the policy would learn to say it itself.
    token, start = _favourite_token(tiny_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    word = tokenizer.decode([token]).strip()

    def user_line(ctx: EpisodeContext, turn: int) -> str:
        rng = random.Random(f"{ctx.seed}:{turn}")
        return " ".join([word] * rng.randint(0, 3) + ["fine"])

    def said_by_user(episode: Episode) -> float:
        return float(sum(t.text.split().count(word) for t in episode.turns if t.speaker == "user"))

    model = _learn(
        tiny_checkpoint,
        tmp_path,
        said_by_user,
        scripted_users(line=user_line),
        unit="dialogue",
        advantage="gae",
    )
    unlearned = float(_first_word_probabilities(model, tokenizer)[token])
    assert unlearned < max(2 * start, 0.15), (start, unlearned)


@pytest.mark.parametrize(("advantage_at", "moves"), [(1, False), (2, False), (0, True)])
def test_an_update_moves_nothing_through_a_masked_token(
    tiny_checkpoint: Path, advantage_at: int, moves: bool
) -> None:
    # The exact form of the test above: one update whose only advantage sits on a user token
    # (mask 0) must leave the policy as it was, to the last bit that matters; the same
    # advantage on a policy token (mask 1) must move it. A mask that leaked even in part
    # would move the masked token's logprob here.
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    sample = TokenSample(
        persona_id="p",
        sample=0,
        unit="dialogue",
        turn=None,
        prompt_ids=tokenizer("hello", add_special_tokens=False)["input_ids"],
        completion_ids=tokenizer("you are fine", add_special_tokens=False)["input_ids"][:1] * 4,
        completion_mask=[1, 0, 0, 1],
        logprobs=[0.0] * 4,
        truncated=False,
        policy_version=0,
    )
    batch = collate([sample], tokenizer.pad_token_id)
    every_token = dataclasses.replace(batch, mask=torch.ones_like(batch.mask))
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    learner = Learner(accelerator, model, optimizer, scheduler)
    with torch.no_grad():
        before, _ = policy_forward(model, every_token, 1.0)
    advantages = torch.zeros_like(batch.mask)
    advantages[0, advantage_at] = 1.0
    buffer = RolloutBuffer(
        batch, [0], before * batch.mask, None, advantages, torch.zeros_like(advantages)
    )
    settings = PPOSettings(
        advantage="grpo", whiten_advantages=False, mini_batch_size=1, micro_batch_size=1
    )
    ppo_update(learner, buffer, settings, 1.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        after, _ = policy_forward(model, every_token, 1.0)
    change = (after - before).abs()[0]
    if moves:
        assert float(change[advantage_at]) > 1e-3
    else:
        assert float(change.max()) < 1e-6, change.tolist()
