"""Chat clients for OpenAI-compatible servers: vLLM, ``transformers serve``, hosted APIs.

``OpenAIChatCompletionClient`` from autogen-ext does the work; this module configures it for
open-weight models (``model_info`` by family, ``extra_body`` such as ``chat_template_kwargs``)
and makes it read the reasoning text that current vLLM returns as ``reasoning`` as well as the
older ``reasoning_content``, which is the only field autogen-ext 0.7.5 reads. A body that is not
a chat completion becomes a :class:`MalformedResponseError` naming the server and the model,
instead of an ``IndexError`` deep inside autogen-ext. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from autogen_core.models import ModelInfo
from autogen_ext.models.openai import OpenAIChatCompletionClient
from autogen_ext.models.openai.config import OpenAIClientConfigurationConfigModel
from openai import AsyncOpenAI
from pydantic import BaseModel

NO_API_KEY = "EMPTY"
"""Sent when the server needs no key (the OpenAI SDK refuses to run without one)."""

REASONING_FIELDS = ("reasoning_content", "reasoning")

DEFAULT_CALL_TIMEOUT_S = 120.0
"""Seconds one request may take. The OpenAI SDK's own default, 600 s, lets a hung call stall a
dialogue for ten minutes; a 512-token reply from a loaded vLLM server takes well under 120 s."""


class MalformedResponseError(RuntimeError):
    """The server answered but its body is not a chat completion (no choices, no message, a
    message with ``content: null`` and nothing else).

    ``status_code`` 502 (bad gateway: an invalid answer from upstream) marks it transient for
    the retry logic, which reads the status of any error in a failure's chain: a server that
    garbles one answer usually answers the next one properly.
    """

    status_code = 502

    def __init__(self, server: str, model: str, problem: str) -> None:
        super().__init__(f"{server} (model {model!r}) answered with {problem}")
        self.server = server
        self.model = model


def _info(
    family: str,
    *,
    function_calling: bool = False,
    json_output: bool = False,
    structured_output: bool = False,
) -> ModelInfo:
    return ModelInfo(
        vision=False,
        function_calling=function_calling,
        json_output=json_output,
        family=family,
        structured_output=structured_output,
        multiple_system_messages=False,
    )


KNOWN_FAMILIES: dict[str, ModelInfo] = {
    # Tool calls on vLLM need `--enable-auto-tool-choice --tool-call-parser hermes`; JSON and
    # structured output come from vLLM's guided decoding.
    "qwen2.5": _info("qwen2.5", function_calling=True, json_output=True, structured_output=True),
    "qwen3": _info("qwen3", function_calling=True, json_output=True, structured_output=True),
    "llama3": _info("llama3", function_calling=True, json_output=True, structured_output=True),
    "mistral": _info("mistral", function_calling=True, json_output=True, structured_output=True),
    # Small chat models served for tests: plain text only.
    "smollm2": _info("smollm2"),
}
DEFAULT_MODEL_INFO: ModelInfo = _info("unknown")
"""For families not in the table: text in, text out, nothing more assumed."""


def model_info_for(family: str) -> ModelInfo:
    """The capabilities to declare for a model family (unknown families get text only)."""
    return ModelInfo(**KNOWN_FAMILIES.get(family.lower(), DEFAULT_MODEL_INFO))


def _promote_reasoning(part: BaseModel) -> None:
    """Copy ``reasoning`` into ``reasoning_content`` on a message or delta that lacks it."""
    extra = part.model_extra
    if extra is None or extra.get("reasoning_content") is not None:
        return
    reasoning = extra.get("reasoning")
    if reasoning is not None:
        extra["reasoning_content"] = reasoning


async def _promote_stream(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for chunk in stream:
        for choice in chunk.choices:
            _promote_reasoning(choice.delta)
        yield chunk


def _says_nothing(message: Any) -> bool:
    """A message with ``content: null`` and nothing in its place: no reasoning, tool call or
    refusal. That is the server failing to report an output, not the model's empty reply,
    which comes as ``""`` (or as ``null`` beside the reasoning, when a reasoning parser took
    the whole output as thought)."""
    if getattr(message, "content", None) is not None:
        return False
    extra = getattr(message, "model_extra", None) or {}
    reasoning = [extra.get(field) for field in REASONING_FIELDS]
    others = [getattr(message, name, None) for name in ("tool_calls", "function_call", "refusal")]
    return all(value is None for value in [*reasoning, *others])


def _checked_choices(response: Any, server: str, model: str) -> list[Any]:
    """The choices of a parsed completion, or :class:`MalformedResponseError` saying what is off.

    The SDK builds its response objects without validation, and returns the plain text when the
    body is not JSON, so a bad body only shows up when a field is read. autogen-ext turns a
    ``content: null`` into ``""``, which a dialogue would take for the agent saying nothing, so
    a message that reports no output at all is malformed too.
    """
    choices = getattr(response, "choices", None)
    if isinstance(response, str | bytes):
        problem = f"a body that is not JSON: {response[:120]!r}"
    elif not isinstance(choices, list) or not choices:
        problem = "a body without choices"
    elif any(getattr(choice, "message", None) is None for choice in choices):
        problem = "a choice without a message"
    elif any(_says_nothing(choice.message) for choice in choices):
        problem = "a message whose content is null"
    else:
        return choices
    raise MalformedResponseError(server, model, problem)


async def _answer(call: Any, server: str, *args: Any, **kwargs: Any) -> Any:
    """``await call(...)``, with an undecodable JSON body reported as malformed."""
    try:
        return await call(*args, **kwargs)
    except json.JSONDecodeError as exc:
        raise MalformedResponseError(
            server, str(kwargs.get("model")), f"invalid JSON: {exc.msg}"
        ) from exc


def _read_reasoning_field(client: AsyncOpenAI) -> None:
    """Make ``client.chat.completions.create`` expose ``reasoning`` as ``reasoning_content``.

    autogen-ext reads the reasoning text from ``model_extra["reasoning_content"]`` of the
    message (or of each streamed delta). Normalising the SDK's parsed response right where
    autogen-ext receives it covers the plain and the streaming path with one hook, and leaves
    every other behaviour of the client (usage, logprobs, finish reasons, R1 parsing) intact.
    The same hooks check that a response is a chat completion, on the plain path and on the
    structured-output path (``beta.chat.completions.parse``). The completions resources are
    cached attributes of the SDK client, so the hooks last for the client's lifetime.
    """
    server = str(client.base_url).rstrip("/")
    completions = client.chat.completions
    create = completions.create

    async def create_reading_reasoning(*args: Any, **kwargs: Any) -> Any:
        response = await _answer(create, server, *args, **kwargs)
        if kwargs.get("stream"):
            return _promote_stream(response)
        for choice in _checked_choices(response, server, str(kwargs.get("model"))):
            _promote_reasoning(choice.message)
        return response

    parsing = client.beta.chat.completions
    parse = parsing.parse

    async def parse_checked(*args: Any, **kwargs: Any) -> Any:
        model = str(kwargs.get("model"))
        try:
            response = await _answer(parse, server, *args, **kwargs)
        except (TypeError, AttributeError) as exc:
            # the SDK reads the choices itself on this path, and trips over missing ones
            raise MalformedResponseError(
                server, model, f"a body that is not a chat completion ({exc})"
            ) from exc
        _checked_choices(response, server, model)
        return response

    completions.create = create_reading_reasoning  # type: ignore[method-assign]
    parsing.parse = parse_checked  # type: ignore[method-assign]


class ReasoningClientConfig(OpenAIClientConfigurationConfigModel):
    """The autogen-ext config plus ``extra_body``, which its own config model does not keep."""

    extra_body: dict[str, Any] | None = None


class ReasoningOpenAIChatCompletionClient(OpenAIChatCompletionClient):
    """``OpenAIChatCompletionClient`` that fills ``CreateResult.thought`` from either field."""

    component_config_schema = ReasoningClientConfig  # type: ignore[assignment]
    component_provider_override = (
        "rlver_agents.models.openai_compat.ReasoningOpenAIChatCompletionClient"
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _read_reasoning_field(self._client)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        _read_reasoning_field(self._client)

    def _to_config(self) -> ReasoningClientConfig:
        config = {key: value for key, value in self._raw_config.items() if key != "http_client"}
        return ReasoningClientConfig(**config)


def openai_compatible_client(
    model: str,
    base_url: str,
    api_key: str | None = None,
    *,
    family: str = "unknown",
    model_info: ModelInfo | None = None,
    extra_body: Mapping[str, Any] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    timeout: float | None = None,
    max_retries: int | None = None,
    http_client: Any | None = None,
) -> ReasoningOpenAIChatCompletionClient:
    """A chat client for ``model`` served at ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``).

    ``extra_body`` is sent with every request (the OpenAI client silently drops unknown keyword
    arguments, so server-specific options such as ``{"chat_template_kwargs":
    {"enable_thinking": False}}`` or vLLM's ``top_k`` must go here). ``model_info`` overrides
    the family table. ``http_client`` (an ``httpx`` client for the OpenAI SDK) is for tests and
    proxies. ``timeout`` is the SDK's request timeout (default :data:`DEFAULT_CALL_TIMEOUT_S`);
    ``max_retries`` its own retries (the SDK's default when unset; the builders set 0 and retry
    each call themselves, see :mod:`rlver_agents.models.retrying`).
    """
    settings: dict[str, Any] = {
        "model": model,
        "base_url": base_url,
        "api_key": api_key or NO_API_KEY,
        "model_info": model_info if model_info is not None else model_info_for(family),
    }
    optional = {
        "extra_body": dict(extra_body) if extra_body else None,
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
        "seed": seed,
        "stop": list(stop) or None,
        "timeout": DEFAULT_CALL_TIMEOUT_S if timeout is None else timeout,
        "max_retries": max_retries,
        "http_client": http_client,
    }
    settings.update({key: value for key, value in optional.items() if value is not None})
    return ReasoningOpenAIChatCompletionClient(**settings)
