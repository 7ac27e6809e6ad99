"""Does the local benchmark survive a loaded machine? The 4-turn benchmark beside CPU hogs.

Plays the learning benchmark's starting-policy benchmark (``learning_cpu.py``: the CPU GRPO
configuration's simulator and judge, the embedded SmolLM2 sampled as in training, SAGE's rules
cut to ``--turns`` agent turns) on the 22 test personas × ``--seeds``, all dialogues at once,
while ``--competitors`` processes each keep a core busy with float32 matrix products, as other
jobs on a shared workstation do. The turn deadline is the shipped one (``timeouts.turn_s``).

It prints, from one run:

- dialogues planned, scored, errored (with the commonest reasons) and lost (planned, but not
  in the episode file);
- wall time; the longest turn and how much of it waited in the engine's queue (which the turn
  deadline does not count); how many turns ran longer than the deadline in wall time, which a
  deadline counting the queue would have failed;
- the CPU each competitor got (a share of one core) and the benchmark's own CPU over its wall
  time, so the load is measured, not assumed.

    python benchmarks/load_test.py [--competitors 2] [--seeds 4] [--turns 4] [--limit N]

An experiment, not a test: the episode file is kept in ``--output-dir`` (one per run).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from learning_cpu import BenchmarkFailed, benchmark, evaluation_config
from pydantic import BaseModel

from rlver_agents.episodes.episode_file import read_episodes
from rlver_agents.evaluation.benchmark import ErrorCount, common_errors
from rlver_agents.personas import load_split
from training.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "training" / "configs" / "smollm2-cpu-grpo.yaml"
HOG = (
    "import torch\n"
    "torch.set_num_threads(1)\n"
    "a = torch.randn(512, 512)\n"
    "while True:\n"
    "    a = torch.tanh(a @ a)\n"
)
"""One core's worth of work that never ends: a competitor process."""


class LoadResult(BaseModel):
    planned: int
    scored: int
    errored: int
    lost: int
    completed_share: float
    reasons: list[ErrorCount]
    wall_s: float
    turn_deadline_s: float | None
    turns: int
    longest_turn_s: float
    longest_turn_queued_s: float
    turns_over_deadline: int
    """Turns whose wall time exceeded the turn deadline: each one would have failed its
    dialogue had the deadline counted the engine's queue."""
    queued_share: float
    """Of all turns' wall time, the share their calls spent in an engine's queue."""
    competitors: int
    competitor_core_share: float
    """CPU seconds the competitors got, over their wall time and their number."""
    benchmark_cpu_share: float
    """This process's CPU seconds over the wall time (2.0 would be both cores)."""


def run(args: argparse.Namespace) -> LoadResult:
    config = load_train_config(CONFIG)
    evaluation = evaluation_config(config, Path(config.policy.path()), args.turns, args.personas)
    personas = load_split(args.personas)[: args.limit]
    planned = len(personas) * args.seeds
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = args.output_dir / f"episodes-{stamp}.jsonl"
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.competitors)]
    wall = time.monotonic()
    cpu = time.process_time()
    try:
        time.sleep(2.0)  # the competitors are running before the first dialogue starts
        try:
            benchmark(evaluation, args.seeds, args.limit, path)
        except BenchmarkFailed as failed:
            print(f"every dialogue errored: {failed}", flush=True)
    finally:
        for hog in hogs:
            hog.terminate()
        for hog in hogs:
            hog.wait()
    wall_s = time.monotonic() - wall
    cpu_s = time.process_time() - cpu
    hog_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    episodes = read_episodes(path) if path.is_file() else []
    keys = {(p.id, k) for p in personas for k in range(args.seeds)}
    recorded = [e for e in episodes if e.key in keys]
    scored = sum(e.ok for e in recorded)
    turns = [t for e in recorded for t in e.turns if t.duration_s is not None]
    longest = max(turns, key=lambda t: t.duration_s or 0.0, default=None)
    deadline = evaluation.timeouts.turn_s
    return LoadResult(
        planned=planned,
        scored=scored,
        errored=len(recorded) - scored,
        lost=len(keys - {e.key for e in recorded}),
        completed_share=scored / planned,
        reasons=common_errors(recorded),
        wall_s=wall_s,
        turn_deadline_s=deadline,
        turns=len(turns),
        longest_turn_s=(longest.duration_s or 0.0) if longest else 0.0,
        longest_turn_queued_s=(longest.queued_s or 0.0) if longest else 0.0,
        turns_over_deadline=sum((t.duration_s or 0.0) > (deadline or float("inf")) for t in turns),
        queued_share=sum(t.queued_s or 0.0 for t in turns)
        / max(sum(t.duration_s or 0.0 for t in turns), 1e-9),
        competitors=args.competitors,
        competitor_core_share=(hog_cpu.ru_utime + hog_cpu.ru_stime)
        / max(wall_s * max(args.competitors, 1), 1e-9),
        benchmark_cpu_share=cpu_s / wall_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--competitors", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--personas", default="test")
    parser.add_argument("--limit", type=int, help="Only the split's first N personas.")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "runs" / "load-test")
    args = parser.parse_args()
    result = run(args)
    print(result.model_dump_json(indent=2))
    print(
        f"\n{result.scored} of {result.planned} dialogues scored "
        f"({100 * result.completed_share:.1f}%), {result.errored} errored, {result.lost} lost; "
        f"{result.wall_s / 60:.1f} min wall beside {result.competitors} competitor(s), each "
        f"getting {result.competitor_core_share:.2f} of a core; the benchmark used "
        f"{result.benchmark_cpu_share:.2f} cores.\nLongest turn {result.longest_turn_s:.0f} s, "
        f"{result.longest_turn_queued_s:.0f} s of it queued; {result.turns_over_deadline} of "
        f"{result.turns} turns ran past the {result.turn_deadline_s} s deadline in wall time; "
        f"{100 * result.queued_share:.0f}% of all turn time was queue wait."
    )
    if result.completed_share < 0.95 or result.lost:
        sys.exit(1)


if __name__ == "__main__":
    main()
