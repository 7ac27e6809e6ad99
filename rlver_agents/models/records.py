"""Token-exact records of local generations, and the sampling settings they used.

Torch-free, so trajectory files can be read and validated without loading a model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FinishReason = Literal["stop", "length"]


class SamplingParams(BaseModel):
    """How one request is sampled. ``greedy`` (or a temperature of 0) takes the argmax."""

    model_config = ConfigDict(frozen=True)

    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=256, ge=1)
    seed: int | None = None
    greedy: bool = False
    repetition_penalty: float = Field(
        default=1.0,
        gt=0.0,
        description="Divides the positive logits (multiplies the negative ones) of tokens this "
        "completion has already produced; 1.0 is off. Small models loop without it.",
    )

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0


class GenerationRecord(BaseModel):
    """One ``create`` call of a local client, exactly as the model saw and produced it.

    ``completion_logprobs[i]`` is the log-probability of ``completion_token_ids[i]`` under the
    raw model (log-softmax of the unscaled logits, i.e. temperature 1, before top-p), whatever
    temperature it was sampled at. That is the quantity a trainer recomputes with one forward
    pass over ``prompt_token_ids + completion_token_ids``, so the two can be compared directly.
    When ``finish_reason`` is ``"stop"`` the last completion id is the end-of-turn token;
    ``completion_text`` is the decoding of the ids before it.
    """

    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    completion_logprobs: list[float]
    prompt_text: str
    completion_text: str
    finish_reason: FinishReason
    sampling: SamplingParams
    model: str

    @model_validator(mode="after")
    def _aligned(self) -> GenerationRecord:
        if len(self.completion_token_ids) != len(self.completion_logprobs):
            raise ValueError(
                "GenerationRecord: completion_token_ids and completion_logprobs differ in length "
                f"({len(self.completion_token_ids)} != {len(self.completion_logprobs)})"
            )
        return self
