"""Rollouts with the live policy: the one bridge from ``training/`` to ``rlver_agents``.

The policy being trained is served as the live engine ``live:policy`` and reached through an
ordinary ``ModelSpec(kind="local", model="live:policy")``, so the agents, the simulated users
and the rules come from the same builders as ``rlver eval``. Dialogues are played in memory
with ``rlver_agents.episodes.groups.play_episodes`` and turned into training rows once, here, with
``rlver_agents.episodes.samples.dialogue_sample`` (one append-only token stream per dialogue).

Errored dialogues are never scored as 0. Their row keeps its place (trainers need every
position filled), carries ``final_score=None`` and an all-zero ``env_mask``, and is counted
in :class:`RolloutStats`; the reward functions return ``None`` for it, which TRL turns into
a zero advantage outside the group's baseline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import torch
from accelerate import Accelerator
from pydantic import BaseModel, ConfigDict

from rlver_agents.builders import (
    ClientPool,
    agent_factory,
    engine_rounds,
    episode_config,
    retry_policy,
    user_factory,
)
from rlver_agents.config import AgentSettings, RunConfig
from rlver_agents.emotion import TerminationReason
from rlver_agents.episodes.episode import AgentFactory, Episode
from rlver_agents.episodes.groups import play_episodes
from rlver_agents.episodes.samples import dialogue_sample
from rlver_agents.models.engine import LIVE_PREFIX
from rlver_agents.models.spec import ModelSpec
from rlver_agents.personas import Persona, load_split
from training.config import TrainConfig
from training.lockstep import POLICY_ENGINE, LockstepScheduler

_log = logging.getLogger(__name__)


def live_policy_spec(config: TrainConfig) -> ModelSpec:
    """The agent's model spec: the live policy, sampling on-policy in the training unit."""
    extra = {"chat_template_kwargs": config.policy.chat_template_kwargs}
    return ModelSpec(
        kind="local",
        model=f"{LIVE_PREFIX}{POLICY_ENGINE}",
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        max_new_tokens=config.rollout.max_new_tokens,
        stop=config.rollout.stop,
        token_mode="append" if config.unit == "dialogue" else "render",
        on_policy=True,
        extra_body=extra if config.policy.chat_template_kwargs else {},
    )


def run_config(config: TrainConfig) -> RunConfig:
    """The run configuration ``rlver eval`` would use, with the live policy as the agent."""
    return RunConfig(
        agent=AgentSettings(
            model=live_policy_spec(config),
            think=config.policy.think,
            # the dialogue unit's token stream holds every thought, malformed ones included
            keep_thoughts=config.policy.think and config.unit == "dialogue",
            system_message=config.policy.system_message,
        ),
        simulator=config.simulator,
        rules=config.rollout.emotion_rules(),
        personas=config.rollout.personas,
        concurrency=config.rollout.concurrency,
        rounds=config.rollout.rounds,
        seed=config.seed,
        timeouts=config.timeouts,
    )


class DialogueRow(BaseModel):
    """One dialogue as a GRPO row: the token stream and what the rewards and logs need."""

    model_config = ConfigDict(frozen=True)

    persona_id: str
    sample: int
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    env_mask: list[int]
    """1 on the policy's sampled tokens, 0 on the user's templated turns."""
    final_score: int | None
    """``None`` for an errored dialogue: it has no score."""
    emotion: list[int]
    """The score before the first agent turn, then after each appraised agent turn."""
    num_turns: int
    termination: str
    error: str | None
    format_violations: int
    truncated: bool
    policy_version: int


def _errored_row(episode: Episode, filler_id: int) -> DialogueRow:
    """A placeholder row for an errored dialogue: no policy tokens, no score, no gradient."""
    prompt: list[int] = [filler_id]
    for turn in episode.turns:
        if turn.generations:
            prompt = list(turn.generations[0].prompt_token_ids)
            break
    return DialogueRow(
        persona_id=episode.persona_id,
        sample=episode.sample,
        prompt_ids=prompt,
        completion_ids=[filler_id],
        logprobs=[0.0],
        env_mask=[0],
        final_score=None,
        emotion=episode.emotion_trajectory(),
        num_turns=episode.num_turns,
        termination=episode.termination.value,
        error=episode.error,
        format_violations=_format_violations(episode),
        truncated=False,
        policy_version=0,
    )


def dialogue_row(episode: Episode, *, filler_id: int, mask_truncated: bool = False) -> DialogueRow:
    """The dialogue unit row of one episode (see the module docstring for errored ones).

    With ``mask_truncated`` a dialogue whose last policy turn hit the token limit keeps its
    reward but gets an all-zero mask, so it moves nothing.
    """
    if not episode.ok:
        return _errored_row(episode, filler_id)
    sample = dialogue_sample(episode)
    mask = list(sample.completion_mask)
    if mask_truncated and sample.truncated:
        mask = [0] * len(mask)
    return DialogueRow(
        persona_id=episode.persona_id,
        sample=episode.sample,
        prompt_ids=list(sample.prompt_ids),
        completion_ids=list(sample.completion_ids),
        logprobs=list(sample.logprobs),
        env_mask=mask,
        final_score=episode.final_score,
        emotion=episode.emotion_trajectory(),
        num_turns=episode.num_turns,
        termination=episode.termination.value,
        error=None,
        format_violations=_format_violations(episode),
        truncated=sample.truncated,
        policy_version=sample.policy_version,
    )


def _format_violations(episode: Episode) -> int:
    return sum(1 for turn in episode.turns if turn.format_violation)


def _truncated(episode: Episode) -> bool:
    """Whether the dialogue's last policy generation hit ``max_new_tokens``."""
    for turn in reversed(episode.turns):
        if turn.generations:
            return turn.generations[-1].finish_reason == "length"
    return False


class RolloutStats(BaseModel):
    """Sums over a batch of episodes, so batches (and processes) add up before averaging."""

    dialogues: int = 0
    scored: int = 0
    errored: int = 0
    success: int = 0
    failure: int = 0
    score_sum: float = 0.0
    emotion_sum: float = 0.0
    emotion_points: int = 0
    turns_sum: int = 0
    format_violations: int = 0
    truncated: int = 0

    @classmethod
    def of(cls, episodes: Sequence[Episode]) -> RolloutStats:
        scored = [e for e in episodes if e.ok]
        trajectories = [e.emotion_trajectory() for e in scored]
        return cls(
            dialogues=len(episodes),
            scored=len(scored),
            errored=len(episodes) - len(scored),
            success=sum(e.termination == TerminationReason.SUCCESS for e in scored),
            failure=sum(e.termination == TerminationReason.FAILURE for e in scored),
            score_sum=float(sum(e.final_score or 0 for e in scored)),
            emotion_sum=float(sum(sum(t) for t in trajectories)),
            emotion_points=sum(len(t) for t in trajectories),
            turns_sum=sum(e.num_turns for e in scored),
            format_violations=sum(_format_violations(e) for e in episodes),
            truncated=sum(_truncated(e) for e in scored),
        )

    def vector(self) -> list[float]:
        return [float(v) for v in self.model_dump().values()]

    @classmethod
    def from_vector(cls, values: Sequence[float]) -> RolloutStats:
        names = list(cls.model_fields)
        return cls.model_validate(
            {
                name: (value if cls.model_fields[name].annotation is float else round(value))
                for name, value in zip(names, values, strict=True)
            }
        )

    def metrics(self) -> dict[str, float]:
        """Rates and means for the logs (``rollout/...``)."""
        scored = max(self.scored, 1)
        dialogues = max(self.dialogues, 1)
        return {
            "rollout/final_score_mean": self.score_sum / scored,
            "rollout/emotion_mean": self.emotion_sum / max(self.emotion_points, 1),
            "rollout/success_rate": self.success / scored,
            "rollout/failure_rate": self.failure / scored,
            "rollout/turns_mean": self.turns_sum / scored,
            "rollout/format_violations_per_dialogue": self.format_violations / dialogues,
            "rollout/truncated_rate": self.truncated / dialogues,
            "rollout/errored": float(self.errored),
        }


def rollout_stats(episodes: Sequence[Episode], accelerator: Accelerator) -> RolloutStats:
    """The step's dialogue statistics summed over every process: the one ``rollout/...``
    block both trainers log (:meth:`RolloutStats.metrics`). Errored dialogues are named in a
    warning here, once, since no trainer scores them."""
    for episode in episodes:
        if not episode.ok:
            _log.warning(
                "dialogue %s/%d errored and gets no gradient: %s",
                episode.persona_id,
                episode.sample,
                episode.error,
            )
    local = torch.tensor(RolloutStats.of(episodes).vector(), dtype=torch.float64)
    total = accelerator.reduce(local.to(accelerator.device), reduction="sum").tolist()
    stats = RolloutStats.from_vector(total)
    if stats.errored:
        _log.warning(
            "%d of %d dialogues errored this rollout; they are masked out, not scored 0",
            stats.errored,
            stats.dialogues,
        )
    return stats


def plan_jobs(
    persona_ids: Sequence[str], personas: dict[str, Persona]
) -> list[tuple[Persona, int]]:
    """One (persona, sample) job per entry, samples numbered per persona in order of appearance.

    TRL hands a rollout function every prompt ``num_generations`` times in a row (or a slice of
    such runs per process); each entry becomes one dialogue, in the same position.
    """
    counts: dict[str, int] = {}
    jobs: list[tuple[Persona, int]] = []
    for persona_id in persona_ids:
        if persona_id not in personas:
            raise KeyError(f"rollout: prompt {persona_id!r} is not a persona id of the split")
        sample = counts.get(persona_id, 0)
        counts[persona_id] = sample + 1
        jobs.append((personas[persona_id], sample))
    return jobs


class Rollout:
    """Plays dialogues for training with the agents and users ``rlver eval`` would build.

    ``user_factory`` replaces the simulated users built from ``config.simulator`` (tests use
    scripted users). The live engine ``live:policy`` must be registered before :meth:`play`.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        personas: Sequence[Persona] | None = None,
        users: AgentFactory | None = None,
    ) -> None:
        self.config = config
        self.run = run_config(config)
        self.rules = self.run.emotion_rules()
        chosen = list(personas) if personas is not None else load_split(config.rollout.personas)
        self.personas = {p.id: p for p in chosen}
        self._users = users

    async def play(
        self,
        jobs: Sequence[tuple[Persona, int]],
        seed: int,
        *,
        scheduler: LockstepScheduler | None = None,
    ) -> list[Episode]:
        """Play every job once, in memory; episodes in job order, errored ones included.

        With a ``scheduler`` (vLLM) every dialogue starts at once and the scheduler advances
        them turn by turn; it is told as each dialogue ends. Without one, ``rollout.rounds``
        has the local engines batch in rounds of the dialogues still running.
        """
        pool = ClientPool()
        users = self._users or user_factory(self.run, pool)
        agents = agent_factory(self.run, pool)
        # vLLM's scheduler keeps its own rounds
        rounds = None if scheduler else engine_rounds(self.run, user_voice=self._users is None)

        async def ended(_: Episode) -> None:
            if scheduler is not None:
                scheduler.dialogue_ended()

        async def play_all() -> list[Episode]:
            return await play_episodes(
                list(jobs),
                agent_factory=agents,
                user_factory=users,
                rules=self.rules,
                concurrency=len(jobs) if scheduler else self.config.rollout.concurrency,
                seed=seed,
                retry=retry_policy(self.config.timeouts),
                episode_config=episode_config(self.run),
                error_retries=self.config.rollout.error_retries,
                on_episode=ended,
                rounds=rounds,
            )

        try:
            if scheduler is None:
                return await play_all()
            async with asyncio.TaskGroup() as group:
                played = group.create_task(play_all())
                group.create_task(scheduler.run())
            return played.result()
        finally:
            await pool.close()

    def rows(self, episodes: Sequence[Episode], *, filler_id: int) -> list[DialogueRow]:
        """The dialogue-unit rows of ``episodes``, in order."""
        return [
            dialogue_row(
                episode,
                filler_id=filler_id,
                mask_truncated=self.config.rollout.mask_truncated,
            )
            for episode in episodes
        ]
