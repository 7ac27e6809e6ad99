"""GRPO on whole dialogues through TRL's ``GRPOTrainer`` and a ``rollout_func``.

Each dataset row is a persona id. TRL hands the rollout function every persona
``num_generations`` times in a row; each entry becomes one dialogue between the live policy and
a simulated user, returned as one token stream (the dialogue unit): the policy's sampled
tokens with ``env_mask`` 1 and the user's templated turns with 0, with the sampling logprobs.
The reward functions of :mod:`training.rewards` read the dialogue's final score, emotion
trajectory and format flags from extra columns. The group-relative advantage, the clipped loss
and the optimizer are TRL's.

On the CPU the trainer's own model generates in-process (``live:policy``); on GPUs with
``rollout.generation: vllm`` TRL's vLLM backend generates, one lockstep round per agent turn
(:mod:`training.lockstep`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
)
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig, GRPOTrainer

from rlver_agents.models.engine import LIVE_PREFIX, Engine, EngineKey, register_engine
from rlver_agents.models.records import SamplingParams
from training.config import TrainConfig, TrainConfigError
from training.grpo_settings import GRPOSettings
from training.lockstep import Completion, LockstepEngine, LockstepScheduler
from training.rewards import RewardFunc, make_format_reward, outcome_reward, process_reward
from training.rollout import POLICY_ENGINE, DialogueRow, Rollout, RolloutStats, plan_jobs

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL
_log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"
"""Sub-directory of ``output_dir`` holding the trained policy as a plain checkpoint."""


# --- the policy ------------------------------------------------------------------------------


def load_policy(config: TrainConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the policy for training.

    A checkpoint made from a GGUF file can still carry ``quantization_config`` in its
    ``config.json``, and Trainer refuses to fine-tune a model marked quantised: the entry is
    dropped, since the weights themselves are plain floats.
    """
    path = config.policy.path()
    hf_config = AutoConfig.from_pretrained(path)
    if getattr(hf_config, "quantization_config", None) is not None:
        del hf_config.quantization_config
    model = AutoModelForCausalLM.from_pretrained(
        path, config=hf_config, dtype=getattr(torch, config.policy.dtype)
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        raise TrainConfigError(f"policy.model: the tokenizer of {path} has no chat template")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _peft_config(config: TrainConfig) -> Any:
    if config.policy.lora is None:
        return None
    from peft import LoraConfig

    lora = config.policy.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


# --- TRL settings ----------------------------------------------------------------------------


def grpo_arguments(config: TrainConfig, reward_weights: Sequence[float]) -> GRPOConfig:
    """TRL's ``GRPOConfig`` from the training configuration.

    ``mask_truncated_completions`` stays off: TRL decides truncation from the last token of
    the whole dialogue, which says nothing about the turns before it; ``rollout.mask_truncated``
    does it per dialogue instead.
    """
    settings = config.grpo or GRPOSettings()
    known = set(GRPOConfig.__dataclass_fields__)
    unknown = sorted(set(settings.trl) - known)
    if unknown:
        raise TrainConfigError(f"grpo.trl: {unknown} are not fields of trl.GRPOConfig")
    named = settings.model_dump(exclude={"trl"})
    return GRPOConfig(
        output_dir=str(config.output_dir),
        seed=config.seed,
        max_steps=config.max_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        use_cpu=config.use_cpu,
        bf16=config.bf16,
        num_generations=config.rollout.group_size,
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        max_completion_length=config.rollout.max_new_tokens,
        logging_steps=config.logging.logging_steps,
        report_to=["tensorboard"] if config.logging.tensorboard else "none",
        log_completions=config.logging.log_completions,
        gradient_checkpointing=config.policy.gradient_checkpointing,
        use_vllm=config.rollout.generation == "vllm",
        reward_weights=list(reward_weights),
        mask_truncated_completions=False,
        **named,
        **settings.trl,
    )


def reward_functions(config: TrainConfig) -> tuple[list[RewardFunc], list[float]]:
    """The configured reward terms and their weights (terms with weight 0 are left out)."""
    rewards = config.rewards
    terms: list[tuple[RewardFunc, float]] = [
        (outcome_reward, rewards.outcome),
        (process_reward, rewards.process),
        (make_format_reward(rewards.format_penalty), rewards.format),
    ]
    chosen = [(func, weight) for func, weight in terms if weight != 0]
    return [f for f, _ in chosen], [w for _, w in chosen]


# --- metrics ---------------------------------------------------------------------------------


class StepMetrics:
    """Values gathered between two log calls, averaged when logged."""

    def __init__(self) -> None:
        self._values: dict[str, list[float]] = defaultdict(list)

    def add(self, name: str, value: float) -> None:
        self._values[name].append(value)

    def pop_means(self) -> dict[str, float]:
        means = {k: sum(v) / len(v) for k, v in self._values.items() if v}
        self._values.clear()
        return means


class RolloutClock(TrainerCallback):
    """Splits each optimizer step's wall time into rollout and update."""

    def __init__(self, metrics: StepMetrics) -> None:
        self.metrics = metrics
        self.rollout_s = 0.0
        self._started = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._started = time.perf_counter()
        self.rollout_s = 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        total = time.perf_counter() - self._started
        self.metrics.add("time/rollout_s", self.rollout_s)
        self.metrics.add("time/update_s", total - self.rollout_s)
        self.metrics.add("time/step_s", total)


class TimeLimit(TrainerCallback):
    """Ends training (with a checkpoint) after the first step that finishes past the limit."""

    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self._deadline: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.minutes is not None:
            self._deadline = time.monotonic() + 60 * self.minutes

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._deadline is not None and time.monotonic() > self._deadline:
            control.should_training_stop = True
            control.should_save = True


class MetricsFile(TrainerCallback):
    """Appends every training log to ``output_dir/metrics.jsonl``, one object per line.

    The same file for every algorithm, so curves can be plotted without TensorBoard.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class PolicyPause(TrainerCallback):
    """Holds the live engine's pause while the optimizer changes the weights.

    No generation can run on half-updated weights, and ``policy_version`` moves once per
    optimizer step, so every generation record names the weights that produced it.
    """

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self._held = ExitStack()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.engine is not None:
            self._held.enter_context(self.engine.pause(bump_version=True))

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._held.close()


class DialogueGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose logs also carry the rollout's dialogue metrics and step times."""

    def __init__(self, *args: Any, step_metrics: StepMetrics, **kwargs: Any) -> None:
        self.step_metrics = step_metrics
        super().__init__(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            logs.update(self.step_metrics.pop_means())
        super().log(logs, start_time)


# --- the rollout function --------------------------------------------------------------------


def _rollout_seed(seed: int, step: int, process: int, call: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{step}:{process}:{call}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") % (2**31)


def _vllm_generate(trainer: GRPOTrainer) -> Any:
    """TRL's vLLM generation as a lockstep ``generate``: one completion per prompt."""

    def generate(prompts: list[list[int]]) -> list[Completion]:
        _, completion_ids, logprobs, _ = trainer.vllm_generation.generate(
            prompts=prompts, images=None, num_generations=1
        )
        return [
            Completion(list(ids), [float(token[0]) for token in lps])
            for ids, lps in zip(completion_ids, logprobs, strict=True)
        ]

    return generate


def _all_done(done: bool) -> bool:
    return all(gather_object([done]))


class GRPORolloutFunction:
    """The ``rollout_func`` handed to TRL: persona ids in, one dialogue row per entry out."""

    def __init__(
        self,
        rollout: Rollout,
        metrics: StepMetrics,
        clock: RolloutClock,
        pause: PolicyPause,
    ) -> None:
        self.rollout = rollout
        self.metrics = metrics
        self.clock = clock
        self.pause = pause
        self.calls = 0
        self.last_rows: list[DialogueRow] = []
        """The rows of the latest call (for tests and inspection)."""

    def _local_engine(self, trainer: GRPOTrainer) -> Engine:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if self.pause.engine is None or self.pause.engine.model is not model:
            engine = Engine.from_model(model, trainer.processing_class, name=POLICY_ENGINE)
            self.pause.engine = register_engine(engine)
        return self.pause.engine

    def _lockstep_engine(self, trainer: GRPOTrainer, width: int) -> LockstepEngine:
        config = self.rollout.config
        tokenizer = trainer.processing_class
        model = trainer.accelerator.unwrap_model(trainer.model)
        scheduler = LockstepScheduler(
            _vllm_generate(trainer), _all_done, width=width, filler=[tokenizer.eos_token_id]
        )
        sampling = SamplingParams(
            temperature=config.rollout.temperature,
            top_p=config.rollout.top_p,
            max_new_tokens=config.rollout.max_new_tokens,
        )
        device = str(trainer.accelerator.device)
        key = EngineKey(f"{LIVE_PREFIX}{POLICY_ENGINE}", config.policy.dtype, device)
        engine = LockstepEngine(
            key, model, tokenizer, scheduler, sampling, policy_version=trainer.state.global_step
        )
        register_engine(engine)
        return engine

    def __call__(self, prompts: list[Any], trainer: GRPOTrainer) -> dict[str, list[Any]]:
        started = time.perf_counter()
        config = self.rollout.config
        jobs = plan_jobs([str(p) for p in prompts], self.rollout.personas)
        seed = _rollout_seed(
            config.seed, trainer.state.global_step, trainer.accelerator.process_index, self.calls
        )
        self.calls += 1
        scheduler = None
        if config.rollout.generation == "vllm":
            scheduler = self._lockstep_engine(trainer, len(jobs)).scheduler
        else:
            self._local_engine(trainer)
        episodes = asyncio.run(self.rollout.play(jobs, seed, scheduler=scheduler))
        filler = trainer.processing_class.eos_token_id
        rows = self.rollout.rows(episodes, filler_id=filler)
        self.last_rows = rows
        self._record(rows, trainer)
        for row in rows:
            if row.error is not None:
                _log.warning(
                    "dialogue %s/%d errored and gets no gradient: %s",
                    row.persona_id,
                    row.sample,
                    row.error,
                )
        self.clock.rollout_s += time.perf_counter() - started
        return {
            "prompt_ids": [r.prompt_ids for r in rows],
            "completion_ids": [r.completion_ids for r in rows],
            "logprobs": [r.logprobs for r in rows],
            "env_mask": [r.env_mask for r in rows],
            # TRL consumes env_mask; reward functions see the same mask under this name
            "policy_mask": [r.env_mask for r in rows],
            "persona_id": [r.persona_id for r in rows],
            "final_score": [r.final_score for r in rows],
            "emotion": [r.emotion for r in rows],
            "num_turns": [r.num_turns for r in rows],
            "termination": [r.termination for r in rows],
            "format_violations": [r.format_violations for r in rows],
            "truncated": [r.truncated for r in rows],
        }

    def _record(self, rows: Sequence[DialogueRow], trainer: GRPOTrainer) -> None:
        """Sum the batch's dialogue statistics over every process, then keep their rates."""
        local = torch.tensor(RolloutStats.of(rows).vector(), device=trainer.accelerator.device)
        total = trainer.accelerator.reduce(local, reduction="sum")
        stats = RolloutStats.from_vector(total.tolist())
        for name, value in stats.metrics().items():
            self.metrics.add(name, value)
        if stats.errored:
            _log.warning(
                "%d of %d dialogues errored this rollout; they are masked out, not scored 0",
                stats.errored,
                stats.dialogues,
            )


# --- the run ---------------------------------------------------------------------------------


def build_trainer(
    config: TrainConfig,
    *,
    rollout: Rollout | None = None,
    extra_rewards: Sequence[tuple[RewardFunc, float]] = (),
) -> tuple[DialogueGRPOTrainer, GRPORolloutFunction]:
    """A ready ``GRPOTrainer`` and its rollout function.

    ``extra_rewards`` adds reward functions (with weights) to the configured ones; a test or a
    user experiment can reward anything the rollout columns show.
    """
    rollout = rollout or Rollout(config)
    funcs, weights = reward_functions(config)
    funcs += [f for f, _ in extra_rewards]
    weights += [w for _, w in extra_rewards]
    if not funcs:
        raise TrainConfigError("rewards: every weight is 0; nothing to learn from")
    args = grpo_arguments(config, weights)
    model, tokenizer = load_policy(config)
    metrics = StepMetrics()
    clock = RolloutClock(metrics)
    pause = PolicyPause()
    rollout_func = GRPORolloutFunction(rollout, metrics, clock, pause)
    dataset = Dataset.from_dict({"prompt": sorted(rollout.personas)})
    trainer = DialogueGRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[
            clock,
            pause,
            TimeLimit(config.time_limit_minutes),
            MetricsFile(config.output_dir / METRICS_FILE),
        ],
        peft_config=_peft_config(config),
        rollout_func=rollout_func,
        step_metrics=metrics,
    )
    return trainer, rollout_func


def save_policy(trainer: GRPOTrainer, target: Path) -> Path:
    """Save the trained policy as a plain checkpoint with its tokenizer and chat template.

    A LoRA adapter is merged first, so ``rlver eval`` (``kind: local``) and vLLM load the
    directory as an ordinary model.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if trainer.accelerator.is_main_process:
        model.save_pretrained(target)
        trainer.processing_class.save_pretrained(target)
    trainer.accelerator.wait_for_everyone()
    return target


def train_grpo(
    config: TrainConfig,
    *,
    rollout: Rollout | None = None,
    extra_rewards: Sequence[tuple[RewardFunc, float]] = (),
) -> Path:
    """Train, resuming from the last checkpoint in ``output_dir`` when ``resume``; returns the
    directory of the final policy (``output_dir/final``)."""
    trainer, _ = build_trainer(config, rollout=rollout, extra_rewards=extra_rewards)
    last = None
    if config.resume and config.output_dir.is_dir():
        last = get_last_checkpoint(str(config.output_dir))
    trainer.train(resume_from_checkpoint=last)
    return save_policy(trainer, config.output_dir / FINAL_DIR)
