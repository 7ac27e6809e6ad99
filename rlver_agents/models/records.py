"""Token-exact records of local generations, and the sampling settings they used.

Torch-free, so trajectory files can be read and validated without loading a model.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

FinishReason = Literal["stop", "length"]
TokenMode = Literal["render", "append"]
"""``render``: each call re-renders the whole chat (the turn unit). ``append``: each call
appends only the new messages' template tokens after the previous call's sampled ids, so one
client's calls form a single token stream (the dialogue unit)."""


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
    stop: tuple[str, ...] = Field(
        default=(),
        description="Strings that end the reply (OpenAI's ``stop``). Locally a row ends at the "
        "first sampled token whose text holds one; that token is recorded and trained on like "
        "an end-of-turn token, and left out of the reply's text.",
    )

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0


class GenerationRecord(BaseModel):
    """One ``create`` call of a local client, exactly as the model saw and produced it.

    ``completion_logprobs[i]`` is the sampling policy's log-probability of
    ``completion_token_ids[i]``: the log-softmax of the logits divided by the sampling
    temperature (after the repetition penalty, if any; before top-p truncation), temperature 1
    for greedy calls. That is what a trainer recomputes with one forward pass over
    ``prompt_token_ids + completion_token_ids`` at the same temperature, so importance ratios
    start at exactly 1. ``raw_logprobs`` are the unscaled model's (temperature 1, no penalty).
    When ``finish_reason`` is ``"stop"`` the last completion id is the end-of-turn token;
    ``completion_text`` is the decoding of the ids before it. ``policy_version`` is the
    engine's weight version when the call was sampled.
    """

    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    completion_logprobs: list[float]
    raw_logprobs: list[float]
    prompt_text: str
    completion_text: str
    finish_reason: FinishReason
    sampling: SamplingParams
    model: str
    policy_version: int = Field(default=0, ge=0)
    token_mode: TokenMode = "render"

    @model_validator(mode="after")
    def _aligned(self) -> GenerationRecord:
        n = len(self.completion_token_ids)
        for name in ("completion_logprobs", "raw_logprobs"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"GenerationRecord: completion_token_ids and {name} differ in length "
                    f"({n} != {len(getattr(self, name))})"
                )
        return self


@runtime_checkable
class GenerationRecorder(Protocol):
    """Any model client that keeps one token-exact record per ``create`` call, in call order."""

    records: list[GenerationRecord]
