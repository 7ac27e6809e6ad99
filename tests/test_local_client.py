"""LocalChatCompletionClient on a tiny random Qwen2: exact records, batching, seeds, cancelling."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.messages import TextMessage
from autogen_core import CancellationToken
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    SystemMessage,
    UserMessage,
)
from models_fixtures import scripted_engine
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


def rescore(
    path: Path, prompt_ids: list[int], completion_ids: list[int], temperature: float = 1.0
) -> list[float]:
    """Logprobs of a completion at ``temperature`` from a freshly loaded copy of the weights."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    start = len(prompt_ids) - 1
    scaled = logits[start : start + len(completion_ids)].float() / temperature
    logprobs = torch.log_softmax(scaled, dim=-1)
    return [float(logprobs[i, token]) for i, token in enumerate(completion_ids)]


def max_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "settings",
    [{"greedy": True}, {"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.3, "seed": 4}],
)
async def test_recorded_logprobs_match_a_rescoring_forward_pass(
    tiny_checkpoint: Path, settings: dict[str, object]
) -> None:
    """Policy logprobs at the sampling temperature (1 when greedy), raw ones at temperature 1."""
    client = LocalChatCompletionClient(str(tiny_checkpoint), max_new_tokens=16, **settings)
    result = await client.create(chat(PROMPTS[1]))
    [record] = client.records
    assert record.completion_token_ids and len(record.completion_token_ids) <= 16
    temperature = 1.0 if record.sampling.is_greedy else record.sampling.temperature
    prompt, completion = record.prompt_token_ids, record.completion_token_ids
    policy = rescore(tiny_checkpoint, prompt, completion, temperature)
    raw = rescore(tiny_checkpoint, prompt, completion)
    assert max_gap(policy, record.completion_logprobs) <= 1e-4
    assert max_gap(raw, record.raw_logprobs) <= 1e-4
    if temperature != 1.0:
        assert max_gap(raw, record.completion_logprobs) > 1e-3
    engine_scores = client.engine.score(prompt, completion, temperature=temperature)
    assert max_gap(policy, engine_scores) <= 1e-4
    assert result.logprobs is not None
    assert [t.logprob for t in result.logprobs] == record.completion_logprobs
    assert record.policy_version == 0 and record.token_mode == "render"


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
            completion_ids=ids,
            logprobs=[-1.0] * len(ids),
            raw_logprobs=[-2.0] * len(ids),
            finish_reason="stop",
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
            completion_ids=ids,
            logprobs=[-1.0] * len(ids),
            raw_logprobs=[-2.0] * len(ids),
            finish_reason="length",
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


async def test_append_stream_equals_a_fresh_render_of_the_whole_chat(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without thoughts, the append-only stream is the template's render of the whole chat.

    The fixture's template is ChatML, which is what Qwen2.5's template renders for a chat that
    starts with a system message and uses no tools. The replies are canonical token ids, so
    ids match as well as text; a reply cut at the length limit gets the template's end-of-turn
    token appended as an environment token.
    """
    client = LocalChatCompletionClient(str(tiny_checkpoint), token_mode="append", seed=1)
    replies = ["That sounds exhausting.", "You wanted her to remember you…", "I am here."]
    prompts = scripted_engine(client, monkeypatch, replies)
    tokenizer = client.engine.tokenizer
    messages: list[SystemMessage | UserMessage | AssistantMessage] = list(chat(PROMPTS[2]))
    users = ["Nobody at work listens to me.", "Thank you for listening."]
    for turn in range(3):
        result = await client.create(messages)
        record = client.records[-1]
        fresh = tokenizer.apply_chat_template(
            [{"role": m.type[:-7].lower(), "content": m.content} for m in messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        assert record.prompt_text == fresh
        assert record.prompt_token_ids == tokenizer(fresh, add_special_tokens=False)["input_ids"]
        assert record.token_mode == "append" and prompts[-1] == record.prompt_token_ids
        if turn:
            before = client.records[-2]
            stream = before.prompt_token_ids + before.completion_token_ids
            assert record.prompt_token_ids[: len(stream)] == stream
        if turn < 2:
            messages += [
                AssistantMessage(content=str(result.content), source="agent"),
                UserMessage(content=users[turn], source="user"),
            ]
    assert [r.finish_reason for r in client.records] == ["stop", "length", "stop"]
    assert "…<|im_end|>\n<|im_start|>user" in client.records[2].prompt_text


async def test_append_mode_refuses_a_history_it_cannot_extend(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = LocalChatCompletionClient(str(tiny_checkpoint), token_mode="append")
    scripted_engine(client, monkeypatch, ["That sounds exhausting.", "I am here."])
    first = chat(PROMPTS[1])
    result = await client.create(first)
    reply = AssistantMessage(content=str(result.content), source="agent")
    more = UserMessage(content="sad", source="user")
    cases = {
        "trimmed": ([first[1], reply, more], "message 0 is not the one"),
        "edited": ([first[0], UserMessage(content="hi", source="u"), reply, more], "message 1"),
        "no reply": ([*first, more], "message 2 must be the assistant reply"),
        "other reply": (
            [*first, AssistantMessage(content="Something else.", source="agent"), more],
            "not the reply this client produced",
        ),
        "two replies": ([*first, reply, more, reply, more], "only one assistant message"),
    }
    for name, (messages, error) in cases.items():
        with pytest.raises(ValueError, match=error):
            await client.create(messages)
        assert len(client.records) == 1, name
    counted = client.count_tokens([*first, reply, more])
    await client.create([*first, reply, more])
    assert len(client.records) == 2
    assert counted == len(client.records[1].prompt_token_ids)


async def test_append_mode_keeps_earlier_thoughts_in_the_stream(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply this client produced may come back with or without its thought."""
    said = "<think>she feels unheard</think> That sounds exhausting."
    relaid = "<think>\nshe feels unheard\n</think>\n\nThat sounds exhausting."
    for kept in ("That sounds exhausting.", said, relaid):
        client = LocalChatCompletionClient(str(tiny_checkpoint), token_mode="append")
        scripted_engine(client, monkeypatch, [said, "I am here."])
        first = chat(PROMPTS[0])
        result = await client.create(first)
        assert (result.thought, result.content) == ("she feels unheard", "That sounds exhausting.")
        answer = UserMessage(content="ok", source="u")
        await client.create([*first, AssistantMessage(content=kept, source="agent"), answer])
        second = client.records[1]
        assert said + "<|im_end|>\n<|im_start|>user\nok<|im_end|>\n" in second.prompt_text
    render = LocalChatCompletionClient(str(tiny_checkpoint))
    scripted_engine(render, monkeypatch, [said, "I am here."])
    await render.create(first)
    visible = AssistantMessage(content="That sounds exhausting.", source="a")
    await render.create([*first, visible, UserMessage(content="ok", source="u")])
    assert "she feels unheard" not in render.records[1].prompt_text


async def test_keep_thoughts_agent_continues_an_append_stream_after_malformed_output(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user sees the fallback, but the agent's context (and stream) keeps what was said."""
    said = "<think>she feels unheard and I should…"
    for keep in (True, False):
        client = LocalChatCompletionClient(str(tiny_checkpoint), token_mode="append")
        scripted_engine(client, monkeypatch, [said, "I am here."])
        agent = EmpatheticAgent("friend", client, think=True, keep_thoughts=keep)
        assert agent.model_client is client and agent.keep_thoughts is keep
        first = await agent.on_messages(
            [TextMessage(content="hi", source="user")], CancellationToken()
        )
        assert first.chat_message.metadata["format_violation"] == FormatViolation.UNCLOSED_THINK
        assert "<think>" not in first.chat_message.to_text()
        second = agent.on_messages([TextMessage(content="ok", source="user")], CancellationToken())
        if not keep:
            with pytest.raises(ValueError, match="keep_thoughts=True"):
                await second
            continue
        await second
        assert said + "<|im_end|>\n<|im_start|>user\nok<|im_end|>" in client.records[1].prompt_text
        config = agent.dump_component()
        assert config.config["keep_thoughts"] is True
        loaded = BaseChatAgent.load_component(config)
        assert isinstance(loaded, EmpatheticAgent) and loaded.keep_thoughts
        assert isinstance(loaded.model_client, LocalChatCompletionClient)
        assert loaded.model_client.config.token_mode == "append"
    with pytest.raises(ValueError, match="keep_thoughts needs think=True"):
        EmpatheticAgent("friend", client, keep_thoughts=True)
