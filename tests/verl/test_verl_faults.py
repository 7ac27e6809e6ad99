"""A failing simulator ends a verl dialogue with a clear error or a recorded failure, never a hang.

The simulated user here is the one the run configuration describes (an OpenAI-compatible
server), reached through the same builders as ``rlver eval``; the servers are on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from autogen_core.models import CreateResult, LLMMessage
from autogen_ext.models.replay import ReplayChatCompletionClient
from conftest import TURN_TOKENS, TinyPolicyServer, build_loop, english_persona, sampling_params
from omegaconf import DictConfig

from rlver_agents.agents.simulator import SimulatedUser
from rlver_agents.appraisers.appraisal import LLMAppraiser
from rlver_agents.episodes.episode import EpisodeContext
from training.verl.agent_loop import DialogueFailed
from training.verl.data import persona_rows

GUARD_S = 120
"""Outer bound on each test: a hang fails the test instead of stalling the run."""


def row() -> dict[str, Any]:
    """A converted dataset row, as the loop receives it."""
    data = persona_rows([english_persona()], split="test")[0].model_dump()
    return {**data, "raw_prompt": list(data["prompt"])}


def run_config(tmp_path: Path, base_url: str) -> Path:
    """A run configuration whose simulator and judge are one server, with short call timeouts.

    Turns get a minute, so that only the simulator's calls (1 s each) can run out of time,
    never the policy's generation on a busy machine.
    """
    path = tmp_path / "simulator.yaml"
    config = {
        "simulator": {
            "model": {"kind": "openai", "model": "simulator", "base_url": base_url},
            "appraiser": {"kind": "llm", "max_retries": 0},
        },
        "timeouts": {
            "call_s": 1,
            "call_retries": 1,
            "backoff_s": 0.05,
            "max_backoff_s": 0.1,
            "turn_s": 60,
            "dialogue_attempts": 2,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest_asyncio.fixture
async def silent_server() -> AsyncIterator[str]:
    """Accepts connections on 127.0.0.1 and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_an_unreachable_simulator_is_a_clear_error(
    trainer_config: DictConfig, tiny_model: Any, tiny_tokenizer: Any, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    loop = build_loop(
        trainer_config,
        TinyPolicyServer(tiny_model, tiny_tokenizer),
        tiny_tokenizer,
        settings={"run_config": str(run_config(tmp_path, url)), "max_tokens_per_turn": 4},
    )
    persona = english_persona()
    with pytest.raises(DialogueFailed) as caught:
        await asyncio.wait_for(loop.run(sampling_params(trainer_config), **row()), GUARD_S)
    message = str(caught.value)
    assert repr(persona.id) in message and "after 2 attempt(s)" in message
    assert f"judge call to model 'simulator' at {url} failed 2 time(s)" in message


async def test_a_silent_simulator_is_recorded_as_a_failed_dialogue(
    trainer_config: DictConfig,
    tiny_model: Any,
    tiny_tokenizer: Any,
    tmp_path: Path,
    silent_server: str,
) -> None:
    loop = build_loop(
        trainer_config,
        TinyPolicyServer(tiny_model, tiny_tokenizer),
        tiny_tokenizer,
        settings={
            "run_config": str(run_config(tmp_path, silent_server)),
            "max_tokens_per_turn": 4,
            "on_error": "record",
        },
    )
    output = await asyncio.wait_for(loop.run(sampling_params(trainer_config), **row()), GUARD_S)
    assert output.extra_fields["failed"] is True
    assert output.extra_fields["termination"] == "error"
    assert output.extra_fields["final_score"] is None
    assert f"judge call to model 'simulator' at {silent_server}" in output.extra_fields["error"]
    assert "no answer within 1s" in output.extra_fields["error"]
    assert output.response_ids and set(output.response_mask) == {0}
    assert output.reward_score == 0.0


class HangingClient(ReplayChatCompletionClient):
    """A voice model whose calls never return."""

    async def create(self, messages: Sequence[LLMMessage], **_: Any) -> CreateResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def hanging_users(context: EpisodeContext) -> SimulatedUser:
    judge = LLMAppraiser(ReplayChatCompletionClient(["Change: +5"] * 10))
    persona = context.persona.model_copy(update={"first_talk": None})
    return SimulatedUser(
        "user", HangingClient(["never"]), persona, rules=context.rules, appraiser=judge
    )


async def test_the_dialogue_deadline_ends_a_simulator_that_never_answers(
    trainer_config: DictConfig, tiny_model: Any, tiny_tokenizer: Any, tmp_path: Path
) -> None:
    """With turns unbounded by the run configuration, the loop's own deadline still holds."""
    unbounded = tmp_path / "unbounded.yaml"
    unbounded.write_text(yaml.safe_dump({"timeouts": {"turn_s": None, "dialogue_attempts": 1}}))
    loop = build_loop(
        trainer_config,
        TinyPolicyServer(tiny_model, tiny_tokenizer),
        tiny_tokenizer,
        settings={
            "run_config": str(unbounded),
            "dialogue_timeout_s": 2,
            "max_tokens_per_turn": TURN_TOKENS,
        },
        users=hanging_users,
    )
    with pytest.raises(DialogueFailed, match="took longer than 2"):
        await asyncio.wait_for(loop.run(sampling_params(trainer_config), **row()), GUARD_S)


async def test_a_row_without_a_persona_is_refused_by_name(
    trainer_config: DictConfig, tiny_model: Any, tiny_tokenizer: Any
) -> None:
    loop = build_loop(trainer_config, TinyPolicyServer(tiny_model, tiny_tokenizer), tiny_tokenizer)
    broken: Mapping[str, Any] = {k: v for k, v in row().items() if k != "persona"}
    with pytest.raises(ValueError, match="no 'persona' column"):
        await loop.run(sampling_params(trainer_config), **broken)
