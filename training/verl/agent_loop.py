"""A verl agent loop that plays one RLVER dialogue per dataset row.

verl builds one loop per rollout sample and awaits ``run``. The loop plays the row's persona
with the project's own `SimulatedUser` (built from an ``rlver`` run configuration, exactly as
``rlver eval`` builds it) against an `EmpatheticAgent` whose model client samples from verl's
rollout servers (:mod:`training.verl.policy_client`). The episode runner, its per-turn
deadlines and its dialogue restarts are the ones every other run uses.

The output is the last attempt's token stream: the prompt (system message and the user's
opening), then the policy's tokens (mask 1, with logprobs) and the user's replies (mask 0),
ending on the policy's last sampled token. The user's closing reply is never appended, so
verl puts the reward ``max(final, 0) / 100`` on a policy token.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping
from typing import Any
from uuid import uuid4

from omegaconf import DictConfig, OmegaConf
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopMetrics,
    AgentLoopOutput,
    register,
)

from rlver_agents.agents.agent import EmpatheticAgent
from rlver_agents.builders import (
    ClientPool,
    build_agent,
    episode_config,
    retry_policy,
    user_factory,
)
from rlver_agents.config import RunConfig
from rlver_agents.episodes.episode import AgentFactory, Episode, EpisodeContext, run_episode
from rlver_agents.evaluation.rewards import outcome_reward
from rlver_agents.personas import Persona
from training.verl.policy_client import PolicyServerClient, TokenStream
from training.verl.settings import AGENT_NAME, DialogueLoopSettings


class DialogueFailed(RuntimeError):
    """A training dialogue that failed after its restarts; the message names persona and reason."""


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, ClientPool]] = (
    weakref.WeakKeyDictionary()
)
"""Simulator clients per event loop and run configuration. verl makes a new loop object for
every sample, but the clients of a simulator server hold a connection pool that every dialogue
of a rollout worker should share."""


def _client_pool(run: RunConfig) -> ClientPool:
    pools = _POOLS.setdefault(asyncio.get_running_loop(), {})
    return pools.setdefault(run.model_dump_json(), ClientPool())


def _settings(
    value: DialogueLoopSettings | Mapping[str, Any] | DictConfig | None,
) -> DialogueLoopSettings:
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, DialogueLoopSettings):
        return value
    return DialogueLoopSettings.model_validate(value or {})


@register(AGENT_NAME)
class RlverDialogueAgentLoop(AgentLoopBase):
    """One dialogue between the policy (as an `EmpatheticAgent`) and a `SimulatedUser`.

    Args:
        settings: :class:`~training.verl.settings.DialogueLoopSettings`, usually the
            ``settings`` block of this loop's entry in the agent-loop YAML file.
        users: Builds the simulated user of each dialogue; by default the run
            configuration's, through :func:`rlver_agents.builders.user_factory`.

    The remaining arguments are the ones verl passes to every agent loop.
    """

    def __init__(
        self,
        *args: Any,
        settings: DialogueLoopSettings | Mapping[str, Any] | DictConfig | None = None,
        users: AgentFactory | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.settings: DialogueLoopSettings = _settings(settings)
        self.run_config = self.settings.load_run_config()
        self._users = users

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        persona = self._persona(kwargs)
        streams: list[TokenStream] = []
        run = self.run_config

        def agents(context: EpisodeContext) -> EmpatheticAgent:
            stream = TokenStream(
                loop=self,
                request_id=uuid4().hex,
                sampling_params=dict(sampling_params),
                max_tokens_per_turn=self.settings.max_tokens_per_turn,
            )
            streams.append(stream)
            return build_agent(run, PolicyServerClient(stream), context)

        users = self._users or user_factory(run, _client_pool(run))
        clock = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.dialogue_timeout_s):
                episode = await run_episode(
                    persona,
                    user_factory=users,
                    agent_factory=agents,
                    rules=self.settings.emotion_rules(),
                    config=episode_config(run, agent_model="verl rollout"),
                    retry=retry_policy(run.timeouts),
                )
        except TimeoutError:
            limit = self.settings.dialogue_timeout_s
            reason = f"TimeoutError: the dialogue took longer than {limit}s"
            start = [self.settings.emotion_rules().initial_score]
            return await self._failed(persona, streams, reason, len(streams), start, kwargs)
        elapsed = time.monotonic() - clock
        if not episode.ok:
            return await self._failed(
                persona,
                streams,
                episode.error or "no detail",
                episode.attempts,
                episode.emotion_trajectory(),
                kwargs,
            )
        return self._output(persona, episode, streams[-1], elapsed)

    def _persona(self, row: Mapping[str, Any]) -> Persona:
        raw = row.get("persona")
        if raw is None:
            raise ValueError(
                f"{AGENT_NAME}: the dataset row has no 'persona' column; convert the persona "
                "file with `python -m training.verl.data`"
            )
        try:
            return Persona.model_validate_json(str(raw))
        except ValueError as exc:
            raise ValueError(f"{AGENT_NAME}: the row's 'persona' is not a persona: {exc}") from None

    def _output(
        self, persona: Persona, episode: Episode, stream: TokenStream, elapsed: float
    ) -> AgentLoopOutput:
        agent_turns = sum(1 for turn in episode.turns if turn.speaker == "agent")
        if len(stream.generations) != agent_turns or not stream.response_mask:
            raise DialogueFailed(
                f"persona {persona.id!r}: {agent_turns} agent turns but {len(stream.generations)} "
                "policy generations; the agent must make exactly one model call per turn"
            )
        if stream.response_mask[-1] != 1:
            raise DialogueFailed(
                f"persona {persona.id!r}: the token stream does not end on a policy token"
            )
        score = episode.final_score
        return AgentLoopOutput(
            prompt_ids=stream.prompt_ids,
            response_ids=stream.response_ids,
            response_mask=stream.response_mask,
            response_logprobs=stream.response_logprobs,
            reward_score=outcome_reward(episode),
            num_turns=len(episode.turns),
            metrics=AgentLoopMetrics(
                generate_sequences=stream.generate_seconds,
                tool_calls=max(elapsed - stream.generate_seconds, 0.0),
                num_preempted=stream.num_preempted,
            ),
            extra_fields={
                "persona_id": persona.id,
                "emotion_trajectory": episode.emotion_trajectory(),
                "termination": episode.termination.value,
                "final_score": score,
                "attempts": episode.attempts,
                "failed": False,
                "error": None,
            },
        )

    async def _failed(
        self,
        persona: Persona,
        streams: list[TokenStream],
        reason: str,
        attempts: int,
        trajectory: list[int],
        kwargs: Mapping[str, Any],
    ) -> AgentLoopOutput:
        """Raise, or return the failed dialogue with no trainable token (``on_error``);
        ``trajectory`` is the episode's (:meth:`~rlver_agents.episodes.Episode.emotion_trajectory`),
        or the start score when the dialogue timed out."""
        message = (
            f"{AGENT_NAME}: the dialogue with persona {persona.id!r} failed after {attempts} "
            f"attempt(s): {reason}"
        )
        if self.settings.on_error == "raise":
            raise DialogueFailed(message)
        stream = streams[-1] if streams and streams[-1].started else None
        if stream is not None:
            prompt_ids, response_ids = stream.prompt_ids, stream.response_ids
        else:
            prompt_ids = await self.ct_build_initial_tokens(list(kwargs.get("raw_prompt") or []))
            response_ids = []
        if not response_ids:  # verl places the reward on the last response token
            response_ids = [self.tokenizer.pad_token_id or 0]
        response_ids = response_ids[: self.rollout_config.response_length]
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids,
            response_mask=[0] * len(response_ids),
            response_logprobs=[0.0] * len(response_ids),
            reward_score=0.0,
            num_turns=0,
            metrics=AgentLoopMetrics(),
            extra_fields={
                "persona_id": persona.id,
                "emotion_trajectory": trajectory,
                "termination": "error",
                "final_score": None,
                "attempts": attempts,
                "failed": True,
                "error": message,
            },
        )
