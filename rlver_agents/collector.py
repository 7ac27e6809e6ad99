"""Run many episodes at once and keep them in a resumable JSONL file.

A campaign gives every persona ``samples_per_persona`` episodes (a GRPO group, samples
``0..n-1``) and runs them ``concurrency`` at a time. Each finished episode is appended as one
whole line and flushed (optionally fsync-ed) before the next is written, so a killed run leaves
at most one torn last line, which the next run truncates with a :class:`TornLineWarning`.

Resuming skips every (persona, sample) whose latest line is scored. Errored episodes are run
again by default (``rerun_errors``): the errors worth recording are the ones that persist, and a
resumed run usually follows a fix or an outage. The new line supersedes the old one, so readers
take the last line per key, as :func:`read_episodes` does. A file recorded under other emotion
rules is refused, since its scores would not be comparable.

Transient model errors are retried by the episode runner, which starts the dialogue over with
fresh agents (see :class:`~rlver_agents.episode.RetryPolicy`). That works for any agent and any
client the factories build, leaves no half-updated agent or emotion state behind, and keeps token
records belonging to the dialogue that was recorded; the cost, replaying a few turns after a
rare outage, is small next to a campaign.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rlver_agents.emotion import RLVER_TRAIN, EmotionRules, TerminationReason
from rlver_agents.episode import (
    AgentFactory,
    Episode,
    EpisodeConfig,
    RetryPolicy,
    run_episode,
)
from rlver_agents.jsonl import RecordFileError, field_of, iter_json_objects
from rlver_agents.personas import Persona

if TYPE_CHECKING:
    import datasets


class TornLineWarning(UserWarning):
    """A campaign file ended in a partial line (a run was killed mid-write); it was cut off."""


class CampaignFileError(ValueError):
    """A campaign file that cannot be read or written; the message names the file and line."""


class CollectorConfig(BaseModel):
    """A campaign: where episodes go, how many per persona, how many at once, and retries."""

    model_config = ConfigDict(extra="forbid")

    output: Path = Field(description="JSONL file; appended to and resumed from.")
    samples_per_persona: int = Field(1, ge=1, description="Episodes per persona (GRPO group).")
    max_personas: int | None = Field(
        None, ge=1, description="Use a seeded random subset of this many personas."
    )
    concurrency: int = Field(8, ge=1, description="Episodes in flight at once.")
    rules: EmotionRules = Field(RLVER_TRAIN, description="Rules, or a preset name.")
    seed: int = Field(0, description="Campaign seed; each episode's seed derives from it.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
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


def episode_seed(campaign_seed: int, persona_id: str, sample: int) -> int:
    """A stable 31-bit seed per episode, independent of scheduling order."""
    digest = hashlib.blake2b(f"{campaign_seed}:{persona_id}:{sample}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") % (2**31)


# --- the campaign file --------------------------------------------------------------------------


def repair_jsonl(path: str | Path) -> int:
    """Cut a torn last line (no trailing newline) off ``path``; returns the bytes removed.

    Whole lines end in a newline because each is written in one piece with its newline, so a
    missing final newline can only mean a write that was interrupted.
    """
    path = Path(path)
    if not path.exists():
        return 0
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        keep = _end_of_last_line(handle, size)
        handle.truncate(keep)
    removed = size - keep
    warnings.warn(
        f"{path}: removed a torn last line of {removed} bytes left by an interrupted write",
        TornLineWarning,
        stacklevel=2,
    )
    return removed


def _end_of_last_line(handle: IO[bytes], size: int) -> int:
    """Offset just past the last newline before ``size`` (0 when there is none)."""
    position = size
    while position > 0:
        start = max(0, position - 65536)
        handle.seek(start)
        chunk = handle.read(position - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


class EpisodeFileError(RecordFileError):
    """An episode file that cannot be read; the message names the file, line and field."""


def iter_episode_lines(path: str | Path) -> Iterator[Episode]:
    """Every whole episode line of ``path`` in file order, superseded ones included.

    A torn last line is skipped (the file is not modified); a broken line elsewhere is an
    :class:`EpisodeFileError`.
    """
    path = Path(path)
    if not path.is_file():
        raise EpisodeFileError(path, None, None, "no such episode file")
    for number, record in iter_json_objects(path, EpisodeFileError, skip_torn_last_line=True):
        try:
            yield Episode.model_validate(record)
        except ValidationError as exc:
            raise EpisodeFileError(path, number, *field_of(exc)) from None


def read_episodes(path: str | Path) -> list[Episode]:
    """The latest episode per (persona, sample), in order of first appearance.

    A resumed or retried campaign appends a new line for an episode it plays again, so a later
    line supersedes an earlier one with the same key.
    """
    latest: dict[tuple[str, int], Episode] = {}
    for episode in iter_episode_lines(path):
        latest[episode.key] = episode
    return list(latest.values())


def write_episodes(path: str | Path, episodes: Iterable[Episode], *, append: bool = False) -> Path:
    """Write episodes as JSONL (one compact JSON object per line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as handle:
        for episode in episodes:
            handle.write(episode.model_dump_json() + "\n")
    return path


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

    ``concurrency`` workers pull (persona, sample) jobs from a queue: the same bound as a
    semaphore, without a task per episode waiting up front. A ``<output>.lock`` file keeps a
    second collector from appending to the same file at the same time.

    Args:
        config: The campaign settings.
        user_factory: Builds a fresh simulated user per dialogue from an ``EpisodeContext``;
            it should use ``context.rules`` so the user and the runner agree on the rules.
        agent_factory: Builds a fresh agent (any AutoGen chat agent) per dialogue.
        episode_config: Recorded with every episode (agent/simulator/appraiser configs);
            empty parts are filled from the agents' component configs.
    """

    def __init__(
        self,
        config: CollectorConfig,
        *,
        user_factory: AgentFactory,
        agent_factory: AgentFactory,
        episode_config: EpisodeConfig | None = None,
    ) -> None:
        self.config = config
        self._user_factory = user_factory
        self._agent_factory = agent_factory
        self._episode_config = episode_config or EpisodeConfig()
        self._write_lock: asyncio.Lock | None = None

    def plan(self, personas: Sequence[Persona]) -> list[tuple[Persona, int]]:
        """Every (persona, sample) of the campaign, persona by persona so groups finish together."""
        chosen = list(personas)
        ids = [p.id for p in chosen]
        if len(set(ids)) != len(ids):
            raise ValueError("persona ids must be unique: episodes are keyed by them")
        limit = self.config.max_personas
        if limit is not None and limit < len(chosen):
            picked = set(random.Random(self.config.seed).sample(range(len(chosen)), limit))
            chosen = [p for i, p in enumerate(chosen) if i in picked]
        return [(p, s) for p in chosen for s in range(self.config.samples_per_persona)]

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
        self._write_lock = asyncio.Lock()  # bound to this run's event loop
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
        queue: asyncio.Queue[tuple[Persona, int]] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        with (
            output.open("ab") as handle,
            _Progress(self.config.progress, len(planned), skipped, tally) as progress,
        ):

            async def worker() -> None:
                while not queue.empty():
                    persona, sample = queue.get_nowait()
                    episode = await self._play(persona, sample)
                    await self._append(handle, episode)
                    tally.add(episode)
                    progress.advance()

            workers = min(self.config.concurrency, len(jobs))
            try:
                async with asyncio.TaskGroup() as group:
                    for _ in range(workers):
                        group.create_task(worker())
            except ExceptionGroup as failures:
                raise failures.exceptions[0] from failures
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

    async def _play(self, persona: Persona, sample: int) -> Episode:
        return await run_episode(
            persona,
            user_factory=self._user_factory,
            agent_factory=self._agent_factory,
            rules=self.config.rules,
            sample=sample,
            seed=episode_seed(self.config.seed, persona.id, sample),
            config=self._episode_config,
            retry=self.config.retry,
        )

    async def _append(self, handle: IO[bytes], episode: Episode) -> None:
        """Write one whole line; the lock keeps an fsync from interleaving with the next write."""
        line = episode.model_dump_json().encode("utf-8") + b"\n"
        assert self._write_lock is not None, "lines are only written during run()"
        async with self._write_lock:
            self._write_line(handle, line)
            if self.config.fsync:
                await asyncio.to_thread(os.fsync, handle.fileno())

    def _write_line(self, handle: IO[bytes], line: bytes) -> None:
        handle.write(line)
        handle.flush()


# --- export ---------------------------------------------------------------------------------


def _features() -> datasets.Features:
    """A fixed schema; free-form dicts (config, appraisal) are stored as JSON strings."""
    from datasets import Features, Value

    integer, text = Value("int64"), Value("string")
    tokens = {
        "prompt_token_ids": [integer],
        "completion_token_ids": [integer],
        "completion_logprobs": [Value("float64")],
    }
    turn = {
        "index": integer,
        "speaker": text,
        "source": text,
        "text": text,
        "thought": text,
        "format_violation": text,
        "appraisal": text,
        "raw_change": integer,
        "applied_change": integer,
        "emotion_before": integer,
        "emotion_after": integer,
        "band": text,
        "usage": {"prompt_tokens": integer, "completion_tokens": integer},
        "tokens": [tokens],
    }
    return Features(
        {
            "persona_id": text,
            "sample": integer,
            "config": text,
            "turns": [turn],
            "termination": text,
            "error": text,
            "final_score": integer,
            "num_turns": integer,
            "attempts": integer,
            "attempt_errors": [text],
            "started_at": text,
            "duration_s": Value("float64"),
        }
    )


def episode_to_row(episode: Episode) -> dict[str, Any]:
    """A flat, fixed-schema row of an episode (see :func:`to_dataset`)."""
    row = episode.model_dump(mode="json")
    row["config"] = json.dumps(row["config"], ensure_ascii=False)
    for turn in row["turns"]:
        if turn["appraisal"] is not None:
            turn["appraisal"] = json.dumps(turn["appraisal"], ensure_ascii=False)
    return row


def episode_from_row(row: dict[str, Any]) -> Episode:
    """The inverse of :func:`episode_to_row`."""
    data = dict(row)
    data["config"] = json.loads(data["config"])
    data["turns"] = [
        {**turn, "appraisal": json.loads(turn["appraisal"]) if turn["appraisal"] else None}
        for turn in data["turns"]
    ]
    return Episode.model_validate(data)


def _episodes(source: str | Path | Iterable[Episode]) -> list[Episode]:
    return read_episodes(source) if isinstance(source, str | Path) else list(source)


def to_dataset(source: str | Path | Iterable[Episode]) -> datasets.Dataset:
    """A Hugging Face dataset, one row per episode (latest line per key when read from a file)."""
    from datasets import Dataset

    rows = [episode_to_row(e) for e in _episodes(source)]
    return Dataset.from_list(rows, features=_features())


def from_dataset(dataset: datasets.Dataset) -> list[Episode]:
    """Episodes back from a dataset made by :func:`to_dataset` (or read from its Parquet)."""
    return [episode_from_row(row) for row in dataset]


def export_parquet(source: str | Path | Iterable[Episode], destination: str | Path) -> Path:
    """Write the episodes as Parquet with the :func:`to_dataset` schema."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    to_dataset(source).to_parquet(str(destination))
    return destination


def read_parquet(path: str | Path) -> list[Episode]:
    """Episodes from a Parquet file written by :func:`export_parquet`."""
    import pyarrow.parquet as pq

    return [episode_from_row(row) for row in pq.read_table(str(path)).to_pylist()]
