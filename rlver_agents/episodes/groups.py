"""Groups of episodes in memory: ``n`` dialogues per persona, played concurrently.

A group (GRPO's unit) is every sample of one persona. Trainers need every group full, so an
errored episode is never dropped: it is played again with a fresh seed up to ``error_retries``
times, and if it still fails it comes back as ``termination=error`` with its reason, for the
caller to mask or skip. Nothing is written to disk; :class:`~rlver_agents.episodes.collector.
TrajectoryCollector` adds the JSONL file on top of the same scheduling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager

from rlver_agents.emotion import EmotionRules
from rlver_agents.episodes.episode import (
    AgentFactory,
    Episode,
    EpisodeConfig,
    RetryPolicy,
    run_episode,
)
from rlver_agents.personas import Persona
from rlver_agents.seeds import stable_seed

EpisodeCallback = Callable[[Episode], Awaitable[None]]
"""Called with each episode as soon as it is final (the collector appends it to its file)."""

Rounds = Callable[[Callable[[], int]], AbstractContextManager[None]]
"""Given a count of the dialogues still running, holds the local engines in rounds while the
dialogues play (``functools.partial(models.engine.in_rounds, engines)``)."""


def episode_seed(run_seed: int, persona_id: str, sample: int, replay: int = 0) -> int:
    """A stable 31-bit seed per episode, independent of scheduling order.

    ``replay`` counts the times an errored episode was played again; each replay gets its own
    seed so a failure that the seed alone caused is not repeated exactly.
    """
    if replay:
        return stable_seed(run_seed, persona_id, sample, replay)
    return stable_seed(run_seed, persona_id, sample)


def plan_groups(personas: Sequence[Persona], n: int) -> list[tuple[Persona, int]]:
    """Every (persona, sample), persona-major, so each group's samples are scheduled together."""
    if n < 1:
        raise ValueError(f"n (episodes per persona) must be at least 1, got {n}")
    ids = [p.id for p in personas]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"persona ids must be unique (episodes are keyed by them): {duplicates}")
    return [(persona, sample) for persona in personas for sample in range(n)]


async def play_episodes(
    jobs: Sequence[tuple[Persona, int]],
    *,
    agent_factory: AgentFactory,
    user_factory: AgentFactory,
    rules: EmotionRules,
    concurrency: int,
    seed: int,
    retry: RetryPolicy | None = None,
    episode_config: EpisodeConfig | None = None,
    error_retries: int = 1,
    on_episode: EpisodeCallback | None = None,
    rounds: Rounds | None = None,
) -> list[Episode]:
    """Play every (persona, sample) job, ``concurrency`` at a time; episodes in job order.

    ``concurrency`` workers pull jobs from a queue in order: the bound of a semaphore without a
    task per job waiting up front. ``on_episode`` sees each final episode as it finishes. An
    exception from it (or a cancellation) stops every worker and propagates. ``rounds``, if
    given, holds the local engines in rounds of the dialogues in flight (the workers that
    have not run out of jobs).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if error_retries < 0:
        raise ValueError(f"error_retries must be 0 or more, got {error_retries}")
    results: list[Episode | None] = [None] * len(jobs)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(jobs)):
        queue.put_nowait(index)

    async def play(persona: Persona, sample: int) -> Episode:
        attempts = 0
        abandoned: list[str] = []
        replay = 0
        while True:
            episode = await run_episode(
                persona,
                user_factory=user_factory,
                agent_factory=agent_factory,
                rules=rules,
                sample=sample,
                seed=episode_seed(seed, persona.id, sample, replay),
                config=episode_config,
                retry=retry,
            )
            attempts += episode.attempts
            abandoned += episode.attempt_errors
            if episode.ok or replay >= error_retries:
                return episode.model_copy(
                    update={"attempts": attempts, "attempt_errors": abandoned}
                )
            abandoned.append(episode.error or "error")
            replay += 1

    workers = min(concurrency, len(jobs))
    in_flight = [workers]

    async def worker() -> None:
        try:
            while not queue.empty():
                index = queue.get_nowait()
                episode = await play(*jobs[index])
                results[index] = episode
                if on_episode is not None:
                    await on_episode(episode)
        finally:
            in_flight[0] -= 1

    try:
        with rounds(lambda: in_flight[0]) if rounds else contextlib.nullcontext():
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(worker())
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from failures
    return [episode for episode in results if episode is not None]


async def play_groups(
    personas: Sequence[Persona],
    n: int,
    agent_factory: AgentFactory,
    user_factory: AgentFactory,
    rules: EmotionRules | str,
    concurrency: int,
    seed: int,
    *,
    retry: RetryPolicy | None = None,
    episode_config: EpisodeConfig | None = None,
    error_retries: int = 1,
) -> list[Episode]:
    """Exactly ``n`` episodes per persona, persona-major, samples ``0..n-1``, in memory.

    Args:
        personas: One group per persona; ids must be unique.
        n: Episodes per persona (the group size).
        agent_factory: A fresh agent per dialogue (any AutoGen chat agent). For token-exact
            training samples its ``model_client`` keeps generation records.
        user_factory: A fresh simulated user per dialogue; it should use ``context.rules``.
        rules: The emotion rules, or a preset name (``sage``, ``rlver_train``).
        concurrency: Dialogues in flight at once.
        seed: The run seed; episode seeds derive from it with :func:`episode_seed`, so a call
            with the same seed replays the same episodes.
        retry: How failed dialogues are started over (see ``RetryPolicy``).
        episode_config: Recorded with every episode.
        error_retries: How many times an errored episode is played again before it is
            returned as an error.

    Returns:
        ``len(personas) * n`` episodes; errored ones have ``termination=error`` and ``error``.
    """
    chosen = EmotionRules.preset(rules) if isinstance(rules, str) else rules
    return await play_episodes(
        plan_groups(personas, n),
        agent_factory=agent_factory,
        user_factory=user_factory,
        rules=chosen,
        concurrency=concurrency,
        seed=seed,
        retry=retry,
        episode_config=episode_config,
        error_retries=error_retries,
    )
