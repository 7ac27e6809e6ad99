"""The ``warmup:`` block of a training configuration: supervised fine-tuning on the appraisal
corpus's best replies before the reinforcement-learning stage.

A small policy that cannot yet write a reply that fits the person drifts to whatever the
judge pays a little (docs/benchmarks.md, "The run on the ninth fit"). The warm-up shows it
what a fitting reply looks like first; RL then sharpens it against the simulated user.
Kept apart from :mod:`training.warmup` so that reading a configuration does not import TRL.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

WARMUP_DIR = "warmup"
"""Where under ``output_dir`` the warm-up writes: ``final/``, ``warmup.json`` and its losses."""


class WarmupSettings(BaseModel):
    """Which corpus replies the policy imitates, and the SFT schedule (TRL's ``SFTTrainer``)."""

    model_config = ConfigDict(extra="forbid")

    corpus: Path | None = Field(
        default=None,
        description="A corpus file in the appraisal corpus's format; the shipped train split "
        "(train personas only) if None.",
    )
    min_change: int = Field(
        default=5,
        ge=1,
        le=10,
        description="Imitate replies labelled at least this change for their person (the "
        "rubric's fitting replies start at +4).",
    )
    epochs: float = Field(default=2.0, gt=0)
    learning_rate: float = Field(default=2.0e-5, gt=0)
    per_device_train_batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    max_length: int = Field(
        default=1024, ge=16, description="Tokens of prompt and reply; longer rows are dropped."
    )
