"""The trajectory collector: resumable files, retries and bounded concurrency."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_core.models import CreateResult, LLMMessage
from autogen_ext.models.replay import ReplayChatCompletionClient

from rlver_agents.agents.simulator import SimulatedUser
from rlver_agents.appraisers.appraisal import LLMAppraiser
from rlver_agents.emotion import DEFAULT_RULES, RLVER_TRAIN, SAGE, EmotionRules, TerminationReason
from rlver_agents.episodes.collector import CampaignFileError, CollectorConfig, TrajectoryCollector
from rlver_agents.episodes.episode import EpisodeContext, RetryPolicy
from rlver_agents.episodes.episode_file import (
    EpisodeFileError,
    TornLineWarning,
    iter_episode_lines,
    read_episodes,
    repair_jsonl,
)
from rlver_agents.episodes.groups import episode_seed
from rlver_agents.personas import Persona

RULES = EmotionRules(name="short", initial_score=40, max_turns=3)
JUDGE = "Intent: comfort\nFit: good\nReaction: a little lighter\nChange: +5"


def personas(n: int) -> list[Persona]:
    return [
        Persona(
            id=f"p{i}",
            name=f"Person {i}",
            profile="A teacher who is tired.",
            scene="A parent complained about her at a meeting.",
            hidden_need="To hear that she is doing her best.",
            first_talk="I had the worst parent meeting today.",
        )
        for i in range(n)
    ]


class Calls:
    """Counts model calls in flight across every client of a campaign."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0


class ScriptedClient(ReplayChatCompletionClient):
    """Replays ``reply`` forever; optionally slow, counted, or failing with a seeded chance."""

    def __init__(
        self,
        reply: str,
        *,
        delay_s: float = 0.0,
        calls: Calls | None = None,
        fail_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__([reply] * 64)
        self._delay_s = delay_s
        self._calls = calls
        self._fail_rate = fail_rate
        self._rng = random.Random(seed)

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        if self._fail_rate and self._rng.random() < self._fail_rate:
            if self._rng.random() < 0.5:
                raise ConnectionError("connection reset by peer")
            await asyncio.sleep(30)  # outlives the turn timeout
        if self._calls is not None:
            self._calls.now += 1
            self._calls.peak = max(self._calls.peak, self._calls.now)
        try:
            await asyncio.sleep(self._delay_s)
            return await super().create(messages, **kwargs)
        finally:
            if self._calls is not None:
                self._calls.now -= 1


def factories(**client: Any):
    """A SimulatedUser with an LLM appraiser, and an AssistantAgent, all on scripted clients."""

    def seed_of(ctx: EpisodeContext, role: int) -> int:
        return (ctx.seed or 0) * 10 + ctx.attempt * 3 + role

    def user(ctx: EpisodeContext) -> SimulatedUser:
        judge = LLMAppraiser(ScriptedClient(JUDGE, seed=seed_of(ctx, 0), **client))
        voice = ScriptedClient("Maybe you are right.", seed=seed_of(ctx, 1), **client)
        return SimulatedUser("user", voice, ctx.persona, rules=ctx.rules, appraiser=judge)

    def agent(ctx: EpisodeContext) -> AssistantAgent:
        return AssistantAgent(
            "agent", ScriptedClient("That sounds hard.", seed=seed_of(ctx, 2), **client)
        )

    return {"user_factory": user, "agent_factory": agent}


def config(tmp_path: Path, **kwargs: Any) -> CollectorConfig:
    base: dict[str, Any] = {
        "output": tmp_path / "campaign.jsonl",
        "samples_per_persona": 3,
        "concurrency": 4,
        "rules": RULES,
        "progress": False,
        "retry": RetryPolicy(max_attempts=3, base_delay_s=0.0, turn_timeout_s=5.0),
    }
    return CollectorConfig(**{**base, **kwargs})


def line_keys(path: Path) -> Counter[tuple[str, int]]:
    return Counter(e.key for e in iter_episode_lines(path))


async def test_a_campaign_records_every_group_once(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    summary = await TrajectoryCollector(cfg, **factories()).run(personas(4))
    keys = line_keys(cfg.output)
    assert set(keys) == {(f"p{i}", s) for i in range(4) for s in range(3)}
    assert set(keys.values()) == {1}
    episodes = read_episodes(cfg.output)
    assert all(e.termination is TerminationReason.MAX_TURNS for e in episodes)
    assert all(e.final_score == 55 and e.num_turns == 3 for e in episodes)  # 40 + 3 * 5
    assert all(e.config.seed == episode_seed(0, e.persona_id, e.sample) for e in episodes)
    assert episodes[0].config.simulator["provider"] == "rlver_agents.agents.SimulatedUser"
    assert episodes[0].turns[2].appraisal["reaction"] == "a little lighter"
    assert (summary.planned, summary.ran, summary.skipped, summary.errors) == (12, 12, 0, 0)
    assert summary.max_turns == 12 and summary.mean_score == 55.0


async def test_concurrency_is_bounded_and_used(tmp_path: Path) -> None:
    calls = Calls()
    cfg = config(tmp_path, concurrency=3)
    await TrajectoryCollector(cfg, **factories(delay_s=0.005, calls=calls)).run(personas(4))
    # each dialogue makes one call at a time, so calls in flight = dialogues in flight
    assert calls.peak == 3 and calls.now == 0
    assert sum(line_keys(cfg.output).values()) == 12


class SignallingCollector(TrajectoryCollector):
    """Sets ``written`` once ``k`` lines are on disk, so a test can kill it mid-campaign."""

    def __init__(self, *args: Any, k: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.written = asyncio.Event()
        self._left = k

    def _write_line(self, handle: IO[bytes], line: bytes) -> None:
        super()._write_line(handle, line)
        self._left -= 1
        if self._left == 0:
            self.written.set()


async def test_resume_after_a_kill_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path, concurrency=2)
    collector = SignallingCollector(cfg, k=4, **factories(delay_s=0.002))
    task = asyncio.create_task(collector.run(personas(4)))
    await asyncio.wait_for(collector.written.wait(), timeout=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    written = cfg.output.read_bytes().count(b"\n")
    assert 4 <= written < 12
    with cfg.output.open("ab") as handle:  # the kill also tore a line in half
        handle.write(b'{"persona_id": "p3", "sample": 2, "tur')

    with pytest.warns(TornLineWarning, match="torn last line"):
        summary = await TrajectoryCollector(cfg, **factories()).run(personas(4))
    assert summary.skipped == written and summary.ran == 12 - written
    keys = line_keys(cfg.output)
    assert len(keys) == 12 and set(keys.values()) == {1}
    assert cfg.output.read_bytes().endswith(b"\n")


class DyingCollector(TrajectoryCollector):
    """Its disk fails while writing line ``k + 1``, leaving half of that line behind."""

    def __init__(self, *args: Any, k: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._left = k

    def _write_line(self, handle: IO[bytes], line: bytes) -> None:
        if self._left == 0:
            handle.write(line[: len(line) // 2])
            handle.flush()
            raise OSError("disk went away")
        self._left -= 1
        super()._write_line(handle, line)


async def test_a_writer_that_dies_mid_line_is_repaired_on_resume(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with pytest.raises(OSError, match="disk went away"):
        await DyingCollector(cfg, k=5, **factories()).run(personas(4))
    assert not cfg.output.read_bytes().endswith(b"\n")
    assert len(read_episodes(cfg.output)) == 5  # readers skip the torn line, file untouched
    assert not cfg.output.read_bytes().endswith(b"\n")
    with pytest.warns(TornLineWarning):
        summary = await TrajectoryCollector(cfg, **factories()).run(personas(4))
    assert (summary.skipped, summary.ran) == (5, 7)
    keys = line_keys(cfg.output)
    assert len(keys) == 12 and set(keys.values()) == {1}


async def test_faults_are_retried_and_every_episode_is_accounted_for(tmp_path: Path) -> None:
    retry = RetryPolicy(max_attempts=3, base_delay_s=0.0, turn_timeout_s=0.2)
    cfg = config(tmp_path, samples_per_persona=4, concurrency=6, retry=retry)
    summary = await TrajectoryCollector(cfg, **factories(fail_rate=0.1)).run(personas(5))
    keys = line_keys(cfg.output)
    assert len(keys) == 20 and set(keys.values()) == {1}
    episodes = read_episodes(cfg.output)
    errored = [e for e in episodes if not e.ok]
    retried = [e for e in episodes if e.ok and e.attempts > 1]
    assert errored and retried and summary.errors == len(errored)
    for episode in errored:
        assert episode.final_score is None and episode.attempts == 3
        assert episode.error and episode.error.split(":")[0] in {"ConnectionError", "TimeoutError"}
    for episode in retried:
        assert len(episode.attempt_errors) == episode.attempts - 1
        assert len(episode.turns) == 7  # the abandoned attempts left nothing behind


async def test_errored_episodes_are_rerun_on_resume_and_superseded(tmp_path: Path) -> None:
    def broken_agent(ctx: EpisodeContext) -> AssistantAgent:
        raise RuntimeError("no such model")

    cfg = config(tmp_path, samples_per_persona=2)
    first = await TrajectoryCollector(
        cfg, user_factory=factories()["user_factory"], agent_factory=broken_agent
    ).run(personas(2))
    assert first.errors == 4 and first.mean_score is None
    kept = await TrajectoryCollector(
        cfg.model_copy(update={"rerun_errors": False}), **factories()
    ).run(personas(2))
    assert kept.ran == 0 and kept.errors == 4
    fixed = await TrajectoryCollector(cfg, **factories()).run(personas(2))
    assert fixed.ran == 4 and fixed.errors == 0
    assert set(line_keys(cfg.output).values()) == {2}  # old error line, then its replacement
    assert all(e.ok for e in read_episodes(cfg.output))


async def test_resuming_under_other_rules_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path, samples_per_persona=1)
    await TrajectoryCollector(cfg, **factories()).run(personas(1))
    other = cfg.model_copy(update={"rules": RLVER_TRAIN})
    with pytest.raises(CampaignFileError, match="recorded with rules 'short'"):
        await TrajectoryCollector(other, **factories()).run(personas(2))
    assert sum(line_keys(cfg.output).values()) == 1


async def test_two_collectors_cannot_share_a_file(tmp_path: Path) -> None:
    cfg = config(tmp_path, concurrency=1)
    slow = TrajectoryCollector(cfg, **factories(delay_s=0.01))
    task = asyncio.create_task(slow.run(personas(2)))
    await asyncio.sleep(0.02)
    with pytest.raises(CampaignFileError, match="another collector"):
        await TrajectoryCollector(cfg, **factories()).run(personas(2))
    await task


def test_config_accepts_a_preset_name_and_plans_a_seeded_subset(tmp_path: Path) -> None:
    cfg = CollectorConfig(
        output=tmp_path / "c.jsonl", rules="rlver_train", max_personas=2, samples_per_persona=2
    )
    assert cfg.rules == RLVER_TRAIN
    assert CollectorConfig(output=tmp_path / "c.jsonl").rules == DEFAULT_RULES == SAGE
    collector = TrajectoryCollector(cfg, **factories())
    plan = collector.plan(personas(5))
    assert len(plan) == 4 and [s for _, s in plan] == [0, 1, 0, 1]
    assert plan == collector.plan(personas(5))
    with pytest.raises(ValueError, match="unknown emotion rules preset"):
        CollectorConfig(output=tmp_path / "c.jsonl", rules="nope")
    with pytest.raises(ValueError, match="unique"):
        collector.plan(personas(1) * 2)


def test_a_broken_line_in_the_middle_is_reported_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"persona_id": "a", "termination": "success"}\n{"persona_id": 3}\n')
    with pytest.raises(EpisodeFileError, match=r"bad.jsonl, line 2, field 'persona_id'"):
        read_episodes(path)
    assert repair_jsonl(path) == 0
    with pytest.raises(EpisodeFileError, match="no such episode file"):
        read_episodes(tmp_path / "missing.jsonl")


async def test_fsync_and_the_progress_bar_write_the_same_lines(tmp_path: Path) -> None:
    cfg = config(tmp_path, samples_per_persona=2, fsync=True, progress=True)
    summary = await TrajectoryCollector(cfg, **factories()).run(personas(2))
    assert summary.ran == 4 and len(read_episodes(cfg.output)) == 4
    assert cfg.output.read_bytes().count(b"\n") == 4


async def test_error_retries_replay_an_errored_episode_with_a_new_seed(tmp_path: Path) -> None:
    seen: list[int | None] = []

    def flaky_agent(ctx: EpisodeContext) -> AssistantAgent:
        seen.append(ctx.seed)
        if len(seen) == 1:
            raise RuntimeError("first build fails")
        return factories()["agent_factory"](ctx)

    cfg = config(tmp_path, samples_per_persona=1, concurrency=1, error_retries=1)
    summary = await TrajectoryCollector(
        cfg, user_factory=factories()["user_factory"], agent_factory=flaky_agent
    ).run(personas(1))
    (episode,) = read_episodes(cfg.output)
    assert summary.errors == 0 and episode.ok and episode.attempts == 2
    assert episode.attempt_errors == ["RuntimeError: first build fails"]
    assert seen == [episode_seed(0, "p0", 0), episode_seed(0, "p0", 0, replay=1)]
    assert episode.config.seed == seen[1] and seen[0] != seen[1]
    assert sum(line_keys(cfg.output).values()) == 1  # only the final episode is written
