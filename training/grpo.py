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
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig, GRPOTrainer

from rlver_agents.models.engine import Engine
from rlver_agents.seeds import stable_seed
from training.config import TrainConfig, TrainConfigError
from training.grpo_config import GRPOSettings
from training.lockstep import LockstepEngine, live_engine, lockstep_engine, vllm_completions
from training.policy import FINAL_DIR, append_metrics, export_model, load_policy, peft_config
from training.rewards import RewardFunc, make_format_reward, outcome_reward, process_reward
from training.rollout import DialogueRow, Rollout, plan_jobs, rollout_stats
from training.sampler import BFloat16Sampler, ImportanceWeights, SamplingGap, sampling_model

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL


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
    rollout = config.rollout
    # One correction for every sampler that is not the trained weights (the bfloat16 copy,
    # vLLM): a per-token truncated importance weight capped at rollout.importance_cap (for
    # vLLM, TRL's; grpo.trl may choose another vllm_importance_sampling_mode there).
    correction: dict[str, Any] = {
        "vllm_importance_sampling_correction": rollout.corrected,
        "vllm_importance_sampling_mode": "token_truncate",
        "vllm_importance_sampling_clip_max": rollout.importance_cap,
    }
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
        **(correction | settings.trl),
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
    """Appends every training log to ``output_dir/metrics.jsonl`` (:func:`append_metrics`)."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if state.is_world_process_zero and logs:
            append_metrics(self.output_dir, state.global_step, logs)


class PolicyPause(TrainerCallback):
    """Holds the live engine's pause while the optimizer changes the weights.

    No generation can run on half-updated weights, and ``policy_version`` moves once per
    optimizer step, so every generation record names the weights that produced it. A
    bfloat16 sampling copy is refreshed before the pause ends.
    """

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.sampler: BFloat16Sampler | None = None
        self._held = ExitStack()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.engine is not None:
            self._held.enter_context(self.engine.pause(bump_version=True))

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        try:
            if self.sampler is not None:
                self.sampler.refresh()
        finally:
            self._held.close()


class DialogueGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose logs also carry the rollout's dialogue metrics and step times,
    and which corrects a local bfloat16 sampler as TRL corrects vLLM."""

    def __init__(
        self, *args: Any, step_metrics: StepMetrics, local_correction: bool = False, **kwargs: Any
    ) -> None:
        self.step_metrics = step_metrics
        self.local_correction = local_correction
        self.sampling_gap = SamplingGap()
        super().__init__(*args, **kwargs)

    @contextmanager
    def _sampling_correction(self, inputs: dict[str, Any]) -> Iterator[None]:
        """Weights TRL's loss by the truncated importance ratio of a local bfloat16 sampler.

        TRL applies its ratio only behind ``use_vllm``, after an extra forward pass for the
        old logprobs. With one update per rollout (TRL's aligned case) the old logprobs are
        the loss's own float32 logprobs, detached, so the ratio is computed from those and
        the extra pass is saved: the flag is raised for the loss alone, and the ratio is put
        into ``inputs`` as soon as the loss's forward pass has run.
        """
        forward = self._get_per_token_logps_and_entropies
        cap = self.vllm_importance_sampling_clip_max

        def with_ratio(*args: Any, **kwargs: Any) -> Any:
            logps, entropies, aux = forward(*args, **kwargs)
            old = inputs.get("old_per_token_logps")
            mask = inputs["completion_mask"]
            if inputs.get("tool_mask") is not None:
                mask = mask * inputs["tool_mask"]
            weights = ImportanceWeights(
                logps.detach() if old is None else old,
                inputs["sampling_per_token_logps"],
                mask.to(logps.dtype),
                cap,
            )
            inputs["importance_sampling_ratio"] = weights.weights
            self.sampling_gap.add(weights)
            return logps, entropies, aux

        self._get_per_token_logps_and_entropies = with_ratio  # type: ignore[method-assign]
        self.use_vllm = True
        try:
            yield
        finally:
            self.use_vllm = False
            del self._get_per_token_logps_and_entropies

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> Any:
        if not self.local_correction:
            return super()._compute_loss(model, inputs)
        with self._sampling_correction(inputs):
            return super()._compute_loss(model, inputs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            logs.update(self.step_metrics.pop_means())
            logs.update(self.sampling_gap.pop())
        super().log(logs, start_time)


# --- the rollout function --------------------------------------------------------------------


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
        if self.rollout.config.rollout.sampler == "bfloat16" and self.pause.sampler is None:
            self.pause.sampler = BFloat16Sampler(model)
        self.pause.engine = live_engine(
            sampling_model(model, self.pause.sampler),
            trainer.processing_class,
            self.pause.engine,
            self.rollout.config.rollout.concurrency,
        )
        return self.pause.engine

    def _lockstep_engine(self, trainer: GRPOTrainer, width: int) -> LockstepEngine:
        return lockstep_engine(
            self.rollout.config,
            trainer.accelerator.unwrap_model(trainer.model),
            trainer.processing_class,
            lambda prompts: vllm_completions(trainer.vllm_generation, prompts),
            width=width,
            device=str(trainer.accelerator.device),
            policy_version=trainer.state.global_step,
        )

    def __call__(self, prompts: list[Any], trainer: GRPOTrainer) -> dict[str, list[Any]]:
        started = time.perf_counter()
        config = self.rollout.config
        jobs = plan_jobs([str(p) for p in prompts], self.rollout.personas)
        seed = stable_seed(
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
        for name, value in rollout_stats(episodes, trainer.accelerator).metrics().items():
            self.metrics.add(name, value)
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
            MetricsFile(config.output_dir),
        ],
        peft_config=peft_config(config),
        rollout_func=rollout_func,
        step_metrics=metrics,
        local_correction=config.rollout.corrected and config.rollout.generation == "local",
    )
    return trainer, rollout_func


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
    return export_model(
        trainer.accelerator, trainer.model, config.output_dir / FINAL_DIR, trainer.processing_class
    )
