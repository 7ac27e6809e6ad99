"""play_groups: full groups of episodes in memory, in a fixed order, errors kept with reasons."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_core.models import CreateResult, LLMMessage
from autogen_ext.models.replay import ReplayChatCompletionClient

import rlver_agents
from rlver_agents.agents.simulator import SimulatedUser
from rlver_agents.appraisers.appraisal import LLMAppraiser
from rlver_agents.emotion import RLVER_TRAIN, EmotionRules, TerminationReason
from rlver_agents.episodes.episode import EpisodeConfig, EpisodeContext, RetryPolicy
from rlver_agents.episodes.groups import episode_seed, plan_groups, play_episodes, play_groups
from rlver_agents.personas import Persona

RULES = EmotionRules(name="short", initial_score=40, max_turns=2)
JUDGE = "Intent: comfort\nFit: good\nReaction: lighter\nChange: +5"
FAST = RetryPolicy(max_attempts=2, base_delay_s=0.0, turn_timeout_s=5.0)


def personas(n: int) -> list[Persona]:
    return [
        Persona(
            id=f"p{i}",
            profile="A student far from home.",
            scene="Her exam went badly.",
            hidden_need="To hear that one exam does not define her.",
            first_talk="I think I failed today.",
        )
        for i in range(n)
    ]


class SlowReplay(ReplayChatCompletionClient):
    """Replays one line after ``delay_s``, so later jobs can finish before earlier ones."""

    def __init__(self, reply: str, delay_s: float) -> None:
        super().__init__([reply] * 16)
        self._delay_s = delay_s

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        await asyncio.sleep(self._delay_s)
        return await super().create(messages, **kwargs)


def user(ctx: EpisodeContext) -> SimulatedUser:
    judge = LLMAppraiser(ReplayChatCompletionClient([JUDGE] * 8))
    voice = ReplayChatCompletionClient(["Maybe."] * 8)
    return SimulatedUser("user", voice, ctx.persona, rules=ctx.rules, appraiser=judge)


FINISHED: list[tuple[str, int]] = []


class LoggedAgent(AssistantAgent):
    """Logs its (persona, sample) in ``FINISHED`` when the runner closes it."""

    def __init__(self, ctx: EpisodeContext) -> None:
        # sample 0 is the slowest, so episodes finish out of job order
        super().__init__("agent", SlowReplay("That is hard.", 0.004 * (3 - ctx.sample)))
        self._key = (ctx.persona.id, ctx.sample)

    async def close(self) -> None:
        FINISHED.append(self._key)
        await super().close()


def agent(ctx: EpisodeContext) -> AssistantAgent:
    return LoggedAgent(ctx)


def written(directory: Path) -> list[Path]:
    return list(directory.iterdir())


async def test_every_group_comes_back_full_in_order_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    FINISHED.clear()
    episodes = await rlver_agents.play_groups(
        personas(3), 3, agent, user, RULES, concurrency=4, seed=5, retry=FAST
    )
    planned = [(f"p{i}", s) for i in range(3) for s in range(3)]
    assert [e.key for e in episodes] == planned
    assert sorted(FINISHED) == planned and FINISHED != planned  # finished out of order
    assert all(e.termination is TerminationReason.MAX_TURNS for e in episodes)
    assert all(e.final_score == 50 and e.attempts == 1 for e in episodes)
    assert [e.config.seed for e in episodes] == [
        episode_seed(5, e.persona_id, e.sample) for e in episodes
    ]
    assert len({e.config.seed for e in episodes}) == 9
    assert all(e.config.rules["name"] == "short" for e in episodes)
    assert written(tmp_path) == []


async def test_an_errored_episode_is_replayed_then_returned_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    built: list[tuple[str, int, int | None]] = []

    def failing(ctx: EpisodeContext) -> AssistantAgent:
        built.append((ctx.persona.id, ctx.sample, ctx.seed))
        if (ctx.persona.id, ctx.sample) == ("p1", 1):
            raise RuntimeError("model 'policy' is not loaded")
        if (ctx.persona.id, ctx.sample) == ("p0", 0) and ctx.seed == episode_seed(0, "p0", 0):
            raise ValueError("bad first draw")
        return agent(ctx)

    episodes = await play_groups(
        personas(2), 2, failing, user, RULES, 3, 0, retry=FAST, error_retries=2
    )
    assert [e.key for e in episodes] == [("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1)]
    recovered, broken = episodes[0], episodes[3]
    assert recovered.ok and recovered.attempts == 2
    assert recovered.attempt_errors == ["ValueError: bad first draw"]
    assert recovered.config.seed == episode_seed(0, "p0", 0, replay=1)
    assert broken.termination is TerminationReason.ERROR and broken.final_score is None
    assert broken.error == "RuntimeError: model 'policy' is not loaded"
    assert broken.attempts == 3 and broken.attempt_errors == [broken.error] * 2
    assert [seed for pid, s, seed in built if (pid, s) == ("p1", 1)] == [
        episode_seed(0, "p1", 1, replay=k) for k in range(3)
    ]
    assert episodes[1].ok and episodes[2].ok
    assert written(tmp_path) == []


async def test_without_error_retries_an_error_is_returned_at_once() -> None:
    def broken(ctx: EpisodeContext) -> AssistantAgent:
        raise KeyError("model_client")

    (episode,) = await play_groups(
        personas(1), 1, broken, user, "rlver_train", 1, 0, error_retries=0
    )
    assert episode.error == "KeyError: 'model_client'" and episode.attempts == 1
    assert episode.config.rules == RLVER_TRAIN.model_dump(mode="json")


async def test_the_same_seed_plays_the_same_episodes_and_records_the_config() -> None:
    config = EpisodeConfig(agent={"policy": "tiny"}, simulator={"voice": "replay"})
    runs = [
        await play_groups(personas(2), 2, agent, user, RULES, 2, 9, episode_config=config)
        for _ in range(2)
    ]
    strip: dict[str, Any] = {  # wall times differ between runs
        "started_at": True,
        "duration_s": True,
        "turns": {"__all__": {"duration_s", "queued_s"}},
    }
    assert [e.model_dump(exclude=strip) for e in runs[0]] == [
        e.model_dump(exclude=strip) for e in runs[1]
    ]
    assert runs[0][0].config.agent == {"policy": "tiny"}


async def test_bad_arguments_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"unique.*\['p0'\]"):
        await play_groups(personas(1) * 2, 1, agent, user, RULES, 1, 0)
    with pytest.raises(ValueError, match="n \\(episodes per persona\\) must be at least 1"):
        await play_groups(personas(1), 0, agent, user, RULES, 1, 0)
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        await play_groups(personas(1), 1, agent, user, RULES, 0, 0)
    with pytest.raises(ValueError, match="unknown emotion rules preset"):
        await play_groups(personas(1), 1, agent, user, "nope", 1, 0)
    assert await play_groups([], 2, agent, user, RULES, 1, 0) == []


async def test_rounds_are_told_how_many_dialogues_are_in_flight() -> None:
    """The count the engines wait for: the workers still playing, falling to 0 as the queue
    of jobs runs dry."""
    seen: list[int] = []
    held: list[Callable[[], int]] = []

    @contextmanager
    def rounds(waiting_for: Callable[[], int]) -> Iterator[None]:
        held.append(waiting_for)
        yield
        seen.append(waiting_for())

    def counting_agent(ctx: EpisodeContext) -> AssistantAgent:
        seen.append(held[0]())
        return LoggedAgent(ctx)

    episodes = await play_episodes(
        plan_groups(personas(3), 2),
        agent_factory=counting_agent,
        user_factory=user,
        rules=RULES,
        concurrency=4,
        seed=0,
        retry=FAST,
        rounds=rounds,
    )
    assert len(episodes) == 6 and all(e.ok for e in episodes)
    # four workers play while jobs are left (a worker goes on to the next job at once), and
    # none is left when the rounds end
    assert len(held) == 1 and seen == [4] * 6 + [0]
