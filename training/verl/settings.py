"""What the verl dialogue loop needs besides verl's own configuration. verl-free.

The loop reads these from its entry in the agent-loop YAML file
(``actor_rollout_ref.rollout.agent.agent_loop_config_path``). The simulated user's model, its
appraiser, the timeouts and the agent's prompt come from an ordinary ``rlver`` run
configuration file, so a rollout on a cluster plays the same user as ``rlver eval``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rlver_agents.config import RunConfig, load_config
from rlver_agents.emotion import EmotionRules, PresetName

AGENT_NAME = "rlver_dialogue"
"""The ``agent_name`` every converted dataset row carries and the loop is registered under."""

USER_TOOL_AGENT_NAME = "rlver_user_tool_agent"
"""verl's tool agent loop with our simulated user answering between the policy's turns
(:mod:`training.verl.interaction`); rows converted with ``--interaction`` name it."""

INTERACTION_NAME = "rlver_user"
"""The name ``configs/interaction.yaml`` gives the simulated-user interaction."""

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding ``training/``: a Ray job's working_dir, or the source checkout."""


def resolve_path(value: str) -> Path:
    """An absolute path as is; a relative one against the current folder, else the repo root.

    Rollout workers on other nodes need not share the driver's current folder, but they do
    run from a copy of the repository.
    """
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    for base in (Path.cwd(), REPO_ROOT):
        if (base / path).is_file():
            return base / path
    return path


class DialogueLoopSettings(BaseModel):
    """The loop's own settings; verl's rollout config holds the sampling and the lengths."""

    model_config = ConfigDict(extra="forbid")

    run_config: str | None = Field(
        default=None,
        description="An rlver run configuration file: the simulated user's model (an "
        "OpenAI-compatible server such as vLLM) and appraiser, the timeouts, and the agent's "
        "think flag and system message. Its agent model, personas and rules are not used. "
        "Unset: the offline defaults (embedded voice model, learned judge). A relative "
        "path is tried against the current folder, then the repository root.",
    )
    rules: PresetName | EmotionRules = Field(
        default="rlver_train", description="Emotion rules of the training dialogues."
    )
    max_tokens_per_turn: int = Field(
        default=1024, ge=1, description="Cap on one policy generation (RLVER allowed 5,000)."
    )
    dialogue_timeout_s: float | None = Field(
        default=1800.0,
        gt=0,
        description="Bound on one dialogue with all its restarts; the run configuration's "
        "timeouts bound each call and turn.",
    )
    simulator_url_env: str | None = Field(
        default="RLVER_SIMULATOR_URL",
        description="Environment variable that, when set on the rollout workers, replaces the "
        "base_url of the run configuration's server models (the simulator's and the judge's), "
        "so one file serves wherever the simulator is deployed.",
    )
    on_error: Literal["raise", "record"] = Field(
        default="raise",
        description="A dialogue that still fails after its restarts: 'raise' stops the "
        "training step with the reason; 'record' returns it with every response token masked "
        "and the reason in extra_fields (safe with GAE; under GRPO its 0 enters the group).",
    )

    def emotion_rules(self) -> EmotionRules:
        return (
            self.rules if isinstance(self.rules, EmotionRules) else EmotionRules.preset(self.rules)
        )

    def load_run_config(self) -> RunConfig:
        """The run configuration (offline defaults when unset); errors name file and field."""
        return load_run_config(self.run_config, self.simulator_url_env)


def load_run_config(path: str | None, simulator_url_env: str | None) -> RunConfig:
    """A run configuration file (offline defaults for ``None``) with the simulator's and the
    judge's server URL replaced by ``$simulator_url_env`` when that is set."""
    run = RunConfig() if path is None else load_config(resolve_path(path))
    url = os.environ.get(simulator_url_env) if simulator_url_env else None
    if not url:
        return run
    simulator = run.simulator
    if simulator.model.kind == "openai":
        simulator = simulator.model_copy(
            update={"model": simulator.model.model_copy(update={"base_url": url})}
        )
    judge = simulator.appraiser.model
    if judge is not None and judge.kind == "openai":
        appraiser = simulator.appraiser.model_copy(
            update={"model": judge.model_copy(update={"base_url": url})}
        )
        simulator = simulator.model_copy(update={"appraiser": appraiser})
    return run.model_copy(update={"simulator": simulator})
