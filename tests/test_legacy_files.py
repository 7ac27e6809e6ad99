"""Files written by earlier versions still load: component JSON and episode lines.

``tests/fixtures/legacy/`` was written with the code as it was before ``rlver_agents`` was
regrouped (its provider strings name the old flat modules, e.g.
``rlver_agents.agent.EmpatheticAgent``); saved configs and recorded ``Episode.config`` blocks
must survive any move of a class.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from autogen_agentchat.agents import BaseChatAgent
from autogen_core import ComponentModel

from rlver_agents.agents.agent import EmpatheticAgent
from rlver_agents.agents.simulator import SimulatedUser
from rlver_agents.episodes.episode_file import read_episodes

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


def _component(name: str) -> ComponentModel:
    return ComponentModel.model_validate(json.loads((LEGACY / name).read_text(encoding="utf-8")))


def test_a_saved_empathetic_agent_loads() -> None:
    agent = BaseChatAgent.load_component(_component("empathetic_agent.json"))
    assert isinstance(agent, EmpatheticAgent)


@pytest.mark.parametrize("name", ["simulated_user_llm.json", "simulated_user_embedding.json"])
def test_a_saved_simulated_user_loads_with_its_appraiser(name: str) -> None:
    saved = _component(name)
    user = BaseChatAgent.load_component(saved)
    assert isinstance(user, SimulatedUser)
    dumped = user.dump_component().config["appraiser"]["provider"]
    assert dumped.rsplit(".", 1)[1] == saved.config["appraiser"]["provider"].rsplit(".", 1)[1]


def test_a_recorded_episode_loads_and_its_agents_rebuild() -> None:
    (episode,) = read_episodes(LEGACY / "episodes.jsonl")
    assert episode.ok and episode.emotion_trajectory() == [30, 35, 40]
    agent = BaseChatAgent.load_component(episode.config.agent)
    user = BaseChatAgent.load_component(episode.config.simulator)
    assert isinstance(agent, EmpatheticAgent) and isinstance(user, SimulatedUser)
