"""The simulated user as an *interaction*: the user's side of a verl multi-turn rollout.

Up to 0.8, verl had a home for a simulated user: an interaction class with
``start_interaction``, ``generate_response`` (returning ``(should_terminate, reply,
turn_score, metadata)``), ``calculate_score`` and ``finalize_interaction``, named in an
interaction YAML file and called by verl's tool agent loop whenever the policy ended a turn
without a tool call (the CollabLLM recipe is built on it). verl 0.9 deleted that system
(verl-project/verl#6074) and leaves simulated users to agent loops. This module keeps the
contract and puts the call back:

- :class:`RlverInteraction` wraps our `SimulatedUser`, built from an ``rlver`` run
  configuration by :mod:`rlver_agents.builders` like every other run, one dialogue per
  instance id;
- :class:`RlverUserToolAgentLoop` is verl's own ``ToolAgentLoop`` with the user's turn added:
  tools work as before, and when the policy stops without calling one, the interaction answers
  as the user, its turn score joins ``turn_scores``, and the dialogue goes on until the
  interaction ends it. Any object with the four methods can be the interaction.

Choose this to put our simulated users into a verl multi-turn setup of your own (tools, your
reward function). RLVER's recipe is ``rlver_dialogue`` (:mod:`training.verl.agent_loop`).
Here verl computes the reward: :func:`training.verl.reward.compute_score` reads the
interaction's score and, when asked, the per-turn scores.
"""

from __future__ import annotations

import asyncio
import importlib
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from uuid import uuid4

from autogen_agentchat.base import ChatAgent
from autogen_agentchat.messages import TextMessage
from autogen_core import CancellationToken
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.tool_agent_loop import AgentData, AgentState, ToolAgentLoop

from rlver_agents.builders import ClientPool, user_factory
from rlver_agents.emotion import EmotionMetadata, EmotionRules, PresetName
from rlver_agents.episodes.episode import AgentFactory, EpisodeContext
from rlver_agents.evaluation.rewards import outcome_reward
from rlver_agents.personas import Persona
from training.verl.settings import (
    INTERACTION_NAME,
    USER_TOOL_AGENT_NAME,
    load_run_config,
    resolve_path,
)

Message = dict[str, Any]
TurnResult = tuple[bool, str, float, dict[str, Any]]


class Interaction(Protocol):
    """The interaction contract of verl up to 0.8, which the tool loop below drives."""

    async def start_interaction(self, instance_id: str | None = None, **kwargs: Any) -> str: ...

    async def generate_response(
        self, instance_id: str, messages: list[Message], **kwargs: Any
    ) -> TurnResult: ...

    async def calculate_score(self, instance_id: str, **kwargs: Any) -> float: ...

    async def finalize_interaction(self, instance_id: str, **kwargs: Any) -> None: ...


class InteractionSettings(BaseModel):
    """The ``config`` block of an interaction entry (plus the entry's ``name``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = INTERACTION_NAME
    run_config: str | None = Field(
        default=None,
        description="An rlver run configuration file for the simulated user's model and "
        "appraiser and the timeouts (see DialogueLoopSettings.run_config). Unset: the offline "
        "defaults (embedded voice model, learned judge).",
    )
    rules: PresetName | EmotionRules = "rlver_train"
    simulator_url_env: str | None = Field(
        default="RLVER_SIMULATOR_URL",
        description="Environment variable whose value, when set, replaces the base_url of "
        "the simulator's and the judge's server models.",
    )

    def emotion_rules(self) -> EmotionRules:
        return (
            self.rules if isinstance(self.rules, EmotionRules) else EmotionRules.preset(self.rules)
        )


@dataclass
class _Session:
    user: ChatAgent
    persona: Persona
    scores: list[int]
    opened: bool = False


class RlverInteraction:
    """Our simulated user behind verl's interaction contract.

    ``start_interaction`` needs the persona (``interaction_kwargs.persona``: the persona as
    JSON or a mapping, as ``python -m training.verl.data --interaction`` writes it). Called
    before the policy has said anything, ``generate_response`` returns the user's opening;
    after each policy reply it appraises the reply and returns the user's answer, whether the
    dialogue has ended (S, F or the rules' last turn), the turn score (the applied emotion
    change / 100, the process reward) and the emotion so far. ``calculate_score`` is RLVER's
    outcome ``max(score, 0) / 100``.

    Args:
        config: :class:`InteractionSettings` as a mapping (the YAML entry's ``config``).
        users: Builds each dialogue's simulated user; by default the run configuration's,
            through :func:`rlver_agents.builders.user_factory`.
    """

    def __init__(self, config: Mapping[str, Any], *, users: AgentFactory | None = None) -> None:
        self.settings = InteractionSettings.model_validate(dict(config))
        self.name = self.settings.name
        self.rules = self.settings.emotion_rules()
        if users is None:
            run = load_run_config(self.settings.run_config, self.settings.simulator_url_env)
            users = user_factory(run, ClientPool())
        self._users = users
        self._sessions: dict[str, _Session] = {}

    async def start_interaction(
        self, instance_id: str | None = None, *, persona: Any = None, **_: Any
    ) -> str:
        if persona is None:
            raise ValueError(
                f"interaction {self.name!r}: interaction_kwargs has no 'persona'; convert the "
                "persona file with `python -m training.verl.data ... --interaction`"
            )
        chosen = (
            Persona.model_validate_json(persona)
            if isinstance(persona, str)
            else Persona.model_validate(persona)
        )
        instance = instance_id or uuid4().hex
        user = self._users(EpisodeContext(persona=chosen, rules=self.rules))
        self._sessions[instance] = _Session(user, chosen, [self.rules.initial_score])
        return instance

    async def generate_response(
        self, instance_id: str, messages: list[Message], **_: Any
    ) -> TurnResult:
        session = self._session(instance_id)
        if not session.opened:
            if any(message.get("role") == "assistant" for message in messages):
                raise ValueError(
                    f"interaction {self.name!r}: the simulated user opens the dialogue; give "
                    "it a prompt with no user message and ask for the opening first"
                )
            session.opened = True
            heard: list[TextMessage] = []
        else:
            last = messages[-1] if messages else {}
            if last.get("role") != "assistant":
                raise ValueError(
                    f"interaction {self.name!r}: the last message must be the policy's reply, "
                    f"got role {last.get('role')!r}"
                )
            heard = [TextMessage(content=str(last.get("content") or ""), source="agent")]
        response = await session.user.on_messages(heard, CancellationToken())
        reply = response.chat_message
        emotion = EmotionMetadata.from_metadata(reply.metadata)
        if emotion is None:
            raise ValueError(f"interaction {self.name!r}: the user's reply carries no emotion")
        if heard:
            session.scores.append(emotion.score)
        metadata = {
            "persona_id": session.persona.id,
            "emotion_trajectory": list(session.scores),
            "final_score": emotion.score,
            "termination": emotion.reason.value if emotion.reason else None,
        }
        return emotion.terminal, reply.to_text(), emotion.change / 100, metadata

    async def calculate_score(self, instance_id: str, **_: Any) -> float:
        return outcome_reward(self._session(instance_id).scores[-1])

    async def finalize_interaction(self, instance_id: str, **_: Any) -> None:
        self._sessions.pop(instance_id, None)

    def _session(self, instance_id: str) -> _Session:
        try:
            return self._sessions[instance_id]
        except KeyError:
            raise KeyError(
                f"interaction {self.name!r}: no dialogue {instance_id!r} (not started, or "
                "already finalised)"
            ) from None


class InteractionEntry(BaseModel):
    """One entry of an interaction file, in the format verl up to 0.8 read."""

    model_config = ConfigDict(extra="forbid")

    name: str
    class_name: str = Field(description="Dotted path of the class.")
    config: dict[str, Any] = Field(default_factory=dict)


class InteractionFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interaction: list[InteractionEntry] = Field(min_length=1)


def load_interactions(path: str | Path) -> dict[str, Interaction]:
    """Build every interaction an interaction file names, keyed by name.

    Each class is called as ``cls(config={**entry.config, "name": entry.name})``, as verl's
    own registry did, so an interaction written for verl 0.8 loads unchanged.
    """
    resolved = resolve_path(str(path))
    document = OmegaConf.to_container(OmegaConf.load(resolved), resolve=True)
    try:
        entries = InteractionFile.model_validate(document).interaction
    except ValueError as exc:
        raise ValueError(f"{resolved}: not an interaction file: {exc}") from None
    built: dict[str, Interaction] = {}
    for entry in entries:
        if entry.name in built:
            raise ValueError(f"{resolved}: interaction {entry.name!r} is named twice")
        module, _, attribute = entry.class_name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(f"{resolved}: cannot import {entry.class_name!r}: {exc}") from None
        built[entry.name] = cls(config={**entry.config, "name": entry.name})
    return built


_LOADED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, dict[str, Interaction]]] = (
    weakref.WeakKeyDictionary()
)
"""Interactions per event loop and file. verl makes a loop object per sample; the
interactions (and the simulator clients they hold) are shared by a rollout worker's samples."""


def _interactions(path: str) -> dict[str, Interaction]:
    files = _LOADED.setdefault(asyncio.get_running_loop(), {})
    if path not in files:
        files[path] = load_interactions(path)
    return files[path]


class UserToolLoopSettings(BaseModel):
    """The loop's own settings; verl's ``multi_turn`` block keeps the tool settings."""

    model_config = ConfigDict(extra="forbid")

    interaction_config: str = Field(
        default="training/verl/configs/interaction.yaml",
        description="The interaction file; a relative path is tried against the current "
        "folder, then the repository root.",
    )
    max_tokens_per_turn: int = Field(
        default=1024, ge=1, description="Cap on one policy generation (RLVER allowed 5,000)."
    )


@dataclass
class _Dialogue:
    interaction: Interaction
    instance: str
    kwargs: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


@register(USER_TOOL_AGENT_NAME)
class RlverUserToolAgentLoop(ToolAgentLoop):
    """verl's tool agent loop with a simulated user answering between the policy's turns.

    The row's ``interaction_kwargs.name`` picks the interaction. A prompt without a user
    message gets the interaction's opening first. The user's closing reply is not appended,
    so the response ends on the policy's last token, where verl puts the reward.
    ``extra_fields`` gains the interaction's last metadata (for :class:`RlverInteraction`:
    ``persona_id``, ``emotion_trajectory``, ``final_score``, ``termination``) and
    ``interaction_score`` (its ``calculate_score``), next to verl's ``turn_scores``.

    Args:
        settings: :class:`UserToolLoopSettings`, the ``settings`` block of this loop's entry
            in the agent-loop YAML file.
        interactions: The interactions by name; by default those of the settings' file.
    """

    def __init__(
        self,
        *args: Any,
        settings: UserToolLoopSettings | Mapping[str, Any] | DictConfig | None = None,
        interactions: Mapping[str, Interaction] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(settings, DictConfig):
            settings = OmegaConf.to_container(settings, resolve=True)
        self.settings = (
            settings
            if isinstance(settings, UserToolLoopSettings)
            else UserToolLoopSettings.model_validate(settings or {})
        )
        self.interactions = (
            interactions
            if interactions is not None
            else _interactions(self.settings.interaction_config)
        )
        self._dialogue: _Dialogue | None = None

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        call = dict(kwargs.get("interaction_kwargs") or {})
        name = call.get("name")
        if name not in self.interactions:
            raise ValueError(
                f"{USER_TOOL_AGENT_NAME}: the row's interaction_kwargs.name is {name!r}; "
                f"known interactions: {sorted(self.interactions)}"
            )
        interaction = self.interactions[name]
        dialogue = _Dialogue(interaction, await interaction.start_interaction(None, **call), call)
        self._dialogue = dialogue
        try:
            messages = list(kwargs["raw_prompt"])
            if not any(message.get("role") == "user" for message in messages):
                _, opening, _, dialogue.metadata = await interaction.generate_response(
                    dialogue.instance, messages, **call
                )
                messages.append({"role": "user", "content": opening})
            output = await super().run(sampling_params, **{**kwargs, "raw_prompt": messages})
            output.extra_fields.update(dialogue.metadata)
            output.extra_fields["interaction_score"] = await interaction.calculate_score(
                dialogue.instance, **call
            )
            return output
        finally:
            await interaction.finalize_interaction(dialogue.instance, **call)

    async def _handle_generating_state(
        self,
        agent_data: AgentData,
        sampling_params: dict[str, Any],
        ignore_termination: bool = False,
    ) -> AgentState:
        budget = self.response_length - len(agent_data.response_mask)
        capped = {**sampling_params, "max_tokens": min(self.settings.max_tokens_per_turn, budget)}
        said = len(agent_data.messages)
        state = await super()._handle_generating_state(agent_data, capped, ignore_termination)
        # The parent ends the rollout when a reply calls no tool; a reply it appended (not one
        # cut by a length or turn limit) is a finished turn, which the user answers.
        if (
            state is AgentState.TERMINATED
            and len(agent_data.messages) > said
            and not (agent_data.tool_calls)
        ):
            return await self._user_turn(agent_data)
        return state

    async def _user_turn(self, agent_data: AgentData) -> AgentState:
        dialogue = self._dialogue
        if dialogue is None:
            raise RuntimeError(f"{USER_TOOL_AGENT_NAME}: a user turn outside run()")
        done, reply, score, dialogue.metadata = await dialogue.interaction.generate_response(
            dialogue.instance, agent_data.messages, **dialogue.kwargs
        )
        agent_data.turn_scores.append(score)
        if done:
            return AgentState.TERMINATED
        previous = list(agent_data.messages)
        agent_data.messages.append({"role": "user", "content": reply})
        merged, mask, logprobs = await self.ct_merge_context_msg(
            previous,
            agent_data.messages,
            agent_data.prompt_ids,
            agent_data.response_mask,
            agent_data.response_logprobs or None,
            tools=getattr(agent_data, "_active_tool_schemas", self.tool_schemas),
        )
        if len(mask) >= self.response_length:
            return AgentState.TERMINATED
        agent_data.prompt_ids = merged.token_ids
        agent_data.response_mask = mask
        if agent_data.response_logprobs:
            agent_data.response_logprobs = logprobs or []
        agent_data.user_turns += 1
        return AgentState.GENERATING
