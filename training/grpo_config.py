"""The ``grpo:`` block of a training configuration: the TRL ``GRPOConfig`` settings we expose.

Kept apart from :mod:`training.grpo` so that reading a configuration does not import TRL.
The common knobs are named fields with RLVER's values as defaults; anything else of
``trl.GRPOConfig`` passes through ``trl:`` and is checked against TRL's own field names when
the trainer is built.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

OWNED_BY_TRAIN_CONFIG = frozenset(
    {
        "output_dir",
        "seed",
        "max_steps",
        "save_steps",
        "save_total_limit",
        "use_cpu",
        "bf16",
        "num_generations",
        "temperature",
        "top_p",
        "max_completion_length",
        "logging_steps",
        "report_to",
        "log_completions",
        "gradient_checkpointing",
        "use_vllm",
        "reward_weights",
        "mask_truncated_completions",
        "vllm_importance_sampling_correction",
        "vllm_importance_sampling_clip_max",
    }
)
"""GRPOConfig fields set from the shared parts of the configuration, never through ``trl:``."""


class GRPOSettings(BaseModel):
    """GRPO through TRL's ``GRPOTrainer``; the group size is ``rollout.group_size``."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(default=1e-6, gt=0.0)
    beta: float = Field(default=0.0, ge=0.0, description="KL coefficient; RLVER used 0.")
    loss_type: str = Field(default="dapo", description="Any TRL loss_type (grpo, dapo, ...).")
    scale_rewards: Literal["group", "batch", "none"] = "group"
    epsilon: float = Field(default=0.2, gt=0.0)
    epsilon_high: float | None = Field(default=None, gt=0.0)
    num_iterations: int = Field(default=1, ge=1)
    per_device_train_batch_size: int = Field(default=4, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    steps_per_generation: int | None = Field(default=None, ge=1)
    warmup_steps: float = Field(default=0.0, ge=0.0, description="Steps, or a fraction if < 1.")
    lr_scheduler_type: str = "constant_with_warmup"
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_server_base_url: str | None = None
    vllm_gpu_memory_utilization: float = Field(default=0.3, gt=0.0, le=1.0)
    vllm_tensor_parallel_size: int = Field(default=1, ge=1)
    vllm_enable_sleep_mode: bool = False
    trl: dict[str, Any] = Field(
        default_factory=dict, description="Further trl.GRPOConfig fields, passed as they are."
    )

    def generation_batch(self) -> int:
        """Dialogues one process plays per generation (TRL's generation batch, per device)."""
        return self.per_device_train_batch_size * (
            self.steps_per_generation or self.gradient_accumulation_steps
        )

    def check_batch(self, group_size: int) -> None:
        """TRL needs whole groups in every generation batch; say which fields to change."""
        if self.generation_batch() % group_size:
            raise ValueError(
                f"grpo: per_device_train_batch_size x steps_per_generation "
                f"(or gradient_accumulation_steps) = {self.generation_batch()} must be a "
                f"multiple of rollout.group_size = {group_size}"
            )
        clash = sorted(OWNED_BY_TRAIN_CONFIG & set(self.trl))
        if clash:
            raise ValueError(
                f"grpo.trl: {clash} are set from the shared configuration "
                "(output_dir, rollout, rewards, logging, ...), not here"
            )
