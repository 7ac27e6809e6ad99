"""A campaign: groups of episodes played as :func:`~rlver_agents.episodes.groups.play_groups` plays
them, each appended to a resumable JSONL file as soon as it is final.

A campaign gives every persona ``samples_per_persona`` episodes (a group, samples ``0..n-1``)
and runs them ``concurrency`` at a time. Each finished episode is appended as one whole line and
flushed (optionally fsync-ed) before the next is written, so a killed run leaves at most one
torn last line, which the next run cuts off (see :mod:`rlver_agents.episodes.episode_file`).

Resuming skips every (persona, sample) whose latest line is scored. Errored episodes are run
again by default (``rerun_errors``): the errors worth recording are the ones that persist, and a
resumed run usually follows a fix or an outage. The new line supersedes the old one, so readers
take the last line per key, as ``read_episodes`` does. A file recorded under other emotion rules
is refused, since its scores would not be comparable. Resuming suits evaluation; on-policy
rollouts are new every step and call :func:`~rlver_agents.episodes.groups.play_groups` directly.

Transient model errors are retried by the episode runner, which starts the dialogue over with
fresh agents (see :class:`~rlver_agents.episodes.RetryPolicy`). That works for any agent and any
client the factories build, leaves no half-updated agent or emotion state behind, and keeps token
records belonging to the dialogue that was recorded; the cost, replaying a few turns after a
rare outage, is small next to a campaign.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Self

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rlver_agents.emotion import DEFAULT_RULES, EmotionRules, TerminationReason
from rlver_agents.episodes.episode import AgentFactory, Episode, EpisodeConfig, RetryPolicy
from rlver_agents.episodes.episode_file import read_episodes, repair_jsonl
from rlver_agents.episodes.groups import Rounds, plan_groups, play_episodes
from rlver_agents.personas import Persona


class CampaignFileError(ValueError):
    """A campaign file that cannot be written to; the message names the file."""


class CollectorConfig(BaseModel):
    """A campaign: where episodes go, how many per persona, how many at once, and retries."""

    model_config = ConfigDict(extra="forbid")

    output: Path = Field(description="JSONL file; appended to and resumed from.")
    samples_per_persona: int = Field(1, ge=1, description="Episodes per persona (a group).")
    max_personas: int | None = Field(
        None, ge=1, description="Use a seeded random subset of this many personas."
    )
    concurrency: int = Field(8, ge=1, description="Episodes in flight at once.")
    rules: EmotionRules = Field(DEFAULT_RULES, description="Rules, or a preset name.")
    seed: int = Field(0, description="Campaign seed; each episode's seed derives from it.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    error_retries: int = Field(
        0,
        ge=0,
        description="Play an errored episode again (new seed) this many times before "
        "recording the error; 0 records it at once and leaves it to rerun_errors.",
    )
    rerun_errors: bool = Field(True, description="On resume, run errored episodes again.")
    fsync: bool = Field(False, description="fsync after every line, for power-loss safety.")
    progress: bool = Field(True, description="Show a progress bar.")

    @field_validator("rules", mode="before")
    @classmethod
    def _preset_name(cls, value: Any) -> Any:
        return EmotionRules.preset(value) if isinstance(value, str) else value


class CampaignSummary(BaseModel):
    """The state of a campaign's planned episodes after a run (latest line per key)."""

    output: Path
    planned: int
    skipped: int = Field(description="Already recorded before this run and not rerun.")
    ran: int = Field(description="Episodes played in this run.")
    success: int
    failure: int
    max_turns: int
    errors: int
    mean_score: float | None = Field(description="Mean final score of the scored episodes.")
    duration_s: float


class _Tally:
    """Running counts for the progress bar and the summary."""

    def __init__(self) -> None:
        self.counts: dict[TerminationReason, int] = dict.fromkeys(TerminationReason, 0)
        self.score_sum = 0
        self.scored = 0

    def add(self, episode: Episode) -> None:
        self.counts[episode.termination] += 1
        if episode.final_score is not None:
            self.score_sum += episode.final_score
            self.scored += 1

    @property
    def mean(self) -> float | None:
        return self.score_sum / self.scored if self.scored else None

    def line(self) -> str:
        mean = f"{self.mean:.1f}" if self.mean is not None else "-"
        c = self.counts
        return (
            f"mean {mean}  success {c[TerminationReason.SUCCESS]}  "
            f"failure {c[TerminationReason.FAILURE]}  error {c[TerminationReason.ERROR]}"
        )


class _Progress:
    """A rich progress bar, or nothing when disabled."""

    def __init__(self, enabled: bool, total: int, done: int, tally: _Tally) -> None:
        self._bar = None
        self._tally = tally
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("episodes"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self._task = self._bar.add_task("episodes", total=total, completed=done, stats=tally.line())

    def __enter__(self) -> Self:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, stats=self._tally.line())


class TrajectoryCollector:
    """Plays a campaign of episodes concurrently into a resumable JSONL file.

    Scheduling is :func:`~rlver_agents.episodes.play_episodes`, the engine of ``play_groups``;
    this class adds the file: resume, torn-line repair, one line per finished episode. A
    ``<output>.lock`` file keeps a second collector from appending to the same file at once.

    Args:
        config: The campaign settings.
        user_factory: Builds a fresh simulated user per dialogue from an ``EpisodeContext``;
            it should use ``context.rules`` so the user and the runner agree on the rules.
        agent_factory: Builds a fresh agent (any AutoGen chat agent) per dialogue.
        episode_config: Recorded with every episode (agent/simulator/appraiser configs);
            empty parts are filled from the agents' component configs.
        rounds: Holds the local engines in rounds of the dialogues in flight
            (:func:`~rlver_agents.builders.engine_rounds`).
    """

    def __init__(
        self,
        config: CollectorConfig,
        *,
        user_factory: AgentFactory,
        agent_factory: AgentFactory,
        episode_config: EpisodeConfig | None = None,
        rounds: Rounds | None = None,
    ) -> None:
        self.config = config
        self._user_factory = user_factory
        self._agent_factory = agent_factory
        self._episode_config = episode_config or EpisodeConfig()
        self._rounds = rounds

    def plan(self, personas: Sequence[Persona]) -> list[tuple[Persona, int]]:
        """Every (persona, sample) of the campaign, persona by persona so groups finish together."""
        chosen = list(personas)
        plan_groups(chosen, 1)  # ids must be unique before a subset is drawn
        limit = self.config.max_personas
        if limit is not None and limit < len(chosen):
            picked = set(random.Random(self.config.seed).sample(range(len(chosen)), limit))
            chosen = [p for i, p in enumerate(chosen) if i in picked]
        return plan_groups(chosen, self.config.samples_per_persona)

    async def run(self, personas: Sequence[Persona]) -> CampaignSummary:
        """Play every planned episode not already recorded; safe to call again after a crash."""
        clock = time.monotonic()
        output = self.config.output
        output.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{output}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise CampaignFileError(
                f"{output} is being written by another collector (lock file {lock.lock_file})"
            ) from None
        try:
            return await self._run_locked(self.plan(personas), clock)
        finally:
            lock.release()

    async def _run_locked(
        self, planned: list[tuple[Persona, int]], clock: float
    ) -> CampaignSummary:
        output = self.config.output
        repair_jsonl(output)
        recorded = {e.key: e for e in read_episodes(output)} if output.exists() else {}
        self._check_same_rules(recorded.values())
        tally = _Tally()
        jobs: list[tuple[Persona, int]] = []
        for persona, sample in planned:
            previous = recorded.get((persona.id, sample))
            if previous is None or (self.config.rerun_errors and not previous.ok):
                jobs.append((persona, sample))
            else:
                tally.add(previous)
        skipped = len(planned) - len(jobs)
        write_lock = asyncio.Lock()  # an fsync must not interleave with the next write
        with (
            output.open("ab") as handle,
            _Progress(self.config.progress, len(planned), skipped, tally) as progress,
        ):

            async def record(episode: Episode) -> None:
                line = episode.model_dump_json().encode("utf-8") + b"\n"
                async with write_lock:
                    self._write_line(handle, line)
                    if self.config.fsync:
                        await asyncio.to_thread(os.fsync, handle.fileno())
                tally.add(episode)
                progress.advance()

            await play_episodes(
                jobs,
                agent_factory=self._agent_factory,
                user_factory=self._user_factory,
                rules=self.config.rules,
                concurrency=self.config.concurrency,
                seed=self.config.seed,
                retry=self.config.retry,
                episode_config=self._episode_config,
                error_retries=self.config.error_retries,
                on_episode=record,
                rounds=self._rounds,
            )
        counts = tally.counts
        return CampaignSummary(
            output=output,
            planned=len(planned),
            skipped=skipped,
            ran=len(jobs),
            success=counts[TerminationReason.SUCCESS],
            failure=counts[TerminationReason.FAILURE],
            max_turns=counts[TerminationReason.MAX_TURNS],
            errors=counts[TerminationReason.ERROR],
            mean_score=tally.mean,
            duration_s=time.monotonic() - clock,
        )

    def _check_same_rules(self, recorded: Iterable[Episode]) -> None:
        """Refuse to resume a file recorded under other rules: scores would not be comparable."""
        rules = self.config.rules.model_dump(mode="json")
        for episode in recorded:
            if episode.config.rules and episode.config.rules != rules:
                raise CampaignFileError(
                    f"{self.config.output}: episode {episode.key} was recorded with rules "
                    f"{episode.config.rules.get('name')!r} {episode.config.rules}, but this run "
                    f"uses {rules.get('name')!r} {rules}; write to another file"
                )

    def _write_line(self, handle: IO[bytes], line: bytes) -> None:
        """Append one whole line and flush it: the only place a line reaches the file."""
        handle.write(line)
        handle.flush()
