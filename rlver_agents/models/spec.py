"""``ModelSpec``: pick a chat backend by configuration, and build its client. Torch-free.

``embedded`` is the bundled SmolLM2 run locally, ``local`` any Hugging Face checkpoint
directory run locally, ``openai`` any OpenAI-compatible server (vLLM, ``transformers serve``,
a hosted API). The local backends are imported only when asked for.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from autogen_core.models import ChatCompletionClient
from pydantic import BaseModel, ConfigDict, Field, model_validator

LOCAL_EXTRA_BODY_KEYS = frozenset({"chat_template_kwargs"})


class ModelSpecError(ValueError):
    """A model spec that cannot be turned into a client."""


class ModelSpec(BaseModel):
    """Which model a role (agent, simulated user, judge) talks to, and how it samples."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["embedded", "local", "openai"] = "embedded"
    model: str | None = Field(
        default=None,
        description="Checkpoint directory or 'live:<name>' of a registered in-process engine "
        "(local), or served model name (openai); unused for embedded.",
    )
    base_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key; never the key."
    )
    family: str = "unknown"
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=256, ge=1)
    seed: int | None = None
    repetition_penalty: float | None = Field(
        default=None,
        gt=0.0,
        description="Penalty on tokens the reply already contains (vLLM and local); unset is off.",
    )
    stop: list[str] = Field(
        default_factory=list,
        description="Strings that end a reply (OpenAI's stop). Locally the reply ends at the first "
        "sampled token holding one; that token is recorded, and trained on, as the turn's last.",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Sent with every request (openai); locally only chat_template_kwargs applies.",
    )
    token_mode: Literal["render", "append"] = Field(
        default="render",
        description="Local kinds: 'render' re-renders the chat each call (turn unit), 'append' "
        "keeps one token stream per dialogue (dialogue unit).",
    )
    on_policy: bool = Field(
        default=False,
        description="Local kinds: a training client, which refuses a repetition penalty and "
        "greedy decoding.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32",
        description="Local kinds: the weights' dtype. bfloat16 about halves generation time on "
        "a CPU with AVX-512 BF16 or AMX (benchmarks/speed_floor.py), at a logprob noise of about "
        "0.1 between batch shapes: for a frozen model (the user's voice), not for a policy "
        "whose logprobs a trainer recomputes. A live policy ('live:<name>') keeps its own.",
    )

    @model_validator(mode="after")
    def _complete_for_kind(self) -> ModelSpec:
        if self.kind == "local" and not self.model:
            raise ValueError("ModelSpec.model: a local spec needs a checkpoint directory")
        if self.kind == "openai" and not (self.model and self.base_url):
            raise ValueError("ModelSpec: an openai spec needs both model and base_url")
        if self.kind == "openai" and (self.token_mode != "render" or self.on_policy):
            raise ValueError(
                "ModelSpec: token_mode and on_policy apply to local kinds only (an openai server "
                "renders the chat itself)"
            )
        if self.kind == "openai" and self.dtype != "float32":
            raise ValueError(
                "ModelSpec: dtype applies to local kinds only (an openai server picks its own)"
            )
        if self.kind != "openai" and set(self.extra_body) - LOCAL_EXTRA_BODY_KEYS:
            unknown = sorted(set(self.extra_body) - LOCAL_EXTRA_BODY_KEYS)
            raise ValueError(
                f"ModelSpec.extra_body: {unknown} only apply to openai specs; local models "
                f"accept {sorted(LOCAL_EXTRA_BODY_KEYS)}"
            )
        return self

    def api_key(self) -> str | None:
        """Read the key from ``api_key_env``; a named but unset variable is an error."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ModelSpecError(
                f"ModelSpec.api_key_env names {self.api_key_env}, which is not set"
            )
        return key


def _openai_extra_body(spec: ModelSpec) -> dict[str, Any] | None:
    """vLLM takes sampling extensions such as ``repetition_penalty`` in the request body."""
    body = dict(spec.extra_body)
    if spec.repetition_penalty is not None:
        body.setdefault("repetition_penalty", spec.repetition_penalty)
    return body or None


def build_chat_client(
    spec: ModelSpec, *, timeout_s: float | None = None, max_retries: int | None = None
) -> ChatCompletionClient:
    """A fresh client for ``spec`` (cheap for local kinds: the loaded model is shared).

    ``timeout_s`` and ``max_retries`` set the OpenAI SDK's request timeout and its own retries
    (openai kind only; see :func:`~rlver_agents.models.openai_compat.openai_compatible_client`).
    """
    if spec.kind == "openai":
        from rlver_agents.models.openai_compat import openai_compatible_client

        assert spec.model is not None and spec.base_url is not None  # checked by the validator
        return openai_compatible_client(
            spec.model,
            spec.base_url,
            spec.api_key(),
            family=spec.family,
            extra_body=_openai_extra_body(spec),
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=spec.max_new_tokens,
            seed=spec.seed,
            stop=spec.stop,
            timeout=timeout_s,
            max_retries=max_retries,
        )
    from rlver_agents.models.local import EMBEDDED, LocalChatCompletionClient

    model = EMBEDDED if spec.kind == "embedded" else spec.model
    assert model is not None  # checked by the validator
    return LocalChatCompletionClient(
        model,
        temperature=spec.temperature,
        top_p=spec.top_p,
        max_new_tokens=spec.max_new_tokens,
        seed=spec.seed,
        repetition_penalty=spec.repetition_penalty or 1.0,
        stop=spec.stop,
        chat_template_kwargs=spec.extra_body.get("chat_template_kwargs"),
        token_mode=spec.token_mode,
        on_policy=spec.on_policy,
        dtype=spec.dtype,
    )
