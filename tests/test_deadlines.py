"""Deadlines that measure hangs, not queues; abandoned requests leave the engine; shutdown is
prompt. On the tiny random Qwen2 and a scripted user."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from autogen_core.models import SystemMessage, UserMessage
from scripted_user import ScriptedUser

from rlver_agents.agents.agent import EmpatheticAgent
from rlver_agents.deadlines import Deadline, QueueWait
from rlver_agents.emotion import EmotionRules, TerminationReason
from rlver_agents.episodes.episode import RetryPolicy, run_episode
from rlver_agents.models.engine import Engine, EngineKey
from rlver_agents.models.local import LocalChatCompletionClient
from rlver_agents.personas import Persona

PERSONA = Persona(
    id="p-queue",
    profile="a night-shift nurse",
    scene="after a double shift",
    hidden_need="to hear that being tired is allowed",
    character="normal",
    first_talk="I feel so tired and nobody at work listens to me.",
)
RULES = EmotionRules(name="two-turns", initial_score=40, max_turns=2)


def chat(text: str) -> list[SystemMessage | UserMessage]:
    return [
        SystemMessage(content="You are a kind listener."),
        UserMessage(content=text, source="user"),
    ]


async def until(condition: Callable[[], bool], limit_s: float = 60.0) -> None:
    """Poll ``condition`` until it holds (or give up after ``limit_s``)."""
    for _ in range(int(limit_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


@pytest.fixture(name="engine")
def engine_fixture(tiny_checkpoint: Path) -> Iterator[Engine]:
    """An engine of its own, so pausing or shutting it down touches no other test."""
    engine = Engine.load(EngineKey(str(tiny_checkpoint), "float32", "cpu"))
    yield engine
    engine.shutdown(wait_s=60)


def hold_paused(engine: Engine, seconds: float) -> threading.Thread:
    """Pause the engine from a thread, as a trainer does while it updates the weights."""
    entered = threading.Event()

    def hold() -> None:
        with engine.pause(bump_version=False):
            entered.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    entered.wait()
    return thread


async def test_a_deadline_stands_still_while_a_request_is_queued() -> None:
    with pytest.raises(TimeoutError):
        async with Deadline(0.2):
            await asyncio.sleep(0.5)
    async with Deadline(0.2) as deadline:
        wait = QueueWait()
        await asyncio.sleep(0.5)
        wait.end()
        wait.end()  # ending twice is harmless
        await asyncio.sleep(0.05)
    assert not deadline.expired() and deadline.queued_s >= 0.45
    async with Deadline(None) as unbounded:  # no deadline: nothing to stop or restart
        QueueWait().end()
    assert not unbounded.expired()


async def test_a_slow_engine_queue_does_not_trip_a_turn_deadline(engine: Engine) -> None:
    """The engine is held (a trainer's update, or 87 other dialogues) for four times the turn
    deadline while the agent's first call waits; the dialogue still ends normally."""

    def agent(ctx: object) -> EmpatheticAgent:
        client = LocalChatCompletionClient(engine=engine, greedy=True, max_new_tokens=4)
        return EmpatheticAgent("friend", client)

    holder = hold_paused(engine, 2.0)
    episode = await run_episode(
        PERSONA,
        user_factory=lambda ctx: ScriptedUser(RULES),
        agent_factory=agent,
        rules=RULES,
        retry=RetryPolicy(max_attempts=1, turn_timeout_s=0.5),
    )
    holder.join()
    assert episode.ok, episode.error
    assert episode.termination is TerminationReason.MAX_TURNS and episode.attempts == 1


async def test_a_turn_that_computes_too_long_still_times_out_and_its_rows_leave(
    engine: Engine,
) -> None:
    """Decoding counts toward the deadline; the timed-out turn's row is dropped from its batch
    at the next forward pass, so a retry never competes with it."""

    def agent(ctx: object) -> EmpatheticAgent:
        client = LocalChatCompletionClient(engine=engine, greedy=True, max_new_tokens=900)
        return EmpatheticAgent("friend", client)

    episode = await run_episode(
        PERSONA,
        user_factory=lambda ctx: ScriptedUser(RULES),
        agent_factory=agent,
        rules=RULES,
        retry=RetryPolicy(max_attempts=2, base_delay_s=0, turn_timeout_s=0.05),
    )
    assert episode.termination is TerminationReason.ERROR and episode.attempts == 2
    assert episode.error == "TimeoutError: agent 'friend' took longer than 0.05s"
    await until(lambda: engine.decoding == 0, limit_s=2.0)
    assert engine.decoding == 0 and engine.queued == 0
    assert engine.stats.decode_tokens < 2 * 900  # neither attempt decoded to its cap


async def test_cancelled_requests_leave_the_queue_at_once(engine: Engine) -> None:
    client = LocalChatCompletionClient(engine=engine, greedy=True, max_new_tokens=4)
    holder = hold_paused(engine, 1.0)
    calls = [asyncio.ensure_future(client.create(chat(f"hi {i}"))) for i in range(3)]
    await until(lambda: engine.queued == 3)
    for call in calls[:2]:
        call.cancel()
    await asyncio.gather(*calls[:2], return_exceptions=True)
    assert engine.queued == 1
    holder.join()
    result = await asyncio.wait_for(calls[2], timeout=60)
    assert result.usage.completion_tokens <= 4
    assert engine.batch_sizes == [1]  # the two cancelled requests never reached a batch


async def test_shutdown_stops_a_long_generation_within_a_forward_pass(engine: Engine) -> None:
    client = LocalChatCompletionClient(engine=engine, greedy=True, max_new_tokens=900)
    call = asyncio.ensure_future(client.create(chat("My sister did not call me.")))
    await until(lambda: engine.stats.decode_tokens >= 5)
    worker = engine._worker
    assert worker is not None
    await asyncio.to_thread(engine.shutdown, 60)
    assert not worker.is_alive()
    decoded = engine.stats.decode_tokens
    with pytest.raises(RuntimeError, match="shut down"):
        await call
    assert decoded < 900 and engine.decoding == 0


async def test_a_long_prefill_runs_in_chunks_and_samples_what_one_pass_does(
    tiny_checkpoint: Path, engine: Engine
) -> None:
    chunked = Engine.load(EngineKey(str(tiny_checkpoint), "float32", "cpu"))
    chunked.prefill_chunk_tokens = 1  # every chunk is MIN_PREFILL_CHUNK positions wide
    forwards = 0
    forward = chunked._forward

    def counted(*args: object) -> object:
        nonlocal forwards
        forwards += 1
        return forward(*args)  # type: ignore[arg-type]

    chunked._forward = counted  # type: ignore[method-assign]
    long_prompt = chat("tired and unheard " * 150)
    try:
        replies = []
        for which in (chunked, engine):
            client = LocalChatCompletionClient(engine=which, greedy=True, max_new_tokens=8)
            replies.append((await client.create(long_prompt)).content)
        prompt = len(client.records[0].prompt_token_ids)
        assert forwards == -(-prompt // 128) + 7 and prompt > 2 * 128  # chunks, then 7 steps
        assert replies[0] == replies[1]
    finally:
        chunked.shutdown(wait_s=60)
