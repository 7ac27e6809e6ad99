"""Markdown reports with PNG figures for one or more runs of episodes.

Figures per run: emotion trajectories (score against turn, with the band thresholds), the
distribution of final scores and the band-to-band transition matrix; across runs, a comparison
of the Sentient score with success and failure counts. matplotlib is imported inside the
plotting functions and drives an Agg canvas directly, so importing this module stays cheap and
no global pyplot state is touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlver_agents.emotion import SAGE, Band, EmotionRules, band_of
from rlver_agents.episodes.episode import Episode
from rlver_agents.episodes.episode_file import read_episodes
from rlver_agents.evaluation.benchmark import BenchmarkReport, sentient_benchmark

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BAND_ORDER: tuple[Band, ...] = (Band.S, Band.A, Band.B, Band.C, Band.F)
"""Rows and columns of the transition matrix, best band first."""

Runs = Mapping[str, Sequence[Episode]] | Sequence[str | Path]


def run_rules(episodes: Sequence[Episode], default: EmotionRules = SAGE) -> EmotionRules:
    """The rules recorded with the first episode that has any; ``default`` when none has."""
    for episode in episodes:
        if episode.config.rules:
            return EmotionRules.model_validate(episode.config.rules)
    return default


def band_transition_counts(
    episodes: Sequence[Episode], rules: EmotionRules = SAGE
) -> dict[Band, dict[Band, int]]:
    """``counts[before][after]``: how often one appraisal moved the user between bands."""
    counts = {before: dict.fromkeys(BAND_ORDER, 0) for before in BAND_ORDER}
    for episode in episodes:
        scores = episode.emotion_trajectory()
        for before, after in pairwise(scores):
            counts[band_of(before, rules)][band_of(after, rules)] += 1
    return counts


def _lowest(rules: EmotionRules, scores: Sequence[int]) -> int:
    """Bottom of a score axis: the floor, or without one (RLVER's training arithmetic) the
    lowest score seen, rounded down to a multiple of ten."""
    if rules.floor is not None:
        return rules.floor
    return min([0, *scores]) // 10 * 10


def _canvas(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _integer_axis(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def plot_trajectories(
    episodes: Sequence[Episode], path: str | Path, rules: EmotionRules = SAGE
) -> Path:
    """One line per scored episode, with dashed lines at the band thresholds."""
    figure = _canvas(7, 4.5)
    axes = figure.subplots()
    scored = [episode for episode in episodes if episode.ok]
    seen: list[int] = []
    for episode in scored:
        scores = episode.emotion_trajectory()
        seen += scores
        axes.plot(range(len(scores)), scores, marker="o", markersize=3, linewidth=1, alpha=0.5)
    for name, level in (
        ("S", rules.band_s),
        ("A", rules.band_a),
        ("B", rules.band_b),
        ("C", rules.band_c),
    ):
        axes.axhline(level, color="grey", linestyle="--", linewidth=0.8)
        axes.text(0.005, level, name, transform=axes.get_yaxis_transform(), va="bottom", fontsize=8)
    axes.set_xlim(0, rules.max_turns)
    axes.set_ylim(_lowest(rules, seen) - 2, rules.cap + 2)
    axes.set_xlabel("turn")
    _integer_axis(axes.xaxis)
    axes.set_ylabel("emotion score")
    axes.set_title(f"Emotion trajectories ({len(scored)} dialogues)")
    return _save(figure, Path(path))


def plot_final_scores(
    episodes: Sequence[Episode], path: str | Path, rules: EmotionRules = SAGE
) -> Path:
    """Histogram of final scores in bins of 10; the last bin holds the cap."""
    figure = _canvas(6, 4)
    axes = figure.subplots()
    finals = [e.final_score for e in episodes if e.ok and e.final_score is not None]
    edges = list(range(_lowest(rules, finals), rules.cap + 11, 10))
    axes.hist(finals, bins=edges, color="tab:blue", edgecolor="white")
    axes.axvline(rules.band_c, color="tab:red", linestyle="--", label=f"failure < {rules.band_c}")
    axes.axvline(
        rules.band_s, color="tab:green", linestyle="--", label=f"success >= {rules.band_s}"
    )
    axes.set_xlabel("final emotion score")
    axes.set_ylabel("dialogues")
    _integer_axis(axes.yaxis)
    axes.set_title(f"Final scores ({len(finals)} dialogues)")
    axes.legend(fontsize=8)
    return _save(figure, Path(path))


def plot_band_transitions(
    episodes: Sequence[Episode], path: str | Path, rules: EmotionRules = SAGE
) -> Path:
    """The transition matrix as an annotated heat map (rows: band before, columns: after)."""
    counts = band_transition_counts([e for e in episodes if e.ok], rules)
    matrix = [[counts[before][after] for after in BAND_ORDER] for before in BAND_ORDER]
    figure = _canvas(5, 4.5)
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    labels = [band.value for band in BAND_ORDER]
    axes.set_xticks(range(len(labels)), labels)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("band after the turn")
    axes.set_ylabel("band before the turn")
    peak = max(max(row) for row in matrix)
    for row, values in enumerate(matrix):
        for column, value in enumerate(values):
            colour = "white" if peak and value > peak / 2 else "black"
            axes.text(column, row, str(value), ha="center", va="center", color=colour)
    figure.colorbar(image, ax=axes)
    axes.set_title("Band transitions")
    return _save(figure, Path(path))


def plot_run_comparison(reports: Mapping[str, BenchmarkReport], path: str | Path) -> Path:
    """Mean final score per run, and success/failure counts per run, side by side."""
    figure = _canvas(max(6, 1.6 * len(reports) + 4), 4)
    score_axes, count_axes = figure.subplots(1, 2)
    names = list(reports)
    positions = range(len(names))
    means = [reports[name].mean_final_score or 0.0 for name in names]
    bars = score_axes.bar(positions, means, color="tab:blue")
    for bar, name in zip(bars, names, strict=True):
        mean = reports[name].mean_final_score
        label = "n/a" if mean is None else f"{mean:.1f}"
        score_axes.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    score_axes.set_xticks(positions, names, rotation=20)
    score_axes.set_ylim(0, 105)
    score_axes.set_ylabel("Sentient score (mean final)")
    width = 0.4
    count_axes.bar(
        [p - width / 2 for p in positions],
        [reports[n].success for n in names],
        width,
        label="success",
        color="tab:green",
    )
    count_axes.bar(
        [p + width / 2 for p in positions],
        [reports[n].failure for n in names],
        width,
        label="failure",
        color="tab:red",
    )
    count_axes.set_xticks(positions, names, rotation=20)
    count_axes.set_ylabel("dialogues")
    _integer_axis(count_axes.yaxis)
    count_axes.legend(fontsize=8)
    figure.suptitle("Run comparison")
    return _save(figure, Path(path))


def load_runs(runs: Runs) -> dict[str, list[Episode]]:
    """Normalise ``runs``: a mapping is taken as is; paths become runs named by file stem."""
    if isinstance(runs, Mapping):
        return {str(name): list(episodes) for name, episodes in runs.items()}
    loaded: dict[str, list[Episode]] = {}
    for item in runs:
        path = Path(item)
        name, suffix = path.stem, 2
        while name in loaded:
            name, suffix = f"{path.stem}-{suffix}", suffix + 1
        loaded[name] = read_episodes(path)
    return loaded


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "run"
    slug, suffix = base, 2
    while slug in taken:
        slug, suffix = f"{base}-{suffix}", suffix + 1
    taken.add(slug)
    return slug


def _transition_table(counts: dict[Band, dict[Band, int]]) -> list[str]:
    header = "| before \\ after | " + " | ".join(band.value for band in BAND_ORDER) + " |"
    lines = [header, "| --- |" + " --- |" * len(BAND_ORDER)]
    for before in BAND_ORDER:
        row = " | ".join(str(counts[before][after]) for after in BAND_ORDER)
        lines.append(f"| {before.value} | {row} |")
    return lines


def write_report(
    runs: Runs, out_dir: str | Path, *, title: str = "Sentient benchmark report"
) -> Path:
    """Write ``report.md`` and its PNG figures into ``out_dir``; returns the report path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_runs(runs)
    if not loaded:
        raise ValueError("write_report needs at least one run")
    reports: dict[str, BenchmarkReport] = {}
    sections: list[str] = []
    taken: set[str] = set()
    for name, episodes in loaded.items():
        rules = run_rules(episodes)
        report = sentient_benchmark(episodes, rules)
        reports[name] = report
        slug = _slug(name, taken)
        figures = {
            "Emotion trajectories": plot_trajectories(
                episodes, out / f"{slug}-trajectories.png", rules
            ),
            "Final-score distribution": plot_final_scores(
                episodes, out / f"{slug}-final-scores.png", rules
            ),
            "Band transitions": plot_band_transitions(
                episodes, out / f"{slug}-transitions.png", rules
            ),
        }
        lines = [
            f"## Run `{name}`",
            "",
            f"Rules: `{rules.name}` (start {rules.initial_score}, "
            f"at most {rules.max_turns} turns).",
            "",
            report.to_markdown(title=None),
        ]
        for caption, figure_path in figures.items():
            lines += [f"### {caption}", "", f"![{caption} of {name}]({figure_path.name})", ""]
            if caption == "Band transitions":
                lines += _transition_table(
                    band_transition_counts([e for e in episodes if e.ok], rules)
                )
                lines.append("")
        sections.append("\n".join(lines))

    comparison = plot_run_comparison(reports, out / "run-comparison.png")
    summary = [
        f"# {title}",
        "",
        "## Comparison",
        "",
        "| run | scored | Sentient score | success | failure | errored | stock lines | trimmed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, report in reports.items():
        mean = "n/a" if report.mean_final_score is None else f"{report.mean_final_score:.2f}"
        summary.append(
            f"| {name} | {report.n_scored} | {mean} | {report.success} | {report.failure} | "
            f"{report.errored} | {report.stock_replies} | {report.trimmed_replies} |"
        )
    summary += ["", f"![Run comparison]({comparison.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(summary) + "\n" + "\n".join(sections), encoding="utf-8")
    return path
