"""The engine on a tiny random Qwen2: a live in-memory policy, its pause, vectorised sampling."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from autogen_core.models import SystemMessage, UserMessage
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlver_agents.builders import engine_rounds
from rlver_agents.config import AgentSettings, RunConfig, SimulatorSettings
from rlver_agents.models.engine import (
    Engine,
    EngineKey,
    get_engine,
    in_rounds,
    loaded_engine,
    register_engine,
    unregister_engine,
)
from rlver_agents.models.local import LocalChatCompletionClient
from rlver_agents.models.records import SamplingParams
from rlver_agents.models.spec import ModelSpec, build_chat_client

CHAT = [
    SystemMessage(content="You are a kind listener."),
    UserMessage(content="My sister did not call me on my birthday.", source="user"),
]


def rescore(
    model: Any, prompt: list[int], completion: list[int], temperature: float
) -> list[float]:
    """Logprobs of ``completion`` at ``temperature`` from one eval-mode forward pass."""
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
    start = len(prompt) - 1
    picked = torch.log_softmax(logits[start : start + len(completion)] / temperature, dim=-1)
    return picked.gather(1, torch.tensor(completion).unsqueeze(1)).squeeze(1).tolist()


def max_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@pytest.fixture(name="live")
def live_fixture(tiny_checkpoint: Path, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A registered live engine over a fresh in-memory copy of the tiny model (train mode)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).train()
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    engine = register_engine(Engine.from_model(model, tokenizer, name=request.node.name))
    yield engine
    unregister_engine(engine)
    engine.shutdown()


async def test_live_policy_samples_a_train_mode_peft_model_and_leaves_it_training(
    tiny_checkpoint: Path,
) -> None:
    """Dropout is on in train mode and gradient checkpointing would drop the KV cache: the
    engine samples in eval mode with the cache, and hands the model back as it found it."""
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    for layer in base.model.layers:
        layer.self_attn.attention_dropout = 0.5
    base.activation_checkpointing_enable()
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.train()
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    engine = register_engine(Engine.from_model(model, tokenizer, name="peft-policy"))
    try:
        assert get_engine("live:peft-policy") is engine
        assert loaded_engine("live:peft-policy") is engine
        client = LocalChatCompletionClient(
            "live:peft-policy", temperature=0.9, seed=2, max_new_tokens=12, on_policy=True
        )
        await client.create(CHAT)
        [record] = client.records
        assert record.model == "live:peft-policy" and record.policy_version == 0
        assert model.training and base.model.layers[0].training
        assert base.is_activation_checkpointing
        # LoRA starts as the identity, so the plain checkpoint must reproduce the record
        prompt, completion = record.prompt_token_ids, record.completion_token_ids
        assert max_gap(rescore(reference, prompt, completion, 0.9), record.completion_logprobs) < (
            1e-4
        )
        assert max_gap(rescore(reference, prompt, completion, 1.0), record.raw_logprobs) < 1e-4
    finally:
        unregister_engine(engine)
        engine.shutdown()
    with pytest.raises(LookupError, match="live:peft-policy"):
        get_engine("live:peft-policy")


async def test_a_model_spec_reaches_the_live_policy(live: Engine) -> None:
    spec = ModelSpec(
        kind="local", model=live.key.path, temperature=1.0, token_mode="append", on_policy=True
    )
    client = build_chat_client(spec)
    assert isinstance(client, LocalChatCompletionClient)
    assert client.config.token_mode == "append" and client.config.on_policy
    await client.create(CHAT)
    assert client.engine is live
    assert client.records[0].token_mode == "append"
    direct = LocalChatCompletionClient(engine=live, greedy=True, max_new_tokens=3)
    assert direct.config.model == live.key.path
    await direct.create(CHAT)
    assert direct.engine is live
    with pytest.raises(ValueError, match="token_mode and on_policy"):
        ModelSpec(kind="openai", model="m", base_url="http://x/v1", token_mode="append")


async def test_while_paused_no_generation_runs_and_each_update_moves_the_version(
    live: Engine,
) -> None:
    client = LocalChatCompletionClient(engine=live, greedy=True, max_new_tokens=8)
    await client.create(CHAT)
    assert client.records[-1].policy_version == live.policy_version == 0

    entered, release, released = threading.Event(), threading.Event(), threading.Event()
    batches_at_release: list[int] = []

    def trainer_step() -> None:
        with live.pause():
            entered.set()
            release.wait(timeout=60)
            with torch.no_grad():  # an "optimizer step" that visibly changes the policy
                live.model.lm_head.weight.mul_(-1.0)
            batches_at_release.append(len(live.batch_sizes))
        released.set()

    trainer = threading.Thread(target=trainer_step)
    trainer.start()
    assert await asyncio.to_thread(entered.wait, 60)
    batches = len(live.batch_sizes)
    waiting = asyncio.ensure_future(client.create(CHAT))
    for _ in range(20):  # plenty of batch windows: nothing may start while the pause is held
        await asyncio.sleep(0.01)
        assert not waiting.done()
    assert len(live.batch_sizes) == batches
    release.set()
    await waiting
    trainer.join(timeout=60)
    assert released.is_set() and batches_at_release == [batches]
    assert live.policy_version == 1
    first, second = client.records[0], client.records[1]
    assert second.policy_version == 1
    assert second.completion_token_ids != first.completion_token_ids

    with live.pause(bump_version=False):
        pass
    with live.pause():
        pass
    await client.create(CHAT)
    assert client.records[-1].policy_version == live.policy_version == 2


async def test_pause_waits_for_the_batch_in_flight(
    live: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = live._forward
    calls: list[bool] = []  # per decode forward: was the pause already entered?
    started = threading.Event()
    inside = threading.Event()

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(inside.is_set())
        if len(calls) == 3:  # mid-batch: let the trainer ask for the pause, and wait until it has
            started.set()
            for _ in range(60_000):
                if live._paused:
                    break
                time.sleep(0.001)
        return forward(*args, **kwargs)

    monkeypatch.setattr(live, "_forward", counted)
    seen: dict[str, int] = {}

    def trainer_step() -> None:
        started.wait(timeout=60)
        seen["requested"] = len(calls)
        with live.pause():
            inside.set()
            seen["entered"] = len(calls)

    trainer = threading.Thread(target=trainer_step)
    trainer.start()
    client = LocalChatCompletionClient(engine=live, greedy=True, max_new_tokens=300)
    await client.create(CHAT)
    trainer.join(timeout=60)
    assert seen["requested"] < seen["entered"] == len(calls)
    assert not any(calls)
    assert len(client.records[0].completion_token_ids) == seen["entered"]


async def test_sampling_is_per_row_so_a_batch_does_not_change_a_seeded_request(
    tiny_checkpoint: Path,
) -> None:
    engine = get_engine(tiny_checkpoint)
    tokenizer = engine.tokenizer
    prompts = [
        tokenizer(text, add_special_tokens=False)["input_ids"]
        for text in ("hi how are you", "I feel so tired", "My sister did not call me", "sad")
    ]
    settings = [
        SamplingParams(temperature=1.2, seed=5, max_new_tokens=10),
        SamplingParams(temperature=0.8, top_p=0.7, seed=6, max_new_tokens=14),
        SamplingParams(temperature=1.0, repetition_penalty=1.4, seed=7, max_new_tokens=12),
        SamplingParams(greedy=True, repetition_penalty=1.2, max_new_tokens=9),
    ]
    before = len(engine.batch_sizes)
    together = await asyncio.gather(
        *(engine.generate(p, s) for p, s in zip(prompts, settings, strict=True))
    )
    assert max(engine.batch_sizes[before:]) == 4
    for prompt, params, batched in zip(prompts, settings, together, strict=True):
        alone = await engine.generate(prompt, params)
        assert alone.completion_ids == batched.completion_ids
        assert max_gap(alone.logprobs, batched.logprobs) < 1e-4
    unseeded = SamplingParams(temperature=1.0, max_new_tokens=16)
    draws = await asyncio.gather(*(engine.generate(prompts[0], unseeded) for _ in range(3)))
    assert len({tuple(d.completion_ids) for d in draws}) > 1


async def test_a_stop_string_ends_the_reply_at_the_token_that_holds_it(
    tiny_checkpoint: Path,
) -> None:
    """The stopped reply is the unstopped one up to that token: same ids and logprobs, the
    stop token recorded (a trainer learns to send it) and left out of the text."""
    free = LocalChatCompletionClient(str(tiny_checkpoint), seed=4, max_new_tokens=24)
    await free.create(CHAT)
    [unstopped] = free.records
    engine = get_engine(tiny_checkpoint)
    texts = [engine.tokenizer.decode([t]) for t in unstopped.completion_token_ids]
    stop = texts[5]
    end = next(i for i, text in enumerate(texts) if stop in text)
    stopped = LocalChatCompletionClient(
        str(tiny_checkpoint), seed=4, max_new_tokens=24, stop=[stop]
    )
    result = await stopped.create(CHAT)
    [record] = stopped.records
    assert record.finish_reason == "stop"
    assert record.completion_token_ids == unstopped.completion_token_ids[: end + 1]
    assert max_gap(record.completion_logprobs, unstopped.completion_logprobs[: end + 1]) < 1e-5
    assert result.content == engine.tokenizer.decode(unstopped.completion_token_ids[:end])
    with pytest.raises(ValueError, match="no token"):
        await engine.generate([1, 2, 3], SamplingParams(stop=("\u2603\u2603\u2603",)))


async def test_recorded_logprobs_include_the_repetition_penalty(tiny_checkpoint: Path) -> None:
    """Policy logprobs are of the distribution sampled from: penalised, then tempered."""
    penalty, temperature = 1.5, 0.9
    client = LocalChatCompletionClient(
        str(tiny_checkpoint),
        temperature=temperature,
        repetition_penalty=penalty,
        seed=1,
        max_new_tokens=20,
    )
    await client.create(CHAT)
    [record] = client.records
    prompt, completion = record.prompt_token_ids, record.completion_token_ids
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
    expected: list[float] = []
    for i, token in enumerate(completion):
        row = logits[len(prompt) - 1 + i].clone()
        seen = torch.tensor(sorted(set(completion[:i])), dtype=torch.long)
        if len(seen):
            picked = row[seen]
            row[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
        expected.append(float(torch.log_softmax(row / temperature, dim=-1)[token]))
    assert max_gap(expected, record.completion_logprobs) < 1e-4
    unpenalised = rescore(model, prompt, completion, temperature)
    assert max_gap(unpenalised, record.completion_logprobs) > 1e-3


async def test_on_policy_clients_refuse_what_a_trainer_cannot_recompute(
    tiny_checkpoint: Path,
) -> None:
    with pytest.raises(ValueError, match=r"repetition_penalty=1\.15"):
        LocalChatCompletionClient(str(tiny_checkpoint), repetition_penalty=1.15, on_policy=True)
    with pytest.raises(ValueError, match="greedy"):
        LocalChatCompletionClient(str(tiny_checkpoint), greedy=True, on_policy=True)
    with pytest.raises(ValueError, match="greedy"):
        LocalChatCompletionClient(str(tiny_checkpoint), temperature=0.0, on_policy=True)
    client = LocalChatCompletionClient(str(tiny_checkpoint), on_policy=True, max_new_tokens=3)
    with pytest.raises(ValueError, match=r"repetition_penalty=1\.3"):
        await client.create(CHAT, extra_create_args={"repetition_penalty": 1.3})
    with pytest.raises(ValueError, match="greedy"):
        await client.create(CHAT, extra_create_args={"temperature": 0.0})
    assert client.records == []
    spec = ModelSpec(kind="local", model=str(tiny_checkpoint), on_policy=True)
    with pytest.raises(ValueError, match="repetition_penalty"):
        build_chat_client(spec.model_copy(update={"repetition_penalty": 1.1}))


EXIT_MID_BATCH = """
import asyncio, threading, time
from rlver_agents.models.embedded import embedded_model_path
from rlver_agents.models.engine import get_engine
from rlver_agents.models.records import SamplingParams

engine = get_engine(embedded_model_path())

async def flood() -> None:
    params = SamplingParams(max_new_tokens=4000, temperature=1.0)
    prompts = [list(range(100 + row, 700 + row)) for row in range(8)]
    await asyncio.gather(*(engine.generate(p, params) for p in prompts), return_exceptions=True)

threading.Thread(target=lambda: asyncio.run(flood()), daemon=True).start()
while not engine.batch_sizes:
    time.sleep(0.01)
time.sleep(1.0)
print("exiting mid-batch", flush=True)
"""


def test_a_process_that_exits_mid_batch_exits_cleanly() -> None:
    """A daemon worker inside a forward pass at exit used to abort the process (code 134)."""
    completed = subprocess.run(
        [sys.executable, "-c", EXIT_MID_BATCH],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-1500:]
    assert "exiting mid-batch" in completed.stdout
    assert "terminate called" not in completed.stderr


async def _dialogues(
    engine: Engine, *, token_mode: str, turns: int = 3, dialogues: int = 4
) -> list[LocalChatCompletionClient]:
    """Concurrent seeded dialogues of different lengths, each on its own client."""
    from autogen_core.models import AssistantMessage

    async def one(index: int) -> LocalChatCompletionClient:
        client = LocalChatCompletionClient(
            engine=engine,
            temperature=1.0,
            top_p=0.9 if index % 2 else 1.0,
            seed=100 + index,
            max_new_tokens=6 + 3 * index,
            token_mode=token_mode,  # type: ignore[arg-type]
        )
        messages = [
            SystemMessage(content="You are a kind listener." + " Truly." * index),
            UserMessage(content="My sister did not call me on my birthday.", source="user"),
        ]
        for turn in range(turns):
            result = await client.create(messages)
            assert isinstance(result.content, str)
            messages += [
                AssistantMessage(content=result.content, source="agent"),
                UserMessage(content=f"Turn {turn}: and then?" + " Hm." * index, source="user"),
            ]
        return client

    return list(await asyncio.gather(*(one(i) for i in range(dialogues))))


@pytest.mark.parametrize("token_mode", ["append", "render"])
async def test_prefix_reuse_samples_and_records_what_a_full_prefill_does(
    live: Engine, token_mode: str
) -> None:
    """Turn k+1 of a dialogue prefills only what follows its cached turn k: same sampled ids,
    same logprobs (within the rescoring tolerance), rows of different reused lengths batched."""
    live.prefix_reuse = False
    plain = await _dialogues(live, token_mode=token_mode)
    assert live.stats.reused_tokens == 0
    full_prefill = live.stats.prefill_tokens
    live.prefix_reuse = True
    reused = await _dialogues(live, token_mode=token_mode)
    assert live.stats.reused_tokens > 0
    assert live.stats.prefill_tokens - full_prefill < full_prefill - live.stats.reused_tokens / 2
    assert max(live.batch_sizes) > 1
    for a, b in zip(plain, reused, strict=True):
        for x, y in zip(a.records, b.records, strict=True):
            assert x.prompt_token_ids == y.prompt_token_ids
            assert x.completion_token_ids == y.completion_token_ids
            assert max_gap(x.completion_logprobs, y.completion_logprobs) < 1e-4
            assert max_gap(x.raw_logprobs, y.raw_logprobs) < 1e-4
            rescored = rescore(live.model, y.prompt_token_ids, y.completion_token_ids, 1.0)
            assert max_gap(y.raw_logprobs, rescored) < 1e-4
    for client in reused:
        await client.close()
    assert live.prefix_store_size == (0, 0)


async def test_a_cached_prefix_is_never_reused_after_a_weight_update(live: Engine) -> None:
    client = LocalChatCompletionClient(engine=live, greedy=True, max_new_tokens=6)
    await client.create(CHAT)
    written = live._prefixes[client._dialogue]
    with live.pause():
        with torch.no_grad():
            live.model.lm_head.weight.mul_(-1.0)
    assert live.prefix_store_size == (0, 0)
    # an entry of the old weights that got back in (say, stored as the update began) is skipped
    live._prefixes[client._dialogue] = written
    live._prefix_tokens += len(written.ids)
    reused_before = live.stats.reused_tokens
    await client.create(CHAT)
    assert live.stats.reused_tokens == reused_before
    record = client.records[-1]
    assert record.policy_version == 1
    rescored = rescore(live.model, record.prompt_token_ids, record.completion_token_ids, 1.0)
    assert max_gap(record.raw_logprobs, rescored) < 1e-4


async def test_prefix_store_is_bounded_and_dropped_with_its_client(live: Engine) -> None:
    import gc

    live.prefix_store_tokens = 10_000
    clients = [
        LocalChatCompletionClient(engine=live, greedy=True, max_new_tokens=4) for _ in range(3)
    ]
    await asyncio.gather(*(c.create(CHAT) for c in clients))
    dialogues, tokens = live.prefix_store_size
    assert dialogues == 3
    per_dialogue = tokens // 3
    del clients[0]
    gc.collect()
    assert live.prefix_store_size[0] == 2
    live.prefix_store_tokens = per_dialogue + 1  # room for one: the least recent goes
    more = LocalChatCompletionClient(engine=live, greedy=True, max_new_tokens=4)
    await more.create(CHAT)
    assert live.prefix_store_size == (1, per_dialogue)
    assert more._dialogue in live._prefixes


async def test_a_model_spec_picks_the_local_dtype(tiny_checkpoint: Path) -> None:
    spec = ModelSpec(kind="local", model=str(tiny_checkpoint), dtype="bfloat16", max_new_tokens=4)
    client = build_chat_client(spec)
    assert isinstance(client, LocalChatCompletionClient)
    assert client.config.dtype == "bfloat16"
    await client.create(CHAT)
    assert client.engine.key.dtype == "bfloat16"
    assert next(client.engine.model.parameters()).dtype == torch.bfloat16
    assert client.engine is not get_engine(tiny_checkpoint)  # float32 stays its own engine
    with pytest.raises(ValueError, match="dtype"):
        ModelSpec(kind="openai", model="m", base_url="http://127.0.0.1:1/v1", dtype="bfloat16")


async def test_in_rounds_a_batch_waits_for_every_running_caller(tiny_checkpoint: Path) -> None:
    engine = Engine.load(EngineKey(str(tiny_checkpoint), "float32", "cpu"))
    prompt = engine.tokenizer("I feel so tired", add_special_tokens=False)["input_ids"]
    params = SamplingParams(temperature=1.0, seed=1, max_new_tokens=4)

    async def staggered(delays: list[float]) -> None:
        async def one(delay: float) -> None:
            await asyncio.sleep(delay)
            await engine.generate(prompt, params)

        await asyncio.gather(*(one(d) for d in delays))

    await staggered([0.0, 0.2, 0.4])
    assert engine.batch_sizes == [1, 1, 1]  # drifting callers: a batch each

    with in_rounds([engine], lambda: 3):
        await staggered([0.0, 0.2, 0.4])
    assert engine.batch_sizes[3:] == [3]

    running = [3]  # a caller that ends releases the round without waiting out max_wait_s
    with in_rounds([engine], lambda: running[0], max_wait_s=600):
        first = asyncio.ensure_future(staggered([0.0, 0.1]))
        await asyncio.sleep(0.3)
        assert not first.done()
        running[0] = 2
        await asyncio.wait_for(first, 60)
    assert engine.batch_sizes[4:] == [2]

    with in_rounds([engine], lambda: 5, max_wait_s=0.3):  # a caller that never comes
        await staggered([0.0, 0.05])
    assert engine.batch_sizes[5:] == [2]

    with (
        pytest.raises(ValueError, match="max_wait_s"),
        in_rounds([engine], lambda: 1, max_wait_s=0),
    ):
        pass
    with in_rounds([engine], lambda: 1), pytest.raises(RuntimeError, match="already"):
        with in_rounds([engine], lambda: 1):
            pass
    engine.shutdown()


async def test_rounds_count_callers_waiting_at_any_engine_of_the_round(
    tiny_checkpoint: Path,
) -> None:
    """Two dialogues in different phases (one at the policy, one at the user's voice) must not
    wait for each other: each engine's batch starts once both are queued somewhere."""
    policy, voice = (Engine.load(EngineKey(str(tiny_checkpoint), "float32", "cpu")) for _ in "ab")
    prompt = policy.tokenizer("I feel so tired", add_special_tokens=False)["input_ids"]
    params = SamplingParams(temperature=1.0, seed=1, max_new_tokens=4)

    running = [2]

    async def dialogue(first: Engine, second: Engine) -> None:
        for engine in (first, second, first, second):
            await engine.generate(prompt, params)
        running[0] -= 1

    with in_rounds([policy, voice], lambda: running[0], max_wait_s=600):
        await asyncio.wait_for(asyncio.gather(dialogue(policy, voice), dialogue(voice, policy)), 60)
    assert sum(policy.batch_sizes) == sum(voice.batch_sizes) == 4
    policy.shutdown()
    voice.shutdown()


def test_a_run_batches_in_rounds_only_when_every_model_is_in_process(
    tiny_checkpoint: Path,
) -> None:
    local = ModelSpec(kind="local", model=str(tiny_checkpoint))
    server = ModelSpec(kind="openai", model="m", base_url="http://127.0.0.1:9/v1")
    run = RunConfig(agent=AgentSettings(model=local))
    rounds = engine_rounds(run, user_voice=False)
    assert rounds is not None
    engine = get_engine(tiny_checkpoint)
    with rounds(lambda: 1):
        with pytest.raises(RuntimeError, match="already"), in_rounds([engine], lambda: 1):
            pass  # the run's rounds hold the agent's engine
    assert engine_rounds(run.model_copy(update={"rounds": False}), user_voice=False) is None
    remote_voice = run.model_copy(update={"simulator": SimulatorSettings(model=server)})
    assert engine_rounds(remote_voice) is None
    remote_agent = RunConfig(agent=AgentSettings(model=server))
    assert engine_rounds(remote_agent, user_voice=False) is None
