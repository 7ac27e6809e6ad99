"""How close does the collector get to the latency floor of a slow model server?

The loopback server of ``rlver_agents.testing.fake_server`` answers every chat completion after a
fixed delay: appraisal requests get a readable appraisal with a change of 0, +1 or +2 (so every
dialogue runs all ``rlver_train`` turns), other requests a short line. The simulated
users (LLM appraiser and reply model) and the agents all talk to it through
``rlver_agents.models.openai_compat.openai_compatible_client``.

From one run:

- the floor: the model calls one dialogue makes in sequence, times the delay; no schedule of
  the campaign can finish sooner;
- the collector's wall time for all episodes at once, as a multiple of that floor, and the
  client process's CPU per model call;
- the same calls sent by bare client loops (no agents), the floor one Python process
  reaches with this client;
- the collector with an in-process model of the same delay (no HTTP), its own overhead;
- the speed-up over the same episodes with one simulator call at a time (a global lock around
  every simulator call, the way a rollout loop that calls its simulator synchronously behaves).

The server runs in its own process, serves at most a fixed number of requests, and stops
itself after that or after a deadline, whichever comes first.

    python benchmarks/collector_concurrency.py [--episodes 64] [--delay 0.1] [--per-client 8]
        [--skip-serial]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import random
import tempfile
import time
import urllib.request
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    RequestUsage,
)
from autogen_ext.models.replay import ReplayChatCompletionClient

from rlver_agents.agents.simulator import SimulatedUser
from rlver_agents.appraisers.appraisal import FENCE_OPEN, LLMAppraiser
from rlver_agents.emotion import RLVER_TRAIN, TerminationReason
from rlver_agents.episodes.collector import CollectorConfig, TrajectoryCollector
from rlver_agents.episodes.episode import EpisodeContext, RetryPolicy
from rlver_agents.episodes.episode_file import read_episodes
from rlver_agents.models.client_base import DelegatingChatCompletionClient
from rlver_agents.models.openai_compat import openai_compatible_client
from rlver_agents.personas import load_split
from rlver_agents.testing.fake_server import free_port, prompt_text, serve

MODEL = "bench"


class Script:
    """What the fake model says: a small positive appraisal, or a line never said before."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._lines = itertools.count(1)

    def answer(self, request: dict[str, Any]) -> str:
        if FENCE_OPEN in prompt_text(request):
            change = self._rng.randint(0, 2)
            return f"Intent: to comfort\nFit: partly\nReaction: a bit calmer\nChange: +{change}"
        # Every line differs, so the simulated user never regenerates a repeated reply.
        return f"I see, that makes sense, point {next(self._lines)}."


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as response:  # loopback only
        return bytes(response.read())


def _wait_until_up(base: str) -> None:
    """Up to 60 s: the server process imports the package first, slow on a loaded machine."""
    for _ in range(600):
        try:
            _get(f"{base}/health")
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"benchmark server at {base} did not start")


# --- clients ------------------------------------------------------------------------------------


class GatedClient(DelegatingChatCompletionClient):
    """Counts calls and, given a lock, lets one call through at a time across its sharers."""

    def __init__(self, inner: ChatCompletionClient, lock: asyncio.Lock | None = None) -> None:
        super().__init__(inner)
        self._lock = lock
        self.prompts: list[Sequence[LLMMessage]] = []

    @property
    def calls(self) -> int:
        return len(self.prompts)

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        self.prompts.append(messages)
        if self._lock is None:
            return await self._inner.create(messages, **kwargs)
        async with self._lock:
            return await self._inner.create(messages, **kwargs)

    def create_stream(
        self, messages: Sequence[LLMMessage], **kwargs: Any
    ) -> AsyncGenerator[str | CreateResult, None]:
        raise NotImplementedError("the benchmark does not stream")


class InProcessModel(ReplayChatCompletionClient):
    """The server's script and delay without HTTP or the OpenAI SDK, to isolate their cost."""

    def __init__(self, delay_s: float, script: Script) -> None:
        super().__init__([])
        self._delay_s = delay_s
        self._script = script

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        await asyncio.sleep(self._delay_s)
        request = {"messages": [{"content": str(m.content)} for m in messages]}
        usage = RequestUsage(prompt_tokens=10, completion_tokens=8)
        return CreateResult(
            finish_reason="stop", content=self._script.answer(request), usage=usage, cached=False
        )


@dataclass
class Run:
    """One campaign's figures, and the prompts it sent (to replay without agents)."""

    episodes: int
    calls_per_dialogue: float
    wall_s: float
    cpu_s: float
    prompts: list[Sequence[LLMMessage]]


async def _campaign(
    make_client: Callable[[], ChatCompletionClient],
    episodes: int,
    output: Path,
    serial: bool,
    per_client: int,
) -> Run:
    """Run ``episodes`` dialogues all at once (8 per persona) and time them.

    Clients keep no per-dialogue state, so each is shared by ``per_client`` dialogues: sharing
    saves a connection pool per dialogue, and not sharing one among all keeps each pool small
    (httpcore scans every pooled connection on each request).
    """
    lock = asyncio.Lock() if serial else None
    shards = -(-episodes // per_client)
    agents = [GatedClient(make_client()) for _ in range(shards)]
    judges = [GatedClient(make_client(), lock) for _ in range(shards)]
    voices = [GatedClient(make_client(), lock) for _ in range(shards)]
    personas = load_split("train")[: episodes // 8]
    if len(personas) * 8 != episodes:
        raise ValueError(f"{episodes} episodes need {episodes // 8} train personas")
    index = {persona.id: i for i, persona in enumerate(personas)}

    def shard(ctx: EpisodeContext) -> int:
        return (index[ctx.persona.id] * 8 + ctx.sample) // per_client

    def user(ctx: EpisodeContext) -> SimulatedUser:
        judge = LLMAppraiser(judges[shard(ctx)])
        voice = voices[shard(ctx)]
        return SimulatedUser("user", voice, ctx.persona, rules=ctx.rules, appraiser=judge)

    def agent(ctx: EpisodeContext) -> AssistantAgent:
        return AssistantAgent("agent", agents[shard(ctx)], system_message="Be kind and brief.")

    config = CollectorConfig(
        output=output,
        samples_per_persona=8,
        concurrency=episodes,
        rules=RLVER_TRAIN,
        retry=RetryPolicy(max_attempts=1, turn_timeout_s=None),
        progress=False,
    )
    collector = TrajectoryCollector(config, user_factory=user, agent_factory=agent)
    clock, cpu = time.perf_counter(), time.process_time()
    summary = await collector.run(personas)
    wall, cpu = time.perf_counter() - clock, time.process_time() - cpu
    clients = [*agents, *judges, *voices]
    for client in clients:
        await client.close()
    episodes_read = read_episodes(output)
    if summary.ran != episodes or any(
        e.termination is not TerminationReason.MAX_TURNS or e.num_turns != 8 for e in episodes_read
    ):
        raise RuntimeError(f"every dialogue should run 8 turns without error: {summary}")
    calls = sum(client.calls for client in clients)
    prompts = [prompt for client in clients for prompt in client.prompts]
    return Run(episodes, calls / episodes, wall, cpu, prompts)


async def _bare_calls(
    make_client: Callable[[], ChatCompletionClient], run: Run, per_client: int
) -> tuple[float, float]:
    """The same calls with no agents: one loop per dialogue sending its share of the prompts.

    This is what the model client and the HTTP stack cost on their own at this concurrency,
    the floor the collector can actually reach in one Python process.
    """
    loops, per_loop = run.episodes, round(run.calls_per_dialogue)
    clients = [make_client() for _ in range(-(-loops // per_client))]

    async def loop(index: int) -> None:
        client = clients[index // per_client]
        for call in range(per_loop):
            await client.create(run.prompts[(index * per_loop + call) % len(run.prompts)])

    clock, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(loop(i) for i in range(loops)))
    wall, cpu = time.perf_counter() - clock, time.process_time() - cpu
    for client in clients:
        await client.close()
    return wall, cpu


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--delay", type=float, default=0.1, help="server delay per call (s)")
    parser.add_argument(
        "--per-client", type=int, default=8, help="dialogues sharing one client (per role)"
    )
    parser.add_argument(
        "--skip-serial", action="store_true", help="skip the one-simulator-call-at-a-time run"
    )
    args = parser.parse_args(argv)
    if args.episodes % 8 or args.episodes < 8:
        parser.error("--episodes must be a positive multiple of 8 (8 samples per persona)")

    # three runs over HTTP of 24 calls per dialogue, with room for regenerated replies
    max_requests = args.episodes * 40 * 3
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    options = {
        "model": MODEL,
        "port": port,
        "delay_s": args.delay,
        "max_requests": max_requests,
        "deadline_s": 900.0,
    }
    server = multiprocessing.get_context("spawn").Process(
        target=serve, args=(Script().answer,), kwargs=options, daemon=True
    )
    load_before = os.getloadavg()[0]
    server.start()

    def http() -> ChatCompletionClient:
        return openai_compatible_client(MODEL, base, timeout=60, max_retries=0)

    script = Script()

    def in_process() -> ChatCompletionClient:
        return InProcessModel(args.delay, script)

    n, per = args.episodes, args.per_client
    try:
        _wait_until_up(base.removesuffix("/v1"))
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            concurrent = asyncio.run(_campaign(http, n, folder / "a.jsonl", False, per))
            bare_wall, bare_cpu = asyncio.run(_bare_calls(http, concurrent, per))
            local = asyncio.run(_campaign(in_process, n, folder / "b.jsonl", False, per))
            serial = (
                None
                if args.skip_serial
                else asyncio.run(_campaign(http, n, folder / "c.jsonl", True, per))
            )
    finally:
        server.terminate()
        server.join(timeout=10)

    floor = concurrent.calls_per_dialogue * args.delay
    calls = concurrent.calls_per_dialogue * n
    figures = {
        "calls_per_dialogue": concurrent.calls_per_dialogue,
        "floor_s": floor,
        "http_over_floor": concurrent.wall_s / floor,
        "http_cpu_ms_per_call": 1e3 * concurrent.cpu_s / calls,
        "bare_over_floor": bare_wall / floor,
        "bare_cpu_ms_per_call": 1e3 * bare_cpu / calls,
        "http_over_bare": concurrent.wall_s / bare_wall,
        "in_process_over_floor": local.wall_s / (local.calls_per_dialogue * args.delay),
    }
    print(
        f"{n} episodes x {RLVER_TRAIN.max_turns} turns (rlver_train), "
        f"model delay {args.delay * 1e3:.0f} ms;"
        f" {os.cpu_count()} CPUs, load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    print(
        f"sequential model calls per dialogue: {concurrent.calls_per_dialogue:.1f}"
        f" -> latency floor {floor:.2f} s"
    )
    print(
        f"collector over HTTP, all at once:     {concurrent.wall_s:6.2f} s ="
        f" {figures['http_over_floor']:.2f} x floor (target <= 1.15);"
        f" client CPU {figures['http_cpu_ms_per_call']:.2f} ms per call"
    )
    print(
        f"same calls, bare client loops:       {bare_wall:6.2f} s ="
        f" {figures['bare_over_floor']:.2f} x floor;"
        f" client CPU {figures['bare_cpu_ms_per_call']:.2f} ms per call"
        f" -> collector / bare = {figures['http_over_bare']:.2f}"
    )
    print(
        f"collector, in-process model, no HTTP: {local.wall_s:6.2f} s ="
        f" {figures['in_process_over_floor']:.2f} x floor"
    )
    if serial is not None:
        figures["speedup_over_serial"] = serial.wall_s / concurrent.wall_s
        print(
            f"one simulator call at a time (HTTP): {serial.wall_s:6.2f} s;"
            f" the collector is {figures['speedup_over_serial']:.1f} x faster"
        )
    return figures


if __name__ == "__main__":
    main()
