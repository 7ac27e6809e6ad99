"""The dialogue loop inside the real verl: tokens, masks, logprobs, reward and advantages."""

from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import torch
import yaml
from conftest import (
    RESPONSE_LENGTH,
    TURN_TOKENS,
    ScriptedUsers,
    TinyPolicyServer,
    build_loop,
    english_persona,
    sampling_params,
)
from omegaconf import DictConfig, OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, AgentLoopWorker
from verl.protocol import DataProto
from verl.trainer.ppo import core_algos
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.dataset.rl_dataset import RLHFDataset

from rlver_agents.agents.agent import default_system_message
from rlver_agents.emotion import RLVER_TRAIN
from rlver_agents.episodes.episode import Episode, run_episode
from training.verl import agent_loop
from training.verl.data import persona_rows, write_parquet
from training.verl.policy_client import PolicyStreamError, TokenStream
from training.verl.token_budget import count_dialogue

# Two dialogues of one persona under rlver_train (start 30, at most 9 appraised turns): one runs
# all nine turns, one reaches 100 after seven.
MIXED = [5, -3, 10, 8, 10, 10, 10, 10, 0]
RISING = [10, 10, 10, 10, 10, 10, 10]


def segments(mask: list[int]) -> list[tuple[int, int, int]]:
    """Runs of equal mask values as (mask, start, end)."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for value, run in groupby(mask):
        length = len(list(run))
        runs.append((value, start, start + length))
        start += length
    return runs


@pytest.fixture(scope="module")
def dataset_row(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> dict[str, Any]:
    """The persona's row as verl's RLHFDataset hands it to the agent loop."""
    folder = tmp_path_factory.mktemp("rows")
    path = write_parquet(persona_rows([english_persona()], split="test"), folder / "rows.parquet")
    config = OmegaConf.create({"cache_dir": str(folder / "cache"), "max_prompt_length": 1024})
    row = RLHFDataset(str(path), tiny_tokenizer, config)[0]
    row.pop("dummy_tensor")
    return row


class Played:
    """A loop's output and the episode record the loop played it from."""

    def __init__(self, output: AgentLoopOutput, episode: Episode) -> None:
        self.output = output
        self.episode = episode
        self.agent_lines = [t.text for t in episode.turns if t.speaker == "agent"]
        self.user_lines = [t.text for t in episode.turns if t.speaker == "user"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def played(
    trainer_config: DictConfig, tiny_model: Any, tiny_tokenizer: Any, dataset_row: dict[str, Any]
) -> tuple[TinyPolicyServer, list[Played]]:
    server = TinyPolicyServer(tiny_model, tiny_tokenizer)
    episodes: list[Episode] = []

    async def recording_run_episode(*args: Any, **kwargs: Any) -> Episode:
        episodes.append(await run_episode(*args, **kwargs))
        return episodes[-1]

    results = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(agent_loop, "run_episode", recording_run_episode)
        for changes in (MIXED, RISING):
            loop = build_loop(
                trainer_config,
                server,
                tiny_tokenizer,
                settings={"max_tokens_per_turn": TURN_TOKENS},
                users=ScriptedUsers(changes),
            )
            output = await loop.run(sampling_params(trainer_config), **dataset_row)
            results.append(Played(output, episodes[-1]))
    return server, results


def test_run_returns_a_valid_output(played: tuple[TinyPolicyServer, list[Played]]) -> None:
    _, results = played
    mixed, rising = (r.output for r in results)
    for output in (mixed, rising):
        assert isinstance(AgentLoopOutput.model_validate(output.model_dump()), AgentLoopOutput)
        n = len(output.response_ids)
        assert 0 < n <= RESPONSE_LENGTH
        assert len(output.response_mask) == n and len(output.response_logprobs or []) == n
        assert set(output.response_mask) == {0, 1}
        assert output.response_mask[-1] == 1
    assert mixed.reward_score == pytest.approx(0.90)
    assert mixed.extra_fields["emotion_trajectory"] == [30, 35, 32, 42, 50, 60, 70, 80, 90, 90]
    assert mixed.extra_fields["termination"] == "max_turns"
    assert mixed.extra_fields["final_score"] == 90 and mixed.extra_fields["failed"] is False
    assert mixed.num_turns == 2 * RLVER_TRAIN.max_turns + 1
    assert rising.reward_score == pytest.approx(1.0)
    assert rising.extra_fields["termination"] == "success"
    assert rising.extra_fields["emotion_trajectory"][-1] == 100
    assert rising.num_turns == 2 * 7 + 1


def test_masks_split_the_stream_into_agent_and_user_messages(
    played: tuple[TinyPolicyServer, list[Played]], tiny_tokenizer: Any
) -> None:
    _, results = played
    endings: set[bool] = set()
    for result in results:
        output = result.output
        agent_lines, user_lines = result.agent_lines, result.user_lines
        prompt = tiny_tokenizer.decode(output.prompt_ids, skip_special_tokens=False)
        system = default_system_message("en")
        assert prompt == (
            f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n{user_lines[0]}<|im_end|>\n<|im_start|>assistant\n"
        )
        runs = segments(output.response_mask)
        policy = [output.response_ids[a:b] for value, a, b in runs if value == 1]
        users = [output.response_ids[a:b] for value, a, b in runs if value == 0]
        assert len(policy) == len(agent_lines) and len(users) == len(agent_lines) - 1
        for ids, line in zip(policy, agent_lines, strict=True):
            if ids[-1] == tiny_tokenizer.eos_token_id:
                ids = ids[:-1]
            assert tiny_tokenizer.decode(ids, skip_special_tokens=False) == line
        # The opening is in the prompt and the user's closing reply is never appended. After a
        # turn that ended on <|im_end|> verl's Qwen builder adds the template's newline (mask
        # 0); a turn cut at the token cap is followed by the next user message directly.
        endings |= {ids[-1] == tiny_tokenizer.eos_token_id for ids in policy[:-1]}
        for before, ids, line in zip(policy, users, user_lines[1:-1], strict=False):
            newline = "\n" if before[-1] == tiny_tokenizer.eos_token_id else ""
            assert tiny_tokenizer.decode(ids, skip_special_tokens=False) == (
                f"{newline}<|im_start|>user\n{line}<|im_end|>\n<|im_start|>assistant\n"
            )
    assert endings == {True, False}, "both a stopped and a capped turn should have been played"


def test_logprobs_are_those_of_the_context_the_policy_saw(
    played: tuple[TinyPolicyServer, list[Played]], tiny_model: Any
) -> None:
    """One forward pass over prompt + response reproduces every sampled token's logprob."""
    server, results = played
    for result in results:
        output = result.output
        ids = torch.tensor([output.prompt_ids + output.response_ids])
        with torch.no_grad():
            logits = tiny_model(ids).logits[0].float()
        offset = len(output.prompt_ids)
        mask = output.response_mask
        logprobs = output.response_logprobs or []
        for value, start, end in segments(mask):
            for position in range(start, end):
                if value == 0:
                    assert logprobs[position] == 0.0
                    continue
                step = position - start
                scores = server.constrain(logits[offset + position - 1], step)
                expected = torch.log_softmax(scores, dim=-1)[output.response_ids[position]]
                assert logprobs[position] == pytest.approx(float(expected), abs=1e-4)


def _worker(tokenizer: Any, config: DictConfig) -> AgentLoopWorker:
    """An ``AgentLoopWorker`` with just what its padding and batching steps read.

    Built without ``__init__`` (which starts Ray-side services) so that verl's own
    ``_agent_loop_postprocess`` and ``_postprocess`` turn the outputs into a training batch.
    """
    worker = object.__new__(AgentLoopWorker)
    worker.tokenizer = tokenizer
    worker.processor = None
    worker.rollout_config = config.actor_rollout_ref.rollout
    worker.reward_loop_worker_handles = None
    worker.distillation_enabled = False
    worker.mm_processor_kwargs = {}
    return worker


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def batch(
    played: tuple[TinyPolicyServer, list[Played]],
    tiny_tokenizer: Any,
    trainer_config: DictConfig,
    dataset_row: dict[str, Any],
) -> DataProto:
    _, results = played
    worker = _worker(tiny_tokenizer, trainer_config)
    padded = [
        await worker._agent_loop_postprocess(r.output, False, raw_prompt=dataset_row["raw_prompt"])
        for r in results
    ]
    data = worker._postprocess(padded)
    data.non_tensor_batch["uid"] = np.array(["persona"] * len(results), dtype=object)
    return data


def test_verl_puts_the_reward_on_the_last_policy_token(
    batch: DataProto, played: tuple[TinyPolicyServer, list[Played]]
) -> None:
    _, results = played
    scores = batch.batch["rm_scores"]
    mask = batch.batch["response_mask"]
    for row, result in enumerate(results):
        last = len(result.output.response_ids) - 1
        assert scores[row, last] == pytest.approx(result.output.reward_score)
        assert mask[row, last] == 1
        assert torch.count_nonzero(scores[row]) == 1
        assert mask[row, last + 1 :].sum() == 0
    assert list(batch.non_tensor_batch["termination"]) == ["max_turns", "success"]


def test_gae_gives_user_tokens_no_say_in_the_losses(
    batch: DataProto, trainer_config: DictConfig
) -> None:
    """verl's GAE carries the reward back across user turns; its losses ignore user tokens."""
    mask = batch.batch["response_mask"].float()
    rewards = batch.batch["rm_scores"]
    zero = torch.zeros_like(rewards)
    advantages, returns = core_algos.compute_gae_advantage_return(
        token_level_rewards=rewards, values=zero, response_mask=mask, gamma=1.0, lam=1.0
    )
    final = rewards.sum(dim=-1, keepdim=True)
    # With a zero critic every policy token's return is the dialogue's reward, first turn too.
    assert torch.allclose(returns[mask == 1], final.expand_as(returns)[mask == 1])

    values = torch.randn(rewards.shape, generator=torch.Generator().manual_seed(0))
    advantages, returns = core_algos.compute_gae_advantage_return(
        token_level_rewards=rewards, values=values, response_mask=mask, gamma=1.0, lam=1.0
    )
    log_prob = torch.zeros_like(rewards, requires_grad=True)
    actor = omega_conf_to_dataclass(trainer_config.actor_rollout_ref.actor)
    loss, _ = core_algos.compute_policy_loss_vanilla(
        old_log_prob=torch.zeros_like(rewards),
        log_prob=log_prob,
        advantages=advantages,
        response_mask=mask,
        loss_agg_mode="token-mean",
        config=actor,
    )
    loss.backward()
    assert log_prob.grad is not None
    assert torch.all(log_prob.grad[mask == 0] == 0)
    assert torch.count_nonzero(log_prob.grad[mask == 1]) == int(mask.sum())

    vpreds = values.clone().requires_grad_(True)
    value_loss, _ = core_algos.compute_value_loss(
        vpreds=vpreds, returns=returns, values=values, response_mask=mask, cliprange_value=0.5
    )
    value_loss.backward()
    assert vpreds.grad is not None and torch.all(vpreds.grad[mask == 0] == 0)


def test_grpo_gives_user_tokens_zero_advantage(batch: DataProto) -> None:
    mask = batch.batch["response_mask"]
    advantages, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=batch.batch["rm_scores"],
        response_mask=mask,
        index=batch.non_tensor_batch["uid"],
    )
    assert torch.all(advantages[mask == 0] == 0)
    for row in range(advantages.shape[0]):
        policy = advantages[row][mask[row] == 1]
        assert torch.allclose(policy, policy[0].expand_as(policy)) and policy[0] != 0
    # The lower reward (0.90 against 1.00) gets the negative advantage.
    assert advantages[0][mask[0] == 1][0] < 0 < advantages[1][mask[1] == 1][0]


def test_every_generation_was_capped_and_asked_for_logprobs(
    played: tuple[TinyPolicyServer, list[Played]],
) -> None:
    server, results = played
    assert len(server.requests) == sum(len(r.agent_lines) for r in results)
    for request in server.requests:
        assert request["sampling"]["max_tokens"] == TURN_TOKENS
        assert request["sampling"]["logprobs"] is True


async def test_a_context_that_is_not_append_only_is_refused(
    trainer_config: DictConfig, tiny_model: Any, tiny_tokenizer: Any
) -> None:
    """The stream refuses a chat whose earlier user message changed, instead of mis-masking."""
    server = TinyPolicyServer(tiny_model, tiny_tokenizer)
    loop = build_loop(trainer_config, server, tiny_tokenizer)
    stream = TokenStream(
        loop=loop, request_id="r", sampling_params={"logprobs": True}, max_tokens_per_turn=4
    )
    chat = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hello"}]
    await stream.extend(chat)
    turn = await stream.generate(frozenset({tiny_tokenizer.eos_token_id}))
    changed = [chat[0], {"role": "user", "content": "hi"}]
    with pytest.raises(PolicyStreamError, match="message 1 of the agent's context changed"):
        await stream.extend(
            [
                *changed,
                {"role": "assistant", "content": turn.text},
                {"role": "user", "content": "x"},
            ]
        )


async def test_an_offline_simulator_from_a_run_configuration_plays_through(
    trainer_config: DictConfig,
    tiny_model: Any,
    tiny_tokenizer: Any,
    wide_checkpoint: Path,
    dataset_row: dict[str, Any],
    tmp_path: Path,
) -> None:
    """No scripted user: the run configuration's own simulated user (a local voice model and
    the offline embedding appraiser), built by the same builders as ``rlver eval``."""
    voice = {"kind": "local", "model": str(wide_checkpoint), "max_new_tokens": 8, "seed": 3}
    run = tmp_path / "offline.yaml"
    run.write_text(
        yaml.safe_dump({"simulator": {"model": voice, "appraiser": {"kind": "embedding"}}})
    )
    loop = build_loop(
        trainer_config,
        TinyPolicyServer(tiny_model, tiny_tokenizer, seed=5),
        tiny_tokenizer,
        settings={"run_config": str(run), "max_tokens_per_turn": TURN_TOKENS},
    )
    output = await loop.run(sampling_params(trainer_config), **dataset_row)
    trajectory = output.extra_fields["emotion_trajectory"]
    assert output.extra_fields["failed"] is False and trajectory[0] == RLVER_TRAIN.initial_score
    assert output.reward_score == pytest.approx(max(trajectory[-1], 0) / 100)
    assert output.extra_fields["final_score"] == trajectory[-1]
    assert output.response_mask[-1] == 1
    assert sum(1 for value, _, _ in segments(output.response_mask) if value == 1) == (
        len(trajectory) - 1
    )


def test_token_budget_counts_what_a_verl_sample_holds(
    played: tuple[TinyPolicyServer, list[Played]], tiny_tokenizer: Any
) -> None:
    """The planning counts of docs/scale-out.md, checked against the loop's real streams.

    The prompt and the policy's tokens are exact; the user's share assumes the newline verl
    adds after an end-of-turn token, which a turn cut at the cap does not get.
    """
    _, results = played
    for result in results:
        output = result.output
        counts = count_dialogue(result.episode, english_persona(), tiny_tokenizer)
        assert counts.agent_turns == len(result.agent_lines)
        assert counts.prompt == len(output.prompt_ids)
        assert counts.policy == sum(output.response_mask)
        assert counts.stream == pytest.approx(
            len(output.prompt_ids) + len(output.response_ids), rel=0.05
        )
        assert counts.judge_prompt > 0
        assert counts.voice_prompt is None  # the run configuration's judge is a model
