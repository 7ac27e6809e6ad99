"""The Sentient benchmark over episode records.

The Sentient score is the mean final emotion score over the dialogues. Success means the user
reached the top band (S, 100 under the SAGE rules), failure means the bottom band (F, below 10).
Errored dialogues have no score: they are counted apart and never enter a mean as 0. A run also
counts how often the simulated user's reply guard stepped in (stock lines, trims, rewrites), so
a campaign shows how much of the user's side was the model's own words.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from rlver_agents.emotion import SAGE, EmotionRules
from rlver_agents.episodes.episode import Episode
from rlver_agents.evaluation.rewards import final_score_of


class PersonaStats(BaseModel):
    """Final scores of one persona's scored dialogues; ``None`` when all of them errored."""

    model_config = ConfigDict(frozen=True)

    persona_id: str
    n: int
    mean: float | None
    min: int | None
    max: int | None
    errored: int = 0


class ErrorCount(BaseModel):
    """How many errored dialogues failed with one reason."""

    model_config = ConfigDict(frozen=True)

    reason: str
    count: int


def common_errors(episodes: Iterable[Episode], top: int = 3) -> list[ErrorCount]:
    """The ``top`` most common reasons among the errored dialogues, most common first."""
    counts = Counter(e.error or "no reason recorded" for e in episodes if not e.ok)
    return [ErrorCount(reason=r, count=c) for r, c in counts.most_common(top)]


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
    common_errors: list[ErrorCount] = Field(
        default_factory=list, description="Why dialogues errored, most common reasons first."
    )
    user_replies: int = Field(0, description="User turns, in every episode, that record origin.")
    stock_replies: int = Field(0, description="User turns that were a reply guard stock line.")
    trimmed_replies: int = Field(0, description="User turns the reply guard cut short.")
    retried_replies: int = Field(0, description="User turns written again after a failed draft.")

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
            f"| user replies that are stock lines | {self._of_replies(self.stock_replies)} |",
            f"| user replies trimmed | {self._of_replies(self.trimmed_replies)} |",
            f"| user replies rewritten after a bad draft | "
            f"{self._of_replies(self.retried_replies)} |",
            "",
        ]
        if self.common_errors:
            lines += [f"Errored dialogues, most common reasons first ({self.errored} in all):", ""]
            lines += [f"- {e.count} × {e.reason}" for e in self.common_errors]
            lines.append("")
        lines += [
            "| persona | n | mean | min | max | errored |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in self.per_persona:
            lines.append(
                f"| {row.persona_id} | {row.n} | {_fmt(row.mean)} | {_fmt(row.min)} | "
                f"{_fmt(row.max)} | {row.errored} |"
            )
        return "\n".join(lines) + "\n"

    def _of_replies(self, count: int) -> str:
        return f"{count} of {self.user_replies}" if self.user_replies else "n/a (not recorded)"


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
    origins = Counter(
        turn.reply_origin
        for episode in episodes
        for turn in episode.turns
        if turn.speaker == "user" and turn.reply_origin is not None
    )
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
        common_errors=common_errors(episodes),
        user_replies=origins.total(),
        stock_replies=origins["stock"],
        trimmed_replies=origins["trimmed"],
        retried_replies=origins["model_retry"],
    )
