"""The Sentient benchmark over episode records, and reading/writing episode JSONL files.

The Sentient score is the mean final emotion score over the dialogues. Success means the user
reached the top band (S, 100 under the SAGE rules), failure means the bottom band (F, below 10).
Errored dialogues have no score: they are counted apart and never enter a mean as 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from rlver_agents.emotion import SAGE, EmotionRules
from rlver_agents.episode import Episode
from rlver_agents.rewards import final_score_of


class EpisodeFileError(ValueError):
    """An episode file that cannot be read; the message names the file, line and field."""

    def __init__(self, path: Path, line: int, field: str | None, problem: str) -> None:
        what = f", field {field!r}" if field else ""
        super().__init__(f"{path}, line {line}{what}: {problem}")
        self.path = path
        self.line = line
        self.field = field


def read_episodes(path: str | Path) -> list[Episode]:
    """Read an episode JSONL file: the latest line per (persona, sample), in first-seen order.

    A resumed or retried campaign appends a new line for an episode it plays again, so a later
    line supersedes an earlier one with the same key. Blank lines are skipped; any other
    malformed line raises :class:`EpisodeFileError`.
    """
    path = Path(path)
    episodes: dict[tuple[str, int], Episode] = {}
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise EpisodeFileError(path, number, None, f"invalid JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise EpisodeFileError(
                    path, number, None, f"expected a JSON object, got {type(record).__name__}"
                )
            try:
                episode = Episode.model_validate(record)
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(part) for part in first["loc"]) or None
                raise EpisodeFileError(path, number, field, first["msg"]) from None
            episodes[episode.key] = episode
    return list(episodes.values())


def write_episodes(path: str | Path, episodes: Iterable[Episode], *, append: bool = False) -> Path:
    """Write episodes as JSONL (one compact JSON object per line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as handle:
        for episode in episodes:
            handle.write(episode.model_dump_json() + "\n")
    return path


class PersonaStats(BaseModel):
    """Final scores of one persona's scored dialogues; ``None`` when all of them errored."""

    model_config = ConfigDict(frozen=True)

    persona_id: str
    n: int
    mean: float | None
    min: int | None
    max: int | None
    errored: int = 0


class BenchmarkReport(BaseModel):
    """Sentient benchmark results of one run."""

    model_config = ConfigDict(frozen=True)

    n_episodes: int
    n_scored: int
    errored: int
    mean_final_score: float | None
    success: int
    failure: int
    mean_turns: float | None
    success_at: int
    failure_below: int
    per_persona: list[PersonaStats]

    def to_markdown(self, title: str | None = "Sentient benchmark") -> str:
        """A plain Markdown summary plus the per-persona table."""
        lines: list[str] = []
        if title:
            lines += [f"## {title}", ""]
        lines += [
            "| metric | value |",
            "| --- | --- |",
            f"| Sentient score (mean final score, 0-100) | {_fmt(self.mean_final_score)} |",
            f"| scored dialogues | {self.n_scored} |",
            f"| success (final >= {self.success_at}) | {self.success} |",
            f"| failure (final < {self.failure_below}) | {self.failure} |",
            f"| mean turns | {_fmt(self.mean_turns)} |",
            f"| errored (not scored) | {self.errored} |",
            "",
            "| persona | n | mean | min | max | errored |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in self.per_persona:
            lines.append(
                f"| {row.persona_id} | {row.n} | {_fmt(row.mean)} | {_fmt(row.min)} | "
                f"{_fmt(row.max)} | {row.errored} |"
            )
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}"


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def sentient_benchmark(episodes: Iterable[Episode], rules: EmotionRules = SAGE) -> BenchmarkReport:
    """Score a run. Thresholds come from ``rules``: success at ``band_s``, failure below ``band_c``.

    Personas are listed in the order they first appear.
    """
    episodes = list(episodes)
    scored = [(episode, final_score_of(episode)) for episode in episodes if episode.ok]
    finals = [score for _, score in scored]

    persona_order: dict[str, None] = dict.fromkeys(episode.persona_id for episode in episodes)
    per_persona: list[PersonaStats] = []
    for persona_id in persona_order:
        scores = [score for episode, score in scored if episode.persona_id == persona_id]
        errored = sum(1 for e in episodes if e.persona_id == persona_id and not e.ok)
        per_persona.append(
            PersonaStats(
                persona_id=persona_id,
                n=len(scores),
                mean=_mean(scores),
                min=min(scores) if scores else None,
                max=max(scores) if scores else None,
                errored=errored,
            )
        )

    return BenchmarkReport(
        n_episodes=len(episodes),
        n_scored=len(scored),
        errored=len(episodes) - len(scored),
        mean_final_score=_mean(finals),
        success=sum(1 for score in finals if score >= rules.band_s),
        failure=sum(1 for score in finals if score < rules.band_c),
        mean_turns=_mean([episode.num_turns for episode, _ in scored]),
        success_at=rules.band_s,
        failure_below=rules.band_c,
        per_persona=per_persona,
    )
