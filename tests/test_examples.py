"""The examples run as shipped, offline, on the embedded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.messages import TextMessage

from rlver_agents.agents.agent import FORMAT_VIOLATION_KEY, EmpatheticAgent

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_drop_in_team_script_runs() -> None:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "drop_in_team.py"), "--max-new-tokens", "12"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = completed.stdout.splitlines()
    assert any(line.startswith("friend: ") for line in lines), completed.stdout
    assert any(line.startswith("coach: ") for line in lines), completed.stdout
    assert lines[-1].startswith("-- stopped: Maximum number of messages 3"), completed.stdout


async def test_component_json_loads_and_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = json.loads((EXAMPLES / "empathetic_agent.json").read_text(encoding="utf-8"))
    agent = BaseChatAgent.load_component(config)
    assert isinstance(agent, EmpatheticAgent)
    assert (agent.think, agent.language) == (True, "en")
    result = await agent.run(task="My cat died yesterday and I can't stop crying.")
    reply = result.messages[-1]
    assert isinstance(reply, TextMessage)
    assert reply.source == "friend"
    assert reply.content.strip()
    assert "<think>" not in reply.content
    assert "</think>" not in reply.content
    assert FORMAT_VIOLATION_KEY in reply.metadata


def test_campaign_script_compares_two_agents(tmp_path: Path) -> None:
    command = [sys.executable, str(EXAMPLES / "campaign.py"), "--personas", "2"]
    completed = subprocess.run(
        [*command, "--max-turns", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = [line for line in completed.stdout.splitlines() if "mean final emotion" in line]
    assert [line.split(":")[0] for line in lines] == ["assistant", "empathetic"]
    assert all("over 2 dialogues" in line and "0 errors" in line for line in lines)
    assert (tmp_path / "assistant.jsonl").read_text().count("\n") == 2
