"""OpenAI-compatible clients: reasoning fields, request shape, ModelSpec, and a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
from autogen_agentchat.messages import TextMessage
from autogen_core.models import ChatCompletionClient, CreateResult, UserMessage
from models_fixtures import ServedModel

from rlver_agents.appraisers.appraisal import Appraisal
from rlver_agents.emotion import EmotionRules
from rlver_agents.models import (
    KNOWN_FAMILIES,
    ModelSpec,
    ModelSpecError,
    build_chat_client,
    model_info_for,
    openai_compatible_client,
)
from rlver_agents.models.openai_compat import (
    DEFAULT_CALL_TIMEOUT_S,
    MalformedResponseError,
    ReasoningOpenAIChatCompletionClient,
)
from rlver_agents.personas import Persona

BASE_URL = "http://127.0.0.1:8000/v1"
MESSAGES = [UserMessage(content="I had a rough day.", source="user")]


def completion(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "served",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", **message}}
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
    }


def sse(deltas: list[dict[str, Any]]) -> bytes:
    events = []
    for i, delta in enumerate(deltas):
        finish = "stop" if i == len(deltas) - 1 else None
        chunk = {
            "id": "cmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "served",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        events.append(f"data: {json.dumps(chunk)}\n\n")
    events.append("data: [DONE]\n\n")
    return "".join(events).encode()


class FakeServer:
    """Answers every request with one canned body and remembers what was sent."""

    def __init__(self, body: dict[str, Any] | bytes) -> None:
        self.body = body
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if isinstance(self.body, bytes):
            return httpx2.Response(
                200, content=self.body, headers={"content-type": "text/event-stream"}
            )
        return httpx2.Response(200, json=self.body)

    def client(self, **settings: Any) -> ReasoningOpenAIChatCompletionClient:
        return openai_compatible_client(
            "served",
            BASE_URL,
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(self)),
            **settings,
        )

    def sent(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
async def test_reasoning_field_becomes_the_thought(field: str) -> None:
    server = FakeServer(completion({"content": "That sounds hard.", field: "They are upset."}))
    result = await server.client(family="qwen3").create(MESSAGES)
    assert result.thought == "They are upset."
    assert result.content == "That sounds hard."
    assert result.usage.prompt_tokens == 7 and result.usage.completion_tokens == 5


async def test_no_reasoning_means_no_thought() -> None:
    server = FakeServer(completion({"content": "Tell me more."}))
    result = await server.client().create(MESSAGES)
    assert result.thought is None
    assert result.content == "Tell me more."


@pytest.mark.parametrize(
    ("message", "thought"),
    [({"content": ""}, None), ({"content": None, "reasoning": "Hm."}, "Hm.")],
)
async def test_a_models_empty_reply_is_an_answer_not_a_fault(
    message: dict[str, Any], thought: str | None
) -> None:
    """``""`` is the model ending its turn at once; ``null`` beside a thought is a reply that
    was all thought. Both are the model's output, for the dialogue to appraise."""
    result = await FakeServer(completion(message)).client(family="qwen3").create(MESSAGES)
    assert result.content == "" and result.thought == thought


async def test_reasoning_content_wins_when_both_are_sent() -> None:
    server = FakeServer(
        completion({"content": "Hm.", "reasoning_content": "old field", "reasoning": "new field"})
    )
    assert (await server.client().create(MESSAGES)).thought == "old field"


async def test_streamed_reasoning_becomes_the_thought() -> None:
    server = FakeServer(
        sse(
            [
                {"role": "assistant", "reasoning": "They feel "},
                {"reasoning": "alone."},
                {"content": "I'm here "},
                {"content": "with you."},
            ]
        )
    )
    items = [item async for item in server.client().create_stream(MESSAGES)]
    final = items[-1]
    assert isinstance(final, CreateResult)
    assert final.thought == "They feel alone."
    assert final.content == "I'm here with you."
    assert server.sent()["stream"] is True


async def test_request_carries_base_url_model_settings_and_extra_body() -> None:
    server = FakeServer(completion({"content": "ok"}))
    client = server.client(
        family="qwen2.5",
        extra_body={"chat_template_kwargs": {"enable_thinking": False}, "top_k": 20},
        temperature=0.6,
        max_tokens=64,
        seed=3,
        stop=["\n"],
    )
    await client.create(MESSAGES)
    request = server.requests[-1]
    assert str(request.url) == f"{BASE_URL}/chat/completions"
    assert request.headers["authorization"] == "Bearer EMPTY"
    body = server.sent()
    assert body["model"] == "served"
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["top_k"] == 20
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.6, 64, 3)
    assert body["stop"] == ["\n"]
    assert body["messages"][-1]["content"] == "I had a rough day."


def test_model_info_table_and_default() -> None:
    qwen = model_info_for("Qwen2.5")
    assert qwen["family"] == "qwen2.5" and not qwen["vision"]
    assert qwen == KNOWN_FAMILIES["qwen2.5"]
    unknown = model_info_for("some-new-model")
    assert unknown["family"] == "unknown"
    assert not (unknown["function_calling"] or unknown["json_output"] or unknown["vision"])
    client = openai_compatible_client("served", BASE_URL, family="qwen2.5")
    assert client.model_info["family"] == "qwen2.5"


def test_component_round_trip_keeps_extra_body_and_the_reasoning_hook() -> None:
    client = openai_compatible_client(
        "served", BASE_URL, family="qwen2.5", extra_body={"top_k": 20}, temperature=0.4
    )
    loaded = ChatCompletionClient.load_component(client.dump_component())
    assert isinstance(loaded, ReasoningOpenAIChatCompletionClient)
    assert loaded._create_args == {
        "model": "served",
        "temperature": 0.4,
        "extra_body": {"top_k": 20},
        "timeout": DEFAULT_CALL_TIMEOUT_S,  # sent with each request; the SDK's own is 600 s
    }
    assert loaded.model_info == client.model_info


def test_spec_builds_an_openai_client_with_the_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = ModelSpec(
        kind="openai",
        model="Qwen/Qwen2.5-7B-Instruct",
        base_url=BASE_URL,
        api_key_env="RLVER_TEST_KEY",
        family="qwen2.5",
        temperature=0.5,
        max_new_tokens=128,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    monkeypatch.delenv("RLVER_TEST_KEY", raising=False)
    with pytest.raises(ModelSpecError, match="RLVER_TEST_KEY"):
        build_chat_client(spec)
    monkeypatch.setenv("RLVER_TEST_KEY", "sk-test")
    client = build_chat_client(spec)
    assert isinstance(client, ReasoningOpenAIChatCompletionClient)
    assert client._client.api_key == "sk-test"
    assert client._create_args["max_tokens"] == 128
    assert client._create_args["extra_body"] == spec.extra_body
    assert client.model_info["family"] == "qwen2.5"


def test_spec_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="needs both model and base_url"):
        ModelSpec(kind="openai", model="x")
    with pytest.raises(ValueError, match="checkpoint directory"):
        ModelSpec(kind="local")
    with pytest.raises(ValueError, match="extra_body"):
        ModelSpec(kind="embedded", extra_body={"top_k": 5})
    with pytest.raises(ValueError, match="extra"):
        ModelSpec(kind="embedded", temprature=0.3)  # type: ignore[call-arg]


def test_spec_builds_local_clients(tmp_path: Path) -> None:
    from rlver_agents.models.local import LocalChatCompletionClient

    embedded = build_chat_client(ModelSpec(kind="embedded", seed=4, temperature=0.2))
    assert isinstance(embedded, LocalChatCompletionClient)
    assert (embedded.config.model, embedded.config.seed, embedded.config.temperature) == (
        "embedded",
        4,
        0.2,
    )
    local = build_chat_client(
        ModelSpec(
            kind="local",
            model=str(tmp_path),
            extra_body={"chat_template_kwargs": {"enable_thinking": True}},
        )
    )
    assert isinstance(local, LocalChatCompletionClient)
    assert local.config.chat_template_kwargs == {"enable_thinking": True}


@pytest.mark.parametrize(
    "statement",
    [
        "import rlver_agents.models",
        "from rlver_agents.models import build_chat_client, ModelSpec, GenerationRecord",
        "import rlver_agents.models.openai_compat, rlver_agents.models.spec",
    ],
)
def test_torch_free_imports(statement: str) -> None:
    code = f"{statement}; import sys; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Resolved model mismatch")
async def test_chat_completion_through_transformers_serve(
    served_embedded_model: ServedModel,
) -> None:
    client = openai_compatible_client(
        served_embedded_model.model,
        served_embedded_model.base_url,
        family="smollm2",
        max_tokens=12,
        temperature=0.0,
    )
    result = await client.create([UserMessage(content="Hello! How are you?", source="user")])
    assert isinstance(result.content, str) and result.content.strip()
    assert result.usage.completion_tokens > 0
    await client.close()


class SteadyAppraiser:
    """Every agent message lifts the mood by the same amount, so the dialogue is predictable."""

    def __init__(self, change: int) -> None:
        self.change = change
        self.calls = 0

    async def appraise(self, **_: Any) -> Appraisal:
        self.calls += 1
        return Appraisal(change=self.change, reaction="I feel a bit heard.")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Resolved model mismatch")
async def test_short_dialogue_through_transformers_serve(
    served_embedded_model: ServedModel,
) -> None:
    from rlver_agents.agents.agent import EmpatheticAgent
    from rlver_agents.agents.simulator import SimulatedUser, dialogue_team

    def client() -> ChatCompletionClient:
        return openai_compatible_client(
            served_embedded_model.model,
            served_embedded_model.base_url,
            family="smollm2",
            max_tokens=8,
            temperature=0.0,
        )

    persona = Persona(
        id="served-1",
        profile="A nurse in her thirties who works night shifts.",
        scene="Her manager ignored her request for time off again.",
        hidden_need="To hear that her exhaustion is legitimate.",
        first_talk="My manager ignored my time-off request again.",
    )
    appraiser = SteadyAppraiser(change=5)
    rules = EmotionRules(initial_score=40, max_turns=1)
    user = SimulatedUser("user", client(), persona, rules=rules, appraiser=appraiser)
    agent = EmpatheticAgent("agent", client())
    result = await dialogue_team(user, agent, max_messages=4).run()

    said = [m for m in result.messages if isinstance(m, TextMessage)]
    agent_lines = [m for m in said if m.source == "agent"]
    user_lines = [m for m in said if m.source == "user"]
    assert user_lines[0].content == persona.first_talk
    assert len(agent_lines) == 1 and agent_lines[0].content.strip()
    assert appraiser.calls == 1
    assert len(user_lines) == 2 and user_lines[-1].content.strip()
    assert user_lines[-1].metadata["emotion_score"] == "45"
    assert user_lines[-1].metadata["terminal"] == "true"
    assert user_lines[-1].metadata["termination_reason"] == "max_turns"


def _answering(status: int, content: bytes, content_type: str) -> httpx2.AsyncClient:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=content, headers={"content-type": content_type})

    return httpx2.AsyncClient(transport=httpx2.MockTransport(answer))


@pytest.mark.parametrize(
    ("content", "content_type", "problem"),
    [
        (b'{"object": "error"}', "application/json", "a body without choices"),
        (b'{"choices": []}', "application/json", "a body without choices"),
        (b'{"choices": [{"index": 0}]}', "application/json", "a choice without a message"),
        (b"<html>busy</html>", "text/html", "a body that is not JSON: '<html>busy</html>'"),
        (b'{"choices": [', "application/json", "invalid JSON"),
        (
            json.dumps(completion({"content": None})).encode(),
            "application/json",
            "a message whose content is null",
        ),
    ],
)
@pytest.mark.parametrize("structured", [False, True])
async def test_a_malformed_body_names_the_server_and_model(
    content: bytes, content_type: str, problem: str, structured: bool
) -> None:
    client = openai_compatible_client(
        "served",
        BASE_URL,
        family="qwen2.5",
        max_retries=0,
        http_client=_answering(200, content, content_type),
    )
    with pytest.raises(MalformedResponseError) as caught:
        await client.create(MESSAGES, json_output=Appraisal if structured else None)
    message = str(caught.value)
    assert message.startswith(f"{BASE_URL} (model 'served') answered with ")
    assert problem in message or (structured and "not a chat completion" in message)
    assert caught.value.status_code == 502, "marked transient: the call is worth another try"
