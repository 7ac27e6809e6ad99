"""The ``ppo:`` block of a training configuration: PPO's settings, apart from the trainer.

Kept apart from :mod:`training.ppo` (as :mod:`training.grpo_config` is from
:mod:`training.grpo`) so that reading a configuration imports no torch, accelerate or
transformers. Defaults are RLVER's released settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CriticSettings(BaseModel):
    """Where the critic's backbone comes from, and how it learns."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["policy", "path"] = Field(
        default="policy",
        description="'policy': a value head on a copy of the policy's weights; 'path': a "
        "separate value model loaded from model_path (RLVER's setting).",
    )
    model_path: str | None = Field(
        default=None,
        description="The critic's own checkpoint (any causal LM or a saved critic) for "
        "source 'path'.",
    )
    learning_rate: float = Field(default=5e-6, gt=0)
    warmup_ratio: float = Field(default=0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _path_when_needed(self) -> CriticSettings:
        if self.source == "path" and not self.model_path:
            raise ValueError("ppo.critic.model_path is required when ppo.critic.source is 'path'")
        if self.source == "policy" and self.model_path:
            raise ValueError(
                "ppo.critic.model_path is set but ppo.critic.source is 'policy'; "
                "set source: path to load the critic from it"
            )
        return self


class PPOSettings(BaseModel):
    """The ``ppo:`` block of a training config. Defaults are RLVER's released settings."""

    model_config = ConfigDict(extra="forbid")

    advantage: Literal["gae", "grpo"] = Field(
        default="gae",
        description="'gae': learned critic and GAE; 'grpo': the outcome normalised within each "
        "persona's group, no critic.",
    )
    gamma: float = Field(default=1.0, ge=0, le=1)
    lam: float = Field(default=1.0, ge=0, le=1)
    whiten_advantages: bool = True
    actor_learning_rate: float = Field(default=1e-6, gt=0)
    actor_warmup_ratio: float = Field(default=0.02, ge=0, le=1)
    critic: CriticSettings = Field(default_factory=CriticSettings)
    kl_coef: float = Field(
        default=0.0, ge=0, description="Per-token KL penalty against the frozen start policy."
    )
    clip_ratio: float = Field(default=0.2, gt=0)
    value_clip: float = Field(default=0.5, gt=0)
    entropy_coef: float = Field(default=0.0, ge=0)
    epochs: int = Field(default=1, ge=1)
    mini_batch_size: int = Field(
        default=32,
        ge=1,
        description="Dialogues per optimizer step over all processes (their samples go together).",
    )
    micro_batch_size: int = Field(
        default=4, ge=1, description="Samples per forward pass (gradient accumulation)."
    )
    max_grad_norm: float = Field(default=1.0, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_server_base_url: str | None = None
    vllm_gpu_memory_utilization: float = Field(default=0.3, gt=0.0, le=1.0)
    vllm_tensor_parallel_size: int = Field(default=1, ge=1)
    personas_per_step: int = Field(
        default=32,
        ge=1,
        description="Personas played per step; each gives rollout.group_size dialogues "
        "(RLVER: 32 personas, one dialogue each).",
    )

    @model_validator(mode="after")
    def _kl_needs_gae(self) -> PPOSettings:
        if self.kl_coef > 0 and self.advantage == "grpo":
            raise ValueError(
                "ppo.kl_coef: the KL penalty is paid in the per-token reward, which only "
                "'gae' uses; set kl_coef: 0 with advantage: grpo"
            )
        return self
