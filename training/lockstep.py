"""Turn-by-turn lockstep generation for a generator that is a collective across processes.

TRL's ``vllm_generation.generate`` gathers prompts from every process (server mode) or from
the tensor-parallel group (colocate mode), so every process must call it the same number of
times with the same number of prompts. Dialogues do not cooperate with that on their own:
their lengths differ, and a process may finish all of its dialogues while another still has
some running.

:class:`LockstepScheduler` therefore advances the dialogues of one process in rounds. A round
starts when every unfinished dialogue of the process is waiting for the policy. Then, as a
collective, every process says whether it is done; if all are, the loop ends. Otherwise every
process makes exactly one ``generate`` call with exactly ``width`` prompts: its waiting
dialogues' prompts, padded with a filler prompt whose completion is thrown away. A process
whose dialogues have all ended keeps taking part with fillers until the others are done.

:class:`LockstepEngine` plugs the scheduler in where the in-process engine would sit, so the
agents, their ``LocalChatCompletionClient`` (chat template, append-only token stream, records)
and the episode runner are the same in both generation modes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from accelerate.utils import gather_object

from rlver_agents.models.engine import (
    LIVE_PREFIX,
    Engine,
    EngineKey,
    GenerationOutput,
    register_engine,
)
from rlver_agents.models.records import SamplingParams
from training.config import TrainConfig

POLICY_ENGINE = "policy"
"""Name of the live engine serving the policy (``live:policy``)."""


@dataclass(frozen=True)
class Completion:
    """One sampled completion: the ids and each id's sampling logprob."""

    completion_ids: list[int]
    logprobs: list[float]


GenerateFn = Callable[[list[list[int]]], list[Completion]]
"""Blocking batch generation; a collective (every process calls it with the same width)."""

AllDoneFn = Callable[[bool], bool]
"""Blocking collective: given this process's 'done', whether every process is done."""


def all_processes_done(done: bool) -> bool:
    """The :data:`AllDoneFn` over accelerate's processes."""
    return all(gather_object([done]))


def vllm_completions(generation: Any, prompts: list[list[int]]) -> list[Completion]:
    """One completion per prompt from TRL's ``VLLMGeneration`` (GRPOTrainer's, or PPO's own)."""
    _, completion_ids, logprobs, _ = generation.generate(
        prompts=prompts, images=None, num_generations=1
    )
    return [
        Completion(list(ids), [float(token[0]) for token in lps])
        for ids, lps in zip(completion_ids, logprobs, strict=True)
    ]


@dataclass
class _Waiting:
    prompt_ids: list[int]
    future: asyncio.Future[Completion]


class LockstepScheduler:
    """Rounds of one ``generate`` call per process, for ``width`` dialogues per process."""

    def __init__(
        self, generate: GenerateFn, all_done: AllDoneFn, *, width: int, filler: Sequence[int]
    ) -> None:
        if width < 1:
            raise ValueError(f"LockstepScheduler: width must be at least 1, got {width}")
        if not filler:
            raise ValueError("LockstepScheduler: the filler prompt is empty")
        self._generate = generate
        self._all_done = all_done
        self.width = width
        self._filler = list(filler)
        self._live = width
        self._waiting: list[_Waiting] = []
        self._changed = asyncio.Event()
        self.rounds = 0
        """Rounds (``generate`` calls) this process has made."""

    def dialogue_ended(self) -> None:
        """One of this process's dialogues has ended (finished or errored for good)."""
        if self._live == 0:
            raise RuntimeError("LockstepScheduler: more dialogues ended than were started")
        self._live -= 1
        self._changed.set()

    async def request(self, prompt_ids: Sequence[int]) -> Completion:
        """Wait for the next round and return this prompt's completion."""
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(list(prompt_ids), future))
        self._changed.set()
        return await future

    def _ready(self) -> bool:
        pending = [w for w in self._waiting if not w.future.cancelled()]
        return len(pending) >= self._live

    async def run(self) -> None:
        """Run rounds until every process has ended all of its dialogues."""
        while True:
            while not self._ready():
                self._changed.clear()
                await self._changed.wait()
            batch = [w for w in self._waiting if not w.future.cancelled()]
            self._waiting = []
            if len(batch) > self.width:
                raise RuntimeError(
                    f"LockstepScheduler: {len(batch)} prompts waiting, more than width {self.width}"
                )
            if self._all_done(self._live == 0):
                return
            prompts = [w.prompt_ids for w in batch]
            prompts += [self._filler] * (self.width - len(batch))
            try:
                completions = self._generate(prompts)
            except Exception as error:
                for waiting in batch:
                    waiting.future.set_exception(error)
                raise
            self.rounds += 1
            if len(completions) != len(prompts):
                raise RuntimeError(
                    f"LockstepScheduler: generate returned {len(completions)} completions for "
                    f"{len(prompts)} prompts"
                )
            for waiting, completion in zip(batch, completions, strict=False):
                if not waiting.future.done():
                    waiting.future.set_result(completion)


class LockstepEngine(Engine):
    """An engine whose generations go through a :class:`LockstepScheduler`.

    The wrapped model supplies the tokenizer's partner facts (stop ids, context length); the
    weights that sample are the generator's (vLLM's copy, synced by TRL before each rollout).
    ``params`` must match what the generator samples with, since those are the settings the
    records claim. vLLM reports only the sampling logprobs; at temperature 1 with no penalty
    they are also the raw model's, so that is the only setting allowed here.
    """

    def __init__(
        self,
        key: EngineKey,
        model: object,
        tokenizer: object,
        scheduler: LockstepScheduler,
        sampling: SamplingParams,
        policy_version: int,
    ) -> None:
        if sampling.temperature != 1.0 or sampling.repetition_penalty != 1.0:
            raise ValueError(
                "LockstepEngine: vLLM rollouts sample at temperature 1 with no repetition "
                f"penalty; got temperature {sampling.temperature}, penalty "
                f"{sampling.repetition_penalty}"
            )
        super().__init__(key, model, tokenizer)  # type: ignore[arg-type]
        self.scheduler = scheduler
        self.sampling = sampling
        self._policy_version = policy_version

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerationOutput:
        expected = (self.sampling.temperature, self.sampling.top_p)
        if (params.temperature, params.top_p) != expected or params.repetition_penalty != 1.0:
            raise ValueError(
                f"LockstepEngine: requests must sample as the generator does (temperature, "
                f"top_p = {expected}, no repetition penalty); got {params.temperature}, "
                f"{params.top_p}, penalty {params.repetition_penalty}"
            )
        completion = await self.scheduler.request(prompt_ids)
        ids = completion.completion_ids[: params.max_new_tokens]
        finish = "stop" if ids and ids[-1] in self.stop_ids else "length"
        logprobs = completion.logprobs[: len(ids)]
        return GenerationOutput(
            completion_ids=ids,
            logprobs=logprobs,
            raw_logprobs=logprobs,
            finish_reason=finish,
            policy_version=self._policy_version,
        )


def live_engine(model: Any, tokenizer: Any, current: Engine | None, batch: int) -> Engine:
    """``live:policy`` served in-process by the trainer's own model; ``current`` if it already
    serves this model, else a new engine, registered in its place. ``batch`` rows decode
    together at most: the rollout's concurrency, so a step's dialogues share one batch."""
    if current is not None and current.model is model:
        return current
    return register_engine(
        Engine.from_model(model, tokenizer, name=POLICY_ENGINE, max_batch_size=batch)
    )


def lockstep_engine(
    config: TrainConfig,
    model: Any,
    tokenizer: Any,
    generate: GenerateFn,
    *,
    width: int,
    device: str,
    policy_version: int,
) -> LockstepEngine:
    """``live:policy`` served by ``generate`` (vLLM) in rounds of ``width`` prompts per
    process, sampling as the configuration says; registered, with its scheduler attached."""
    scheduler = LockstepScheduler(
        generate, all_processes_done, width=width, filler=[tokenizer.eos_token_id]
    )
    sampling = SamplingParams(
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        max_new_tokens=config.rollout.max_new_tokens,
    )
    key = EngineKey(f"{LIVE_PREFIX}{POLICY_ENGINE}", config.policy.dtype, device)
    engine = LockstepEngine(
        key, model, tokenizer, scheduler, sampling, policy_version=policy_version
    )
    register_engine(engine)
    return engine
