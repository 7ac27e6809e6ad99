"""Does training move the Sentient score? A CPU learning run with a before/after benchmark.

For each algorithm asked for (``--algorithm grpo``, ``--algorithm ppo``, or both) this:

1. benchmarks the starting policy on the test personas (the same simulator as in training,
   SAGE's start score of 40, ``--eval-turns`` agent turns) once per seed in ``--eval-seeds``;
2. trains with the algorithm's CPU configuration (``training/configs/smollm2-cpu-<alg>.yaml``)
   for ``--minutes`` of wall time;
3. benchmarks the trained policy with the same personas, simulator, sampling and seeds;
4. writes the reward curve (``docs/images/learning_cpu_<alg>.png``) and a JSON summary
   (``<output-dir>/learning_cpu.json``), and prints a Markdown table.

Both benchmarks sample the policy exactly as training did (its temperature, no repetition
penalty), so the comparison is of the weights alone. This is an experiment, not a test: it
takes about an hour per algorithm and its outcome is whatever it is.

    python benchmarks/learning_cpu.py --algorithm grpo --minutes 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rlver_agents.builders import (
    ClientPool,
    agent_factory,
    episode_config,
    retry_policy,
    user_factory,
)
from rlver_agents.config import RunConfig
from rlver_agents.emotion import SAGE, EmotionRules
from rlver_agents.episodes.groups import play_groups
from rlver_agents.evaluation.benchmark import sentient_benchmark
from rlver_agents.models.spec import ModelSpec
from rlver_agents.personas import load_split
from training.cli import run as train
from training.config import TrainConfig, load_train_config
from training.rollout import run_config

ROOT = Path(__file__).resolve().parents[1]
METRICS_FILE = "metrics.jsonl"


class SeedScores(BaseModel):
    """Sentient scores of one policy, one entry per evaluation seed."""

    scores: list[float]
    success: list[int]
    failure: list[int]
    errored: list[int]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def spread(self) -> float:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0


class LearningResult(BaseModel):
    algorithm: str
    config: str
    steps: int
    train_minutes: float
    before: SeedScores
    after: SeedScores
    step_times: dict[str, float]
    curve: list[dict[str, float]]


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


async def sentient_per_seed(run: RunConfig, seeds: int, limit: int | None) -> SeedScores:
    """The Sentient score of each of ``seeds`` seeds over the split's (first ``limit``) personas.

    All dialogues run at once so the engine batches them: seed ``k`` is sample ``k`` of every
    persona, whose episode seed derives from the run seed, the persona and ``k`` alone, so
    the before and after benchmarks replay the same seeds.
    """
    personas = load_split(run.personas)[:limit]
    rules: EmotionRules = run.emotion_rules()
    pool = ClientPool()
    try:
        episodes = await play_groups(
            personas,
            seeds,
            agent_factory(run, pool),
            user_factory(run, pool),
            rules,
            len(personas) * seeds,
            run.seed,
            retry=retry_policy(run.timeouts),
            episode_config=episode_config(run),
        )
    finally:
        await pool.close()
    reports = [
        sentient_benchmark([e for e in episodes if e.sample == k], rules) for k in range(seeds)
    ]
    for k, report in enumerate(reports):
        print(f"  seed {k}: Sentient {report.mean_final_score}", flush=True)
    return SeedScores(
        scores=[r.mean_final_score or 0.0 for r in reports],
        success=[r.success for r in reports],
        failure=[r.failure for r in reports],
        errored=[r.errored for r in reports],
    )


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


def run_one(
    algorithm: str, args: argparse.Namespace, baselines: dict[str, SeedScores]
) -> LearningResult:
    """Train one algorithm between two benchmarks.

    ``baselines`` holds the starting policy's scores by evaluation configuration: the
    benchmark is deterministic given the weights and the seeds, so algorithms that start from
    the same policy and sample it the same way share one "before" benchmark.
    """
    config_path = args.config or ROOT / "training" / "configs" / f"smollm2-cpu-{algorithm}.yaml"
    output_dir = args.output_dir / algorithm
    config = load_train_config(
        config_path,
        {
            "output_dir": str(output_dir),
            "max_steps": args.max_steps,
            "time_limit_minutes": args.minutes,
            "resume": False,
        },
    )
    if config.algorithm != algorithm:
        raise SystemExit(f"{config_path} is a {config.algorithm} configuration, not {algorithm}")
    start = Path(config.policy.path())
    start_run = evaluation_config(config, start, args.eval_turns, args.personas)
    key = f"{start_run.model_dump_json()}|{args.eval_seeds}|{args.eval_limit}"
    if key not in baselines:
        print(f"[{algorithm}] benchmarking the starting policy {start}", flush=True)
        baselines[key] = asyncio.run(sentient_per_seed(start_run, args.eval_seeds, args.eval_limit))
    before = baselines[key]
    print(f"[{algorithm}] training for up to {args.minutes} minutes", flush=True)
    clock = time.monotonic()
    final = train(config)
    minutes = (time.monotonic() - clock) / 60
    print(f"[{algorithm}] benchmarking the trained policy {final}", flush=True)
    after = asyncio.run(
        sentient_per_seed(
            evaluation_config(config, final, args.eval_turns, args.personas),
            args.eval_seeds,
            args.eval_limit,
        )
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
        step_times=step_times(metrics),
        curve=[
            {"step": r["step"], "final_score_mean": r["rollout/final_score_mean"]}
            for r in metrics
            if "rollout/final_score_mean" in r
        ],
    )
    (output_dir / "learning_cpu.json").write_text(result.model_dump_json(indent=2))
    return result


def markdown(results: list[LearningResult]) -> str:
    lines = [
        "| algorithm | steps | train min | Sentient before | Sentient after | "
        "success before/after | s per step (rollout / critic / update) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        times = r.step_times
        split = " / ".join(
            f"{times[k]:.0f}" if k in times else "-" for k in ("rollout_s", "critic_s", "update_s")
        )
        lines.append(
            f"| {r.algorithm} | {r.steps} | {r.train_minutes:.0f} | "
            f"{r.before.mean:.1f} ± {r.before.spread:.1f} | {r.after.mean:.1f} ± "
            f"{r.after.spread:.1f} | {sum(r.before.success)}/{sum(r.after.success)} | {split} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithm", action="append", choices=["grpo", "ppo"])
    parser.add_argument("--config", type=Path, help="Overrides the algorithm's CPU config.")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--max-steps", type=int, default=10_000)
    parser.add_argument("--eval-seeds", type=int, default=2, help="Seeds per persona.")
    parser.add_argument("--eval-turns", type=int, default=4)
    parser.add_argument("--personas", default="test")
    parser.add_argument("--eval-limit", type=int, help="Only the split's first N personas.")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "runs" / "learning-cpu")
    parser.add_argument("--images", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    baselines: dict[str, SeedScores] = {}
    results = [run_one(algorithm, args, baselines) for algorithm in args.algorithm or ["grpo"]]
    print(markdown(results))


if __name__ == "__main__":
    main()
