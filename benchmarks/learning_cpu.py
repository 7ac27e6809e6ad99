"""Does training move the Sentient score? A CPU learning run with a before/after benchmark.

For each algorithm asked for (``--algorithm grpo``, ``--algorithm ppo``, or both) this:

1. trains with the algorithm's CPU configuration (``training/configs/smollm2-cpu-<alg>.yaml``)
   for ``--minutes`` of wall time;
2. benchmarks the starting policy on the test personas (the simulator of the training
   configuration, SAGE's rules cut to ``--eval-turns`` agent turns), ``--eval-seeds`` dialogues
   per persona (``--before-only`` does just this, so a second process can do it while the
   first trains);
3. benchmarks the trained policy on the same personas, simulator, sampling and seeds;
4. prints the mean of each seed, the paired difference with a 95% bootstrap interval (personas
   resampled, each keeping all its seeds), and writes the reward curve
   (``docs/images/learning_cpu_<alg>.png``) and a JSON summary (``<output-dir>/<alg>/result.json``).

Both benchmarks sample the policy exactly as training did (its temperature, stop string and
cap, no repetition penalty), so the comparison is of the weights alone. Every stage is kept on
disk, so a run that stops is started again with the same command: the benchmarks' episodes
(``before-<key>.jsonl``, ``<alg>/after.jsonl``) are reused, training resumes from its last
checkpoint, and a finished stage is not run again. Processes share the starting policy's
benchmark through a lock. A benchmark's file is written as its dialogues end; a run that finds
errored dialogues in it plays only those again (the collector's resume). Errored dialogues are
counted and their commonest reasons printed, never scored; when every dialogue of a benchmark
errors, the script says why and exits with status 1.

    python benchmarks/learning_cpu.py --algorithm grpo --minutes 60
    python benchmarks/learning_cpu.py --algorithm grpo --minutes 60 \
        --config training/configs/smollm2-cpu-grpo-4turn.yaml --policy runs/x/grpo/final
    python benchmarks/learning_cpu.py --quick          # a smoke run of a few minutes

This is an experiment, not a test: its outcome is whatever it is.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rlver_agents.builders import (
    ClientPool,
    agent_factory,
    engine_rounds,
    episode_config,
    retry_policy,
    user_factory,
)
from rlver_agents.config import RunConfig
from rlver_agents.emotion import SAGE
from rlver_agents.episodes.collector import CampaignSummary, CollectorConfig, TrajectoryCollector
from rlver_agents.episodes.episode import Episode
from rlver_agents.episodes.episode_file import read_episodes
from rlver_agents.evaluation.benchmark import common_errors, final_score_of
from rlver_agents.models.spec import ModelSpec
from rlver_agents.personas import Persona, load_split
from training.cli import run as train
from training.config import TrainConfig, load_train_config
from training.policy import FINAL_DIR, METRICS_FILE
from training.rollout import run_config
from training.warmup_config import WARMUP_DIR

ROOT = Path(__file__).resolve().parents[1]
RESAMPLES = 10_000


class Scores(BaseModel):
    """One policy's benchmark: the final score of every (persona, seed) dialogue that ended.

    An errored dialogue has no score; it is counted, never scored as 0.
    """

    finals: dict[str, float]
    """``"<persona>|<seed>"`` to the final emotion."""
    errored: list[str]
    seeds: int

    @classmethod
    def of(cls, episodes: list[Episode], seeds: int) -> Scores:
        return cls(
            finals={
                f"{e.persona_id}|{e.sample}": float(final_score_of(e)) for e in episodes if e.ok
            },
            errored=[f"{e.persona_id}|{e.sample}" for e in episodes if not e.ok],
            seeds=seeds,
        )

    def seed_means(self) -> list[float]:
        """Each seed's mean; NaN for a seed none of whose dialogues was scored."""
        means = []
        for seed in range(self.seeds):
            values = [v for k, v in self.finals.items() if k.endswith(f"|{seed}")]
            means.append(statistics.fmean(values) if values else math.nan)
        return means

    @property
    def mean(self) -> float:
        return statistics.fmean(self.finals.values())

    def count(self, low: float, high: float) -> int:
        return sum(low <= v < high for v in self.finals.values())


class Difference(BaseModel):
    """After minus before over the dialogues both benchmarks scored."""

    mean: float
    low: float
    high: float
    pairs: int


def paired_difference(before: Scores, after: Scores, seed: int = 0) -> Difference:
    """The mean paired difference and its 95% percentile bootstrap interval.

    Personas are the resampled unit (each keeps all its seeds): a persona's dialogues share
    its opening and hidden need, so they are not independent of each other.
    """
    shared = sorted(set(before.finals) & set(after.finals))
    by_persona: dict[str, list[float]] = {}
    for key in shared:
        by_persona.setdefault(key.split("|")[0], []).append(after.finals[key] - before.finals[key])
    groups = list(by_persona.values())
    rng = random.Random(seed)
    draws = []
    for _ in range(RESAMPLES):
        picked = [groups[rng.randrange(len(groups))] for _ in groups]
        draws.append(statistics.fmean(d for group in picked for d in group))
    draws.sort()
    return Difference(
        mean=statistics.fmean(d for group in groups for d in group),
        low=draws[int(0.025 * RESAMPLES)],
        high=draws[int(0.975 * RESAMPLES) - 1],
        pairs=len(shared),
    )


class LearningResult(BaseModel):
    algorithm: str
    config: str
    steps: int
    train_minutes: float
    before: Scores
    after: Scores
    difference: Difference
    step_times: dict[str, float]
    curve: list[dict[str, float]]
    warmed: Scores | None = None
    """The policy after the supervised warm-up alone, when the config has ``warmup:``."""
    warm_difference: Difference | None = None


def evaluation_config(config: TrainConfig, policy: Path, turns: int, personas: str) -> RunConfig:
    """``rlver eval``'s run configuration for ``policy``: the rollouts' agent and simulator,
    the checkpoint sampled as in training, SAGE's rules cut to ``turns`` agent turns."""
    rollouts = run_config(config)
    model = ModelSpec(
        kind="local",
        model=str(policy),
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        max_new_tokens=config.rollout.max_new_tokens,
        stop=config.rollout.stop,
        extra_body=(
            {"chat_template_kwargs": config.policy.chat_template_kwargs}
            if config.policy.chat_template_kwargs
            else {}
        ),
    )
    return rollouts.model_copy(
        update={
            "agent": rollouts.agent.model_copy(update={"model": model}),
            "rules": SAGE.model_copy(update={"name": f"sage-{turns}", "max_turns": turns}),
            "personas": personas,
        }
    )


class BenchmarkFailed(RuntimeError):
    """Every dialogue of a benchmark errored: there is no score to report."""


async def _collect(
    run: RunConfig, personas: list[Persona], seeds: int, path: Path
) -> CampaignSummary:
    """Play into ``path`` every (persona, seed) it lacks or holds only as errored, all at once
    so the engines batch them. Seed ``k`` is sample ``k`` of every persona, whose episode seed
    derives from the run seed, the persona and ``k`` alone: both benchmarks replay the same
    seeds, and a replayed errored dialogue gets the seed it would have had."""
    pool = ClientPool()
    collector = TrajectoryCollector(
        CollectorConfig(
            output=path,
            samples_per_persona=seeds,
            concurrency=len(personas) * seeds,
            rules=run.emotion_rules(),
            seed=run.seed,
            retry=retry_policy(run.timeouts),
            error_retries=1,
            progress=False,
        ),
        user_factory=user_factory(run, pool),
        agent_factory=agent_factory(run, pool),
        episode_config=episode_config(run),
        rounds=engine_rounds(run),
    )
    try:
        return await collector.run(personas)
    finally:
        await pool.close()


def benchmark(run: RunConfig, seeds: int, limit: int | None, path: Path) -> Scores:
    """The benchmark's scores over the split's first ``limit`` personas × ``seeds``.

    ``path`` keeps the dialogues; under a lock (a second process waits for the first instead of
    playing the same dialogues) the ones it lacks or holds as errored are played, and only
    those. Raises :class:`BenchmarkFailed` when no dialogue has a score.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    personas = load_split(run.personas)[:limit]
    keys = {(p.id, k) for p in personas for k in range(seeds)}
    with path.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = {e.key for e in read_episodes(path) if e.ok} if path.is_file() else set()
        if keys - done:
            clock = time.monotonic()
            summary = asyncio.run(_collect(run, personas, seeds, path))
            print(
                f"  {summary.ran} dialogues played in {time.monotonic() - clock:.0f} s "
                f"({summary.skipped} already in {path.name})",
                flush=True,
            )
    episodes = [e for e in read_episodes(path) if e.key in keys]
    scores = Scores.of(episodes, seeds)
    if scores.errored:
        print(f"  {len(scores.errored)} of {len(keys)} dialogues errored:", flush=True)
        for error in common_errors(episodes):
            print(f"    {error.count} × {error.reason}", flush=True)
    if not scores.finals:
        reasons = common_errors(episodes, top=1)
        why = f"; {reasons[0].count} with: {reasons[0].reason}" if reasons else ""
        raise BenchmarkFailed(
            f"all {len(keys)} dialogues of the benchmark in {path} errored{why}. Running the "
            "command again plays them again."
        )
    for seed, mean in enumerate(scores.seed_means()):
        print(f"  seed {seed}: Sentient {mean:.2f}", flush=True)
    return scores


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def step_times(metrics: list[dict[str, Any]]) -> dict[str, float]:
    """Mean seconds per optimizer step of every ``time/...`` metric the trainer logged."""
    names = sorted({k for row in metrics for k in row if k.startswith("time/")})
    return {
        name.removeprefix("time/"): statistics.fmean(float(r[name]) for r in metrics if name in r)
        for name in names
    }


def plot_curve(metrics: list[dict[str, Any]], algorithm: str, path: Path) -> Path:
    """The rollouts' mean final score per step, with a moving average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in metrics if "rollout/final_score_mean" in r]
    steps = [int(r["step"]) for r in rows]
    scores = [float(r["rollout/final_score_mean"]) for r in rows]
    window = 5
    smooth = [statistics.fmean(scores[max(0, i - window + 1) : i + 1]) for i in range(len(scores))]
    figure, axis = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    axis.plot(steps, scores, marker=".", alpha=0.5, label="mean final score of the step")
    axis.plot(steps, smooth, label=f"moving average ({window} steps)")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("final emotion score (training rules)")
    axis.set_title(f"{algorithm.upper()} on SmolLM2-135M, offline simulator (CPU)")
    axis.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def trained_policy(config: TrainConfig, minutes: float) -> tuple[Path, float]:
    """Train (resuming from the last checkpoint), once: a finished run is not trained again."""
    marker = config.output_dir / "trained.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        return Path(done["policy"]), float(done["minutes"])
    clock = time.monotonic()
    final = train(config)
    spent = (time.monotonic() - clock) / 60
    marker.write_text(json.dumps({"policy": str(final), "minutes": spent}))
    return final, spent


SIMULATOR_SOURCES = (
    "appraisers",
    "agents",
    "evaluation",
    "prompts",
    "data",
    "emotion.py",
    "personas.py",
    "repetition.py",
)
"""What plays and scores a benchmark dialogue, under ``rlver_agents``: its code, prompts and
personas."""


def simulator_source() -> str:
    """A digest of what plays and scores a dialogue, so a changed appraiser, user prompt or
    persona never reuses a starting benchmark made with the old one."""
    package = ROOT / "rlver_agents"
    digest = hashlib.sha256()
    for name in SIMULATOR_SOURCES:
        where = package / name
        for path in sorted(where.rglob("*")) if where.is_dir() else [where]:
            if path.is_file() and path.suffix != ".pyc":
                digest.update(path.relative_to(package).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def run_one(algorithm: str, args: argparse.Namespace) -> LearningResult | None:
    """Train, then benchmark the starting and the trained policy (only the starting one with
    ``--before-only``)."""
    config_path = args.config or ROOT / "training" / "configs" / f"smollm2-cpu-{algorithm}.yaml"
    output_dir = args.output_dir / algorithm
    config = load_train_config(
        config_path,
        {
            "output_dir": str(output_dir),
            "max_steps": args.max_steps,
            "time_limit_minutes": args.minutes,
            "resume": True,
        },
    )
    if config.algorithm != algorithm:
        raise SystemExit(f"{config_path} is a {config.algorithm} configuration, not {algorithm}")
    if args.policy is not None:  # a later stage starts from an earlier stage's checkpoint
        config = config.model_copy(
            update={"policy": config.policy.model_copy(update={"model": str(args.policy)})}
        )
    start = Path(config.policy.path())
    start_run = evaluation_config(config, start, args.eval_turns, args.personas)
    identity = f"{start_run.model_dump_json()}|{args.eval_seeds}|{args.eval_limit}"
    key = hashlib.sha256(f"{identity}|{simulator_source()}".encode()).hexdigest()[:12]
    before_file = args.output_dir / f"before-{key}.jsonl"
    if not args.before_only:  # the starting policy's benchmark does not depend on training
        print(f"[{algorithm}] training for up to {args.minutes} minutes", flush=True)
        final, minutes = trained_policy(config, args.minutes)
    print(f"[{algorithm}] benchmarking the starting policy {start}", flush=True)
    before = benchmark(start_run, args.eval_seeds, args.eval_limit, before_file)
    if args.before_only:
        return None
    print(f"[{algorithm}] benchmarking the trained policy {final}", flush=True)
    after = benchmark(
        evaluation_config(config, final, args.eval_turns, args.personas),
        args.eval_seeds,
        args.eval_limit,
        output_dir / "after.jsonl",
    )
    warmed = None
    if config.warmup is not None:
        print(f"[{algorithm}] benchmarking the warmed-up policy", flush=True)
        warmed = benchmark(
            evaluation_config(
                config, output_dir / WARMUP_DIR / FINAL_DIR, args.eval_turns, args.personas
            ),
            args.eval_seeds,
            args.eval_limit,
            output_dir / "warmed.jsonl",
        )
    metrics = read_metrics(output_dir)
    plot_curve(metrics, algorithm, args.images / f"learning_cpu_{algorithm}.png")
    result = LearningResult(
        algorithm=algorithm,
        config=str(config_path),
        steps=max((int(r["step"]) for r in metrics), default=0),
        train_minutes=minutes,
        before=before,
        after=after,
        difference=paired_difference(before, after),
        step_times=step_times(metrics),
        curve=[
            {"step": r["step"], "final_score_mean": r["rollout/final_score_mean"]}
            for r in metrics
            if "rollout/final_score_mean" in r
        ],
        warmed=warmed,
        warm_difference=None if warmed is None else paired_difference(before, warmed),
    )
    (output_dir / "result.json").write_text(result.model_dump_json(indent=2))
    return result


def markdown(results: list[LearningResult]) -> str:
    lines = [
        "| algorithm | steps | train min | Sentient before | Sentient after | each seed before "
        "→ after | difference [95% CI] | success / failure before → after | errored |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if r.warmed is not None and r.warm_difference is not None:
            lines.append(
                _row(f"{r.algorithm}: warm-up only", "-", "", r.before, r.warmed, r.warm_difference)
            )
        lines.append(
            _row(
                r.algorithm, str(r.steps), f"{r.train_minutes:.0f}", r.before, r.after, r.difference
            )
        )
    return "\n".join(lines)


def _row(name: str, steps: str, minutes: str, before: Scores, after: Scores, d: Difference) -> str:
    seeds = ", ".join(
        f"{b:.1f}→{a:.1f}" for b, a in zip(before.seed_means(), after.seed_means(), strict=True)
    )
    return (
        f"| {name} | {steps} | {minutes} | {before.mean:.2f} | {after.mean:.2f} | {seeds} | "
        f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}] ({d.pairs} pairs) | "
        f"{before.count(100, 101)}/{before.count(0, 10)} → {after.count(100, 101)}/"
        f"{after.count(0, 10)} | {len(before.errored)} → {len(after.errored)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithm", action="append", choices=["grpo", "ppo"])
    parser.add_argument("--config", type=Path, help="Overrides the algorithm's CPU config.")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--max-steps", type=int, default=10_000)
    parser.add_argument("--eval-seeds", type=int, default=4, help="Dialogues per persona.")
    parser.add_argument("--eval-turns", type=int, default=4)
    parser.add_argument("--personas", default="test")
    parser.add_argument("--eval-limit", type=int, help="Only the split's first N personas.")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own).")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke run: 4 personas, 1 seed, 2 training steps, into runs/learning-cpu-quick.",
    )
    parser.add_argument(
        "--before-only",
        action="store_true",
        help="Only benchmark the starting policy: a second process can do it while the first "
        "trains (the trainer then finds it done).",
    )
    parser.add_argument(
        "--policy",
        type=Path,
        help="Start from this checkpoint instead of the config's policy.model (a later stage "
        "from an earlier one); it is also the policy benchmarked before.",
    )
    parser.add_argument("--output-dir", type=Path)
    parser.add_argument("--images", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    if args.quick:
        args.eval_limit, args.eval_seeds, args.max_steps = 4, 1, 2
        args.images = args.output_dir or ROOT / "runs" / "learning-cpu-quick"
    args.output_dir = args.output_dir or ROOT / "runs" / (
        "learning-cpu-quick" if args.quick else "learning-cpu"
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        results = [run_one(algorithm, args) for algorithm in args.algorithm or ["grpo"]]
    except BenchmarkFailed as failed:
        print(f"error: {failed}", file=sys.stderr, flush=True)
        sys.exit(1)
    done = [result for result in results if result is not None]
    if done:
        print(markdown(done))


if __name__ == "__main__":
    main()
