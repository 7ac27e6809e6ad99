"""``TrainConfig``: one YAML file describes a training run, for every algorithm.

The shared parts (the policy, the simulated user, the rollouts, the rewards, the run's
schedule and output) live here. Each algorithm keeps its own block in its own module:
``grpo:`` is :class:`training.grpo_config.GRPOSettings`, ``ppo:`` is
:class:`training.ppo_config.PPOSettings`, and the optional supervised stage before either,
``warmup:``, is :class:`training.warmup_config.WarmupSettings`. A bad field is reported with
the file and the dotted field name, as ``rlver`` does for run configurations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlver_agents.config import ConfigError, SimulatorSettings, TimeoutSettings
from rlver_agents.emotion import EmotionRules, PresetName
from rlver_agents.evaluation.rewards import DEFAULT_FORMAT_PENALTY
from training.grpo_config import GRPOSettings
from training.ppo_config import PPOSettings
from training.warmup_config import WarmupSettings

EMBEDDED_POLICY = "embedded"
"""``policy.model`` value naming the bundled SmolLM2-135M-Instruct."""


class TrainConfigError(ConfigError):
    """A training configuration that cannot be used; the message names the file and field."""


class LoraSettings(BaseModel):
    """A LoRA adapter (peft) instead of full fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class PolicySettings(BaseModel):
    """The model being trained: the empathetic agent's policy."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        default=EMBEDDED_POLICY,
        description="'embedded' (SmolLM2-135M-Instruct), a checkpoint directory or a hub id.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    think: bool = Field(
        default=False,
        description="Think-then-say: the policy writes <think>...</think> before its reply.",
    )
    system_message: str | None = Field(
        default=None, description="Overrides the packaged system prompt for the language."
    )
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    lora: LoraSettings | None = None
    gradient_checkpointing: bool = False

    def path(self) -> str:
        """Where the starting weights are: the embedded checkpoint (built on first use) or
        ``model`` as given."""
        if self.model == EMBEDDED_POLICY:
            from rlver_agents.models.embedded import embedded_model_path

            return str(embedded_model_path())
        return self.model


class RolloutSettings(BaseModel):
    """How dialogues are played for training: personas, rules, group size and sampling."""

    model_config = ConfigDict(extra="forbid")

    personas: str = Field(
        default="train", description="A bundled split (train, test, zh) or a persona file path."
    )
    rules: PresetName | EmotionRules = "rlver_train"
    max_turns: int | None = Field(
        default=None, ge=1, description="Overrides the rules' max_turns (agent turns)."
    )
    unit: Literal["turn", "dialogue"] | None = Field(
        default=None,
        description="Training sample: one per agent turn, or one token stream per dialogue. "
        "Unset takes the algorithm's default (grpo: dialogue, ppo: turn).",
    )
    group_size: int = Field(
        default=4, ge=1, description="Dialogues per persona per step (GRPO's group)."
    )
    temperature: float = Field(default=1.0, gt=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=256, ge=1, description="Per agent turn.")
    stop: list[str] = Field(
        default_factory=list,
        description="Strings that end a policy turn, e.g. ['\\n'] for one-paragraph replies "
        "from a small model that rambles on to the cap. Local generation only.",
    )
    concurrency: int = Field(default=16, ge=1, description="Dialogues in flight per process.")
    error_retries: int = Field(
        default=1, ge=0, description="Replays of an errored dialogue before it counts as errored."
    )
    generation: Literal["local", "vllm"] = Field(
        default="local",
        description="local: the trainer's own model generates in-process (transformers). "
        "vllm: TRL's vLLM backend, dialogues advance turn by turn in lockstep across processes.",
    )
    rounds: bool = Field(
        default=True,
        description="Local generation: the engines serving a step's dialogues (the policy and "
        "a local user voice) batch in rounds, so each turn of the dialogues still running "
        "decodes as one batch, not in the small batches that dialogues drifting apart make.",
    )
    mask_truncated: bool = Field(
        default=False,
        description="Give no gradient to a dialogue whose last policy turn hit max_new_tokens.",
    )
    sampler: Literal["exact", "bfloat16"] = Field(
        default="exact",
        description="Local generation: 'exact' samples with the trained weights themselves; "
        "'bfloat16' with a bfloat16 copy of them, refreshed after every optimizer step (about "
        "2.5x faster decoding on a CPU), whose gap to the trained weights the importance "
        "weight corrects.",
    )
    importance_cap: float | None = Field(
        default=3.0,
        gt=1.0,
        description="Truncated importance sampling for a sampler that is not the trained "
        "weights (the bfloat16 copy, or vLLM): each policy token's loss is weighted by "
        "min(p_train / p_sample, cap). null switches the correction off.",
    )

    @model_validator(mode="after")
    def _stop_is_local(self) -> RolloutSettings:
        if self.stop and self.generation == "vllm":
            raise ValueError(
                "rollout.stop: the vLLM backend samples with TRL's generation settings, which "
                "take no stop strings; remove stop or use generation: local"
            )
        if self.sampler == "bfloat16" and self.generation == "vllm":
            raise ValueError(
                "rollout.sampler: the bfloat16 copy is for local generation; vLLM samples in "
                "its own dtype (the importance cap corrects it all the same)"
            )
        return self

    @property
    def inexact_sampler(self) -> bool:
        """Whether the rollout's tokens come from weights other than the trained ones."""
        return self.sampler == "bfloat16" or self.generation == "vllm"

    @property
    def corrected(self) -> bool:
        """Whether the loss carries the truncated importance weight."""
        return self.inexact_sampler and self.importance_cap is not None

    def emotion_rules(self) -> EmotionRules:
        rules = (
            self.rules if isinstance(self.rules, EmotionRules) else EmotionRules.preset(self.rules)
        )
        if self.max_turns is not None:
            rules = rules.model_copy(update={"max_turns": self.max_turns})
        return rules


class RewardSettings(BaseModel):
    """Weights of the reward terms; the outcome reward is RLVER's max(final, 0) / 100."""

    model_config = ConfigDict(extra="forbid")

    outcome: float = 1.0
    process: float = Field(
        default=0.0,
        description="Weight of the per-turn process reward (each turn's emotion change / 100).",
    )
    format: float = Field(
        default=0.0, ge=0.0, description="Weight of the think-format penalty (think mode)."
    )
    format_penalty: float = Field(default=DEFAULT_FORMAT_PENALTY, ge=0.0)


class LoggingSettings(BaseModel):
    """Where metrics go: always the console, optionally TensorBoard under output_dir/runs."""

    model_config = ConfigDict(extra="forbid")

    logging_steps: int = Field(default=1, ge=1)
    tensorboard: bool = True
    log_completions: bool = False


class TrainConfig(BaseModel):
    """One training run."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["grpo", "ppo"]
    output_dir: Path
    seed: int = 0
    max_steps: int = Field(default=100, ge=1, description="Optimizer steps.")
    save_steps: int = Field(default=5, ge=1)
    save_total_limit: int | None = Field(default=None, ge=1)
    resume: bool = Field(
        default=True, description="Continue from the last checkpoint in output_dir, if any."
    )
    time_limit_minutes: float | None = Field(
        default=None,
        gt=0,
        description="Stop after the first optimizer step that ends past this wall time.",
    )
    use_cpu: bool = False
    bf16: bool = False
    policy: PolicySettings = Field(default_factory=PolicySettings)
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    rewards: RewardSettings = Field(default_factory=RewardSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    warmup: WarmupSettings | None = Field(
        default=None,
        description="Supervised fine-tuning on the corpus's best replies before RL, into "
        "output_dir/warmup; RL then starts from its weights.",
    )
    grpo: GRPOSettings | None = None
    ppo: PPOSettings | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.algorithm == "grpo":
            if self.grpo is None:
                self.grpo = GRPOSettings()
            if self.rollout.unit == "turn":
                raise ValueError(
                    "rollout.unit: grpo trains on one sequence per dialogue; use 'dialogue' "
                    "(the turn unit is for ppo)"
                )
            self.grpo.check_batch(self.rollout.group_size)
        if self.algorithm == "ppo" and self.ppo is None:
            self.ppo = PPOSettings()
        if self.bf16 and self.use_cpu:
            raise ValueError("bf16: mixed precision is for GPUs; set bf16: false with use_cpu")
        if self.rollout.sampler == "bfloat16" and self.policy.dtype != "float32":
            raise ValueError(
                "rollout.sampler: a bfloat16 sampling copy is for a float32 policy; this one "
                f"already trains in {self.policy.dtype}"
            )
        if self.warmup is not None and self.policy.think:
            raise ValueError(
                "warmup: the corpus's replies carry no thoughts, so they cannot teach "
                "think-then-say; set policy.think: false or drop warmup"
            )
        if self.rollout.generation == "vllm" and self.use_cpu:
            raise ValueError("rollout.generation: vllm needs GPUs; use 'local' with use_cpu")
        if self.rollout.generation == "vllm" and self.rollout.temperature != 1.0:
            raise ValueError(
                "rollout.temperature: vllm rollouts record vLLM's sampling logprobs, which equal "
                "the model's only at temperature 1.0"
            )
        return self

    @property
    def unit(self) -> Literal["turn", "dialogue"]:
        """The training unit, with the algorithm's default filled in."""
        if self.rollout.unit is not None:
            return self.rollout.unit
        return "dialogue" if self.algorithm == "grpo" else "turn"


def _format_error(source: Path, error: ValidationError) -> str:
    lines = [f"{source}: invalid training configuration"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"  field {where}: {item['msg']}")
    return "\n".join(lines)


def parse_train_config(data: dict[str, Any], source: Path) -> TrainConfig:
    """Validate a parsed document; errors name ``source`` and each offending field."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise TrainConfigError(_format_error(source, exc)) from None


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML training configuration; ``overrides`` replace top-level keys first.

    A relative ``output_dir`` is taken relative to the current directory, as a command line
    user expects.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"{path}: no such configuration file")
    if path.suffix.lower() not in {".yaml", ".yml"}:
        raise TrainConfigError(f"{path}: unsupported extension; use .yaml or .yml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise TrainConfigError(f"{path}: cannot parse: {exc}") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: the top level must be a mapping")
    data.update(overrides or {})
    return parse_train_config(data, path)
