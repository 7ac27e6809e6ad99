"""LocalChatCompletionClient on a tiny random Qwen2: exact records, batching, seeds, cancelling."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from autogen_agentchat.messages import TextMessage
from autogen_core import CancellationToken
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    SystemMessage,
    UserMessage,
)
from models_fixtures import embedded_checkpoint_fixture, tiny_checkpoint_fixture  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlver_agents.agent import EmpatheticAgent
from rlver_agents.models.engine import GenerationOutput, get_engine
from rlver_agents.models.local import LocalChatCompletionClient
from rlver_agents.thinking import FormatViolation

PROMPTS = [
    "hi",
    "My sister did not call me on my birthday.",
    "I feel so tired and nobody listens.",
    "What happened today? Tell me more about it.",
]


def chat(text: str) -> list[SystemMessage | UserMessage | AssistantMessage]:
    return [
        SystemMessage(content="You are a kind listener."),
        UserMessage(content=text, source="user"),
    ]


def rescore(path: Path, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    """Raw-model logprobs of a completion from a freshly loaded copy of the weights."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    start = len(prompt_ids) - 1
    logprobs = torch.log_softmax(logits[start : start + len(completion_ids)].float(), dim=-1)
    return [float(logprobs[i, token]) for i, token in enumerate(completion_ids)]


@pytest.mark.parametrize("settings", [{"greedy": True}, {"temperature": 0.7, "top_p": 0.9}])
async def test_recorded_logprobs_match_a_rescoring_forward_pass(
    tiny_checkpoint: Path, settings: dict[str, object]
) -> None:
    client = LocalChatCompletionClient(str(tiny_checkpoint), max_new_tokens=16, **settings)
    result = await client.create(chat(PROMPTS[1]))
    [record] = client.records
    assert record.completion_token_ids and len(record.completion_token_ids) <= 16
    expected = rescore(tiny_checkpoint, record.prompt_token_ids, record.completion_token_ids)
    diff = max(abs(a - b) for a, b in zip(expected, record.completion_logprobs, strict=True))
    assert diff <= 1e-4
    engine_scores = client.engine.score(record.prompt_token_ids, record.completion_token_ids)
    assert max(abs(a - b) for a, b in zip(expected, engine_scores, strict=True)) <= 1e-4
    assert result.logprobs is not None
    assert [t.logprob for t in result.logprobs] == record.completion_logprobs


async def test_completion_ids_decode_to_the_message_text(tiny_checkpoint: Path) -> None:
    client = LocalChatCompletionClient(str(tiny_checkpoint), greedy=True, max_new_tokens=12)
    result = await client.create(chat(PROMPTS[2]))
    record = client.records[0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    text_ids = record.completion_token_ids
    if record.finish_reason == "stop":
        text_ids = text_ids[:-1]
    assert tokenizer.decode(text_ids) == record.completion_text == result.content
    assert result.thought is None
    assert tokenizer.decode(record.prompt_token_ids) == record.prompt_text
    assert record.prompt_text.endswith("<|im_start|>assistant\n")
    assert result.usage.prompt_tokens == len(record.prompt_token_ids)
    assert result.usage.completion_tokens == len(record.completion_token_ids)


async def test_think_block_becomes_the_thought_and_stop_token_is_recorded(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = LocalChatCompletionClient(str(tiny_checkpoint), greedy=True)
    engine = client.engine
    said = "<think>she feels unheard</think> That sounds exhausting."
    ids = engine.tokenizer(said, add_special_tokens=False)["input_ids"] + [
        engine.tokenizer.eos_token_id
    ]

    async def scripted(prompt_ids: list[int], params: object) -> GenerationOutput:
        return GenerationOutput(
            completion_ids=ids, logprobs=[-1.0] * len(ids), finish_reason="stop"
        )

    monkeypatch.setattr(engine, "generate", scripted)
    result = await client.create(chat("hi"))
    assert result.thought == "she feels unheard"
    assert result.content == "That sounds exhausting."
    assert result.finish_reason == "stop"
    record = client.records[0]
    assert record.completion_token_ids[-1] == engine.tokenizer.eos_token_id
    assert record.completion_text == said


async def test_malformed_think_output_reaches_the_agent_whole_and_is_flagged(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = LocalChatCompletionClient(str(tiny_checkpoint), greedy=True)
    engine = client.engine
    said = "<think>she feels unheard and I should"
    ids = engine.tokenizer(said, add_special_tokens=False)["input_ids"]

    async def scripted(prompt_ids: list[int], params: object) -> GenerationOutput:
        return GenerationOutput(
            completion_ids=ids, logprobs=[-1.0] * len(ids), finish_reason="length"
        )

    monkeypatch.setattr(engine, "generate", scripted)
    result = await client.create(chat("hi"))
    assert (result.thought, result.content) == (None, said)

    agent = EmpatheticAgent("friend", client, think=True)
    response = await agent.on_messages(
        [TextMessage(content="hi", source="user")], CancellationToken()
    )
    assert response.chat_message.metadata["format_violation"] == FormatViolation.UNCLOSED_THINK
    assert "<think>" not in response.chat_message.to_text()


async def test_concurrent_calls_are_batched_and_match_solo_greedy_calls(
    tiny_checkpoint: Path,
) -> None:
    engine = get_engine(tiny_checkpoint)
    seen = len(engine.batch_sizes)
    clients = [
        LocalChatCompletionClient(str(tiny_checkpoint), greedy=True, max_new_tokens=10)
        for _ in PROMPTS
    ]
    together = await asyncio.gather(
        *(c.create(chat(p)) for c, p in zip(clients, PROMPTS, strict=True))
    )
    assert max(engine.batch_sizes[seen:]) > 1
    assert all(c.engine is engine for c in clients)
    solo_client = LocalChatCompletionClient(str(tiny_checkpoint), greedy=True, max_new_tokens=10)
    for prompt, batched, client in zip(PROMPTS, together, clients, strict=True):
        before = len(engine.batch_sizes)
        solo = await solo_client.create(chat(prompt))
        assert engine.batch_sizes[before:] == [1]
        assert solo.content == batched.content
        assert (
            solo_client.records[-1].completion_token_ids == client.records[0].completion_token_ids
        )


async def test_mixed_sampling_settings_in_one_batch(tiny_checkpoint: Path) -> None:
    """A greedy row and a sampled row share a batch without affecting each other."""
    greedy = LocalChatCompletionClient(str(tiny_checkpoint), greedy=True, max_new_tokens=8)

    def sampled() -> LocalChatCompletionClient:
        return LocalChatCompletionClient(
            str(tiny_checkpoint), temperature=1.3, seed=11, max_new_tokens=3
        )

    first_sampled = sampled()
    g1, s1 = await asyncio.gather(greedy.create(chat("hi")), first_sampled.create(chat("hi")))
    assert len(first_sampled.records[0].completion_token_ids) <= 3
    g2 = await greedy.create(chat("hi"))
    s2 = await sampled().create(chat("hi"))
    assert (g1.content, s1.content) == (g2.content, s2.content)


async def test_seed_makes_sampling_reproducible(tiny_checkpoint: Path) -> None:
    def client(seed: int) -> LocalChatCompletionClient:
        return LocalChatCompletionClient(
            str(tiny_checkpoint), temperature=1.0, seed=seed, max_new_tokens=16
        )

    first, again, other = await asyncio.gather(
        *(client(s).create(chat(PROMPTS[0])) for s in (7, 7, 8))
    )
    assert first.content == again.content
    assert first.content != other.content
    override = await client(8).create(chat(PROMPTS[0]), extra_create_args={"seed": 7})
    assert override.content == first.content


async def test_a_seeded_client_replays_its_call_sequence(tiny_checkpoint: Path) -> None:
    """Call k uses seed + k: a repeated prompt gets a fresh sample, a fresh client replays."""

    async def three_calls() -> list[str]:
        client = LocalChatCompletionClient(
            str(tiny_checkpoint), temperature=1.0, seed=3, max_new_tokens=16
        )
        results = [await client.create(chat(PROMPTS[0])) for _ in range(3)]
        assert [r.sampling.seed for r in client.records] == [3, 4, 5]
        return [str(r.content) for r in results]

    first = await three_calls()
    assert len(set(first)) > 1
    assert await three_calls() == first


async def test_cancelled_request_does_not_block_others(tiny_checkpoint: Path) -> None:
    engine = get_engine(tiny_checkpoint)
    long_client = LocalChatCompletionClient(str(tiny_checkpoint), greedy=True, max_new_tokens=900)
    short_client = LocalChatCompletionClient(str(tiny_checkpoint), greedy=True, max_new_tokens=4)
    token = CancellationToken()
    started = len(engine.batch_sizes)
    long_call = asyncio.ensure_future(long_client.create(chat("hi"), cancellation_token=token))
    short_call = asyncio.ensure_future(short_client.create(chat("sad")))
    short = await asyncio.wait_for(short_call, timeout=60)
    assert isinstance(short, CreateResult)
    assert len(engine.batch_sizes) > started and not long_call.done()
    token.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long_call
    assert long_client.records == []
    after = await asyncio.wait_for(short_client.create(chat("hello")), timeout=60)
    assert len(short_client.records) == 2 and after.usage.completion_tokens <= 4


async def test_count_and_remaining_tokens(tiny_checkpoint: Path) -> None:
    client = LocalChatCompletionClient(
        str(tiny_checkpoint), greedy=True, max_new_tokens=4, max_context=120
    )
    messages = [*chat(PROMPTS[3]), AssistantMessage(content="I am here.", source="agent")]
    counted = client.count_tokens(messages)
    await client.create(messages)
    assert counted == len(client.records[0].prompt_token_ids)
    assert client.remaining_tokens(messages) == 120 - counted
    with pytest.raises(ValueError, match="context limit"):
        await client.create(chat("hi " * 200))


async def test_usage_model_info_and_stream(tiny_checkpoint: Path) -> None:
    client = LocalChatCompletionClient(str(tiny_checkpoint), greedy=True, max_new_tokens=5)
    await client.create(chat("hi"))
    items = [item async for item in client.create_stream(chat("sad"))]
    assert len(items) == 1 and isinstance(items[0], CreateResult)
    prompt_total = sum(len(r.prompt_token_ids) for r in client.records)
    completion_total = sum(len(r.completion_token_ids) for r in client.records)
    assert client.total_usage().prompt_tokens == prompt_total
    assert client.total_usage().completion_tokens == completion_total
    assert client.actual_usage() == client.total_usage()
    info = client.model_info
    assert info["family"] == "unknown"
    assert not (info["vision"] or info["function_calling"] or info["json_output"])
    assert not info["structured_output"]
    with pytest.raises(ValueError, match="unsupported extra_create_args"):
        await client.create(chat("hi"), extra_create_args={"frequency_penalty": 1.0})
    await client.close()
    with pytest.raises(RuntimeError, match="close"):
        await client.create(chat("hi"))


async def test_component_round_trip(tiny_checkpoint: Path) -> None:
    client = LocalChatCompletionClient(
        str(tiny_checkpoint), temperature=0.3, top_p=0.8, max_new_tokens=6, seed=5, max_context=200
    )
    model = client.dump_component()
    assert model.provider == "rlver_agents.models.local.LocalChatCompletionClient"
    loaded = ChatCompletionClient.load_component(model)
    assert isinstance(loaded, LocalChatCompletionClient)
    assert loaded.config == client.config
    first = await client.create(chat("hi"))
    second = await loaded.create(chat("hi"))
    assert first.content == second.content


@pytest.mark.slow
async def test_embedded_model_through_the_client(embedded_checkpoint: Path) -> None:
    client = LocalChatCompletionClient("embedded", greedy=True, max_new_tokens=8)
    result = await client.create([UserMessage(content="Hello! How are you?", source="user")])
    assert isinstance(result.content, str) and result.content.strip()
    assert Path(client.engine.key.path).name == embedded_checkpoint.name
    assert client.records[0].prompt_text.rstrip().endswith("<|im_start|>assistant")
