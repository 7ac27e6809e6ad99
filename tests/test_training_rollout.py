"""Rollouts with the live policy: rows line up with the dialogue, errors are kept apart, and
the lockstep scheduler keeps processes in step."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage
from autogen_core import CancellationToken
from scripted_user import ScriptedUser
from training_users import PERSONAS, scripted_users, tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlver_agents.episodes.episode import EpisodeContext
from rlver_agents.models.engine import Engine, EngineKey, register_engine, unregister_engine
from rlver_agents.models.records import SamplingParams
from training.lockstep import Completion, LockstepEngine, LockstepScheduler
from training.ppo import policy_segments
from training.rewards import make_format_reward, outcome_reward, process_reward
from training.rollout import POLICY_ENGINE, Rollout, RolloutStats, plan_jobs


@pytest.fixture(name="live_policy")
def live_policy_fixture(tiny_checkpoint: Path) -> Iterator[Engine]:
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    engine = register_engine(Engine.from_model(model, tokenizer, name=POLICY_ENGINE))
    yield engine
    unregister_engine(engine)
    engine.shutdown()


async def test_rows_line_up_with_the_dialogue_and_its_logprobs(
    tiny_checkpoint: Path, live_policy: Engine, tmp_path: Path
) -> None:
    config = tiny_config(tiny_checkpoint, tmp_path)
    rollout = Rollout(config, personas=PERSONAS, users=scripted_users())
    jobs = plan_jobs(["p0", "p0", "p1"], rollout.personas)
    episodes = await rollout.play(jobs, seed=3)
    eos = live_policy.tokenizer.eos_token_id
    rows = rollout.rows(episodes, filler_id=eos)

    assert [(r.persona_id, r.sample) for r in rows] == [("p0", 0), ("p0", 1), ("p1", 0)]
    for episode, row in zip(episodes, rows, strict=True):
        assert episode.ok and row.final_score == episode.final_score
        n = len(row.completion_ids)
        assert len(row.env_mask) == n and len(row.logprobs) == n
        agent_turns = [t for t in episode.turns if t.speaker == "agent"]
        first = agent_turns[0].generations
        assert first is not None and row.prompt_ids == first[0].prompt_token_ids
        # every policy segment is one agent message, token for token
        spans = policy_segments(row.env_mask)
        assert len(spans) == len(agent_turns) == row.num_turns == 2
        for (start, end), turn in zip(spans, agent_turns, strict=True):
            ids = row.completion_ids[start:end]
            if ids[-1] == eos:
                ids = ids[:-1]
            assert live_policy.tokenizer.decode(ids, skip_special_tokens=False) == turn.text
        # the user's turns sit between the segments with mask 0 and logprob 0
        user_text = live_policy.tokenizer.decode(row.completion_ids[spans[0][1] : spans[1][0]])
        assert "hello 1" in user_text
        assert all(lp == 0.0 for lp, m in zip(row.logprobs, row.env_mask, strict=True) if not m)
        # the sequence ends on a policy token: the end-of-turn unless the turn was cut short
        assert row.env_mask[-1] == 1
        assert row.truncated or row.completion_ids[-1] == eos
        assert row.emotion[0] == 30 and len(row.emotion) == 3

        # the recorded logprobs are the sampling policy's: a forward pass reproduces them
        ids = torch.tensor([row.prompt_ids + row.completion_ids])
        with torch.no_grad():
            logits = live_policy.model(input_ids=ids).logits[0, len(row.prompt_ids) - 1 : -1]
        scored = torch.log_softmax(logits / config.rollout.temperature, dim=-1)
        picked = scored.gather(1, torch.tensor(row.completion_ids).unsqueeze(1)).squeeze(1)
        for got, want, m in zip(picked.tolist(), row.logprobs, row.env_mask, strict=True):
            if m:
                assert got == pytest.approx(want, abs=1e-4)


async def test_errored_dialogues_keep_their_place_and_get_no_score(
    tiny_checkpoint: Path, live_policy: Engine, tmp_path: Path
) -> None:
    config = tiny_config(tiny_checkpoint, tmp_path)
    scripted = scripted_users()

    def users(ctx: EpisodeContext) -> ScriptedUser:
        if ctx.persona.id == "p1":
            raise RuntimeError("simulator down")
        return scripted(ctx)

    rollout = Rollout(config, personas=PERSONAS, users=users)
    episodes = await rollout.play(plan_jobs(["p0", "p1", "p0"], rollout.personas), seed=0)
    rows = rollout.rows(episodes, filler_id=live_policy.tokenizer.eos_token_id)

    assert [r.persona_id for r in rows] == ["p0", "p1", "p0"]
    broken = rows[1]
    assert broken.final_score is None and broken.termination == "error"
    assert "simulator down" in (broken.error or "")
    assert set(broken.env_mask) == {0} and broken.completion_ids
    stats = RolloutStats.of(episodes)
    assert (stats.dialogues, stats.scored, stats.errored) == (3, 2, 1)
    assert stats.metrics()["rollout/final_score_mean"] == 30.0

    columns = {
        "completions": ["", "", ""],
        "final_score": [r.final_score for r in rows],
        "emotion": [r.emotion for r in rows],
        "format_violations": [1, 1, 0],
    }
    assert outcome_reward(**columns) == [0.3, None, 0.3]
    assert process_reward(**columns) == [0.0, None, 0.0]
    assert make_format_reward(0.1)(**columns) == [-0.1, None, 0.0]


class _SlowUser(ScriptedUser):
    """Answers after its own delay, so dialogues drift apart as a user voice makes them."""

    def __init__(self, delay: float, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._delay = delay

    async def on_messages_stream(
        self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
    ) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | Response, None]:
        await asyncio.sleep(self._delay)
        async for item in super().on_messages_stream(messages, cancellation_token):
            yield item


@pytest.mark.parametrize("rounds", [True, False])
async def test_in_rounds_each_turn_of_drifting_dialogues_decodes_as_one_batch(
    tiny_checkpoint: Path, live_policy: Engine, tmp_path: Path, rounds: bool
) -> None:
    config = tiny_config(tiny_checkpoint, tmp_path)
    config.rollout.rounds = rounds
    delays = iter([0.0, 0.15, 0.3, 0.45])

    def users(ctx: EpisodeContext) -> ScriptedUser:
        return _SlowUser(next(delays), ctx.rules, line=lambda turn: f"hello {turn}")

    rollout = Rollout(config, personas=PERSONAS, users=users)
    episodes = await rollout.play(plan_jobs(["p0", "p0", "p1", "p1"], rollout.personas), seed=0)

    assert all(e.ok and e.num_turns == 2 for e in episodes)
    if rounds:
        assert live_policy.batch_sizes == [4, 4]
    else:
        assert len(live_policy.batch_sizes) > 2


def test_jobs_number_samples_per_persona() -> None:
    personas = {p.id: p for p in PERSONAS}
    jobs = plan_jobs(["p0", "p0", "p1", "p1", "p0"], personas)
    assert [(p.id, s) for p, s in jobs] == [("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1), ("p0", 2)]
    with pytest.raises(KeyError, match="nope"):
        plan_jobs(["nope"], personas)


class FakeCollective:
    """Two 'processes' (threads) whose collectives meet at a barrier, as NCCL would."""

    def __init__(self, size: int) -> None:
        self.barrier = threading.Barrier(size, timeout=30)
        self.done: list[bool] = [False] * size
        self.widths: list[list[int]] = [[] for _ in range(size)]

    def all_done(self, rank: int) -> Callable[[bool], bool]:
        def call(done: bool) -> bool:
            self.done[rank] = done
            self.barrier.wait()
            result = all(self.done)
            self.barrier.wait()
            return result

        return call

    def generate(self, rank: int) -> Callable[[list[list[int]]], list[Completion]]:
        def call(prompts: list[list[int]]) -> list[Completion]:
            self.widths[rank].append(len(prompts))
            self.barrier.wait()
            return [Completion([p[-1] + 100, 2], [-0.5, -0.1]) for p in prompts]

        return call


def test_lockstep_rounds_match_across_processes_with_uneven_dialogues() -> None:
    collective = FakeCollective(2)
    turns = {0: [1, 2, 3], 1: [4, 1, 1]}
    answers: dict[int, list[int]] = {0: [], 1: []}

    async def process(rank: int) -> int:
        scheduler = LockstepScheduler(
            collective.generate(rank), collective.all_done(rank), width=3, filler=[0]
        )
        rng = random.Random(rank)

        async def dialogue(number: int, count: int) -> None:
            for turn in range(count):
                await asyncio.sleep(rng.random() / 100)  # the simulated user's turn
                completion = await scheduler.request([number, turn])
                answers[rank].append(completion.completion_ids[0])
            scheduler.dialogue_ended()

        async with asyncio.TaskGroup() as group:
            for number, count in enumerate(turns[rank]):
                group.create_task(dialogue(number, count))
            group.create_task(scheduler.run())
        return scheduler.rounds

    results: dict[int, int] = {}
    threads = [
        threading.Thread(target=lambda r=rank: results.__setitem__(r, asyncio.run(process(r))))
        for rank in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # one generate call per turn of the longest dialogue anywhere, the same on both
    assert results == {0: 4, 1: 4}
    assert collective.widths == [[3, 3, 3, 3], [3, 3, 3, 3]]
    # every request got the completion of its own prompt (its turn number + 100)
    assert sorted(answers[0]) == [100, 100, 100, 101, 101, 102]
    assert sorted(answers[1]) == [100, 100, 100, 101, 102, 103]


async def test_the_lockstep_engine_records_what_the_generator_sampled(
    tiny_checkpoint: Path,
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    eos = tokenizer.eos_token_id
    scheduler = LockstepScheduler(
        lambda prompts: [Completion([5, 6, eos], [-1.0, -2.0, -0.5]) for _ in prompts],
        lambda done: done,
        width=1,
        filler=[eos],
    )
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8)
    engine = LockstepEngine(
        EngineKey("live:lockstep", "float32", "cpu"), model, tokenizer, scheduler, sampling, 7
    )
    runner = asyncio.create_task(scheduler.run())
    output = await engine.generate([1, 2, 3], sampling)
    scheduler.dialogue_ended()
    await runner
    assert output.completion_ids == [5, 6, eos] and output.finish_reason == "stop"
    assert output.logprobs == [-1.0, -2.0, -0.5] and output.policy_version == 7
    with pytest.raises(ValueError, match="temperature"):
        await engine.generate([1], SamplingParams(temperature=0.7))
    with pytest.raises(ValueError, match="temperature 1"):
        LockstepEngine(
            EngineKey("live:x", "float32", "cpu"),
            model,
            tokenizer,
            scheduler,
            SamplingParams(temperature=0.5),
            0,
        )
