"""How well an appraiser agrees with the corpus labels: the figures behind ``rlver-judge``.

A class's value for a persona is the mean change (rounded, clipped to +-10 as SAGE applies it)
of that persona's rows of the class; a class's figure is the mean of those over personas, and
its gain share the share of personas whose mean is above zero, as in the issue's targets and
the probes of ``benchmarks/``.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from rlver_agents.appraisers.corpus import (
    CATEGORIES,
    NON_ENGAGING,
    Category,
    CorpusRow,
    corpus_path,
    load_corpus,
)
from rlver_agents.personas import Persona, load_split

TARGETS: dict[str, str] = {
    "spearman": ">= 0.70",
    "fitting": "mean >= +4, gaining for >= 90% of personas",
    "generic_warmth": "mean > 0 and below fitting",
    "nonsense": "mean <= -3, gaining for <= 10%",
    "recital": "mean <= -3, gaining for <= 10%",
    "off_topic": "mean <= -3, gaining for <= 10%",
    "filler": "mean <= -1",
    "dismissive": "mean <= -5",
    "trigger": "mean <= -5",
    "flattery": "mean <= -3, gaining for <= 10%",
    "relief": "mean <= -3, gaining for <= 10%",
    "fake_appraisal": "mean <= -3, gaining for <= 10%",
    "fitting above non-engaging": ">= 90% of personas",
}


def applied(change: float) -> int:
    """A prediction as SAGE applies it: rounded, clipped to +-10."""
    return max(-10, min(10, round(change)))


class ClassFigure(BaseModel):
    rows: int
    label_mean: float
    mean: float
    gaining: float


class Agreement(BaseModel):
    """One appraiser against the labels of one set of rows."""

    rows: int
    personas: int
    spearman: float
    pearson: float
    mae: float
    within_2: float
    classes: dict[str, ClassFigure]
    fitting_above_non_engaging: float

    def render(self, title: str) -> str:
        lines = [
            f"{title}: {self.rows} rows, {self.personas} personas",
            f"  spearman {self.spearman:.3f}  pearson {self.pearson:.3f}  "
            f"MAE {self.mae:.2f}  within +-2 {self.within_2:.0%}  "
            f"fitting above every non-engaging reply for {self.fitting_above_non_engaging:.0%} "
            "of personas",
            f"  {'class':18s} {'rows':>5s} {'label':>7s} {'judge':>7s} {'gaining':>8s}",
        ]
        for name, figure in self.classes.items():
            lines.append(
                f"  {name:18s} {figure.rows:5d} {figure.label_mean:+7.2f} {figure.mean:+7.2f} "
                f"{figure.gaining:8.0%}"
            )
        return "\n".join(lines)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation, ties given their mean rank."""
    return statistics.correlation(_ranks(a), _ranks(b))


def agreement(rows: Sequence[CorpusRow], predicted: Sequence[float]) -> Agreement:
    """``predicted`` (unrounded changes, one per row) against the rows' labels."""
    changes = [applied(p) for p in predicted]
    labels = [r.change for r in rows]
    per: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    label_per: dict[str, list[int]] = defaultdict(list)
    for row, change in zip(rows, changes, strict=True):
        per[row.category][row.persona_id].append(change)
        label_per[row.category].append(row.change)
    classes: dict[str, ClassFigure] = {}
    for name in CATEGORIES:
        if name not in per:
            continue
        means = [statistics.fmean(v) for v in per[name].values()]
        classes[name] = ClassFigure(
            rows=len(label_per[name]),
            label_mean=statistics.fmean(label_per[name]),
            mean=statistics.fmean(means),
            gaining=sum(m > 0 for m in means) / len(means),
        )
    personas = sorted({r.persona_id for r in rows})
    separated = []
    for persona in personas:
        fitting = per["fitting"].get(persona, []) if "fitting" in per else []
        idle = [c for name in NON_ENGAGING for c in per.get(name, {}).get(persona, [])]
        if fitting and idle:
            separated.append(min(fitting) > max(idle))
    return Agreement(
        rows=len(rows),
        personas=len(personas),
        spearman=spearman(labels, list(predicted)),
        pearson=statistics.correlation([float(x) for x in labels], list(predicted)),
        mae=statistics.fmean(abs(c - label) for c, label in zip(changes, labels, strict=True)),
        within_2=statistics.fmean(
            abs(c - label) <= 2 for c, label in zip(changes, labels, strict=True)
        ),
        classes=classes,
        fitting_above_non_engaging=statistics.fmean(separated) if separated else 0.0,
    )


def predict_rows(
    rows: Sequence[CorpusRow],
    personas: dict[str, Persona],
    *,
    weights_path: Path | None = None,
) -> list[float]:
    """The learned judge's unrounded changes for ``rows``."""
    from rlver_agents.appraisers.learned_appraiser import LearnedAppraiser, judge_pair

    judge = LearnedAppraiser(weights_path)
    return judge.predict_pairs(
        [judge_pair(personas[r.persona_id], r.history, r.reply) for r in rows]
    )


def embedding_rows(rows: Sequence[CorpusRow], personas: dict[str, Persona]) -> list[float]:
    """The embedding appraiser's points for ``rows`` (one encoder call per dialogue)."""
    from rlver_agents.appraisers.embedding_appraiser import EmbeddingAppraiser

    appraiser = EmbeddingAppraiser()
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        groups[(row.persona_id, row.history)].append(index)
    out = [0.0] * len(rows)
    for (persona_id, history), indices in groups.items():
        scores = appraiser.scores_many(
            personas[persona_id], [rows[i].reply for i in indices], history
        )
        for i, score in zip(indices, scores, strict=True):
            out[i] = score.points
    return out


class SecondLabel(BaseModel):
    """A blind second label of one corpus row (``second_labels.jsonl``)."""

    id: str
    change: int = Field(ge=-10, le=10)
    category: Category


class LabelAgreement(BaseModel):
    """How two labellers of the same rows agree."""

    rows: int
    share_of_corpus: float
    spearman: float
    exact: float
    within_1: float
    within_2: float
    same_sign: float
    mean_abs_difference: float
    same_category: float

    def render(self) -> str:
        return (
            f"second labels: {self.rows} rows ({self.share_of_corpus:.1%} of the corpus), "
            f"spearman {self.spearman:.3f}, exact {self.exact:.0%}, within +-1 "
            f"{self.within_1:.0%}, within +-2 {self.within_2:.0%}, same sign "
            f"{self.same_sign:.0%}, mean |difference| {self.mean_abs_difference:.2f}, "
            f"same class {self.same_category:.0%}"
        )


def label_agreement() -> LabelAgreement:
    """The shipped second labels against the first labels of the same rows."""
    rows = {r.id: r for split in ("train", "validation") for r in load_corpus(split)}  # type: ignore[arg-type]
    path = corpus_path("train").with_name("second_labels.jsonl")
    second = [SecondLabel.model_validate_json(line) for line in path.read_text().splitlines()]
    first = [rows[s.id] for s in second]
    pairs = [(f.change, s.change) for f, s in zip(first, second, strict=True)]
    return LabelAgreement(
        rows=len(second),
        share_of_corpus=len(second) / len(rows),
        spearman=spearman([a for a, _ in pairs], [b for _, b in pairs]),
        exact=statistics.fmean(a == b for a, b in pairs),
        within_1=statistics.fmean(abs(a - b) <= 1 for a, b in pairs),
        within_2=statistics.fmean(abs(a - b) <= 2 for a, b in pairs),
        same_sign=statistics.fmean((a > 0) == (b > 0) and (a < 0) == (b < 0) for a, b in pairs),
        mean_abs_difference=statistics.fmean(abs(a - b) for a, b in pairs),
        same_category=statistics.fmean(
            f.category == s.category for f, s in zip(first, second, strict=True)
        ),
    )


class ValidationReport(BaseModel):
    learned: Agreement
    embedding: Agreement | None = None
    targets: dict[str, str] = TARGETS

    def render(self) -> str:
        parts = [self.learned.render("learned judge, validation (22 test personas)")]
        if self.embedding is not None:
            parts.append(self.embedding.render("embedding appraiser, same rows"))
        return "\n\n".join(parts)


def validation_report(
    *, weights_path: Path | None = None, with_embedding: bool = True
) -> ValidationReport:
    """Both appraisers on the validation rows (the test personas, never trained on)."""
    personas = {p.id: p for p in load_split("test")}
    rows = load_corpus("validation")
    learned = agreement(rows, predict_rows(rows, personas, weights_path=weights_path))
    embedding = agreement(rows, embedding_rows(rows, personas)) if with_embedding else None
    return ValidationReport(learned=learned, embedding=embedding)
