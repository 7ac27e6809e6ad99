"""The CPU GRPO step, side by side in one run: the sampler (the exact float32 policy or its
bfloat16 copy) and the batching of multi-turn rollouts (drifting or in rounds), each phase
against its floor.

Five configurations train for ``--steps`` optimizer steps each, alternating over
``--repeats`` (``--modes`` picks some):

- **one-turn, exact** and **one-turn, bfloat16**: ``training/configs/smollm2-cpu-grpo.yaml``
  with ``rollout.sampler`` set to ``exact`` (the float32 policy samples) and ``bfloat16`` (a
  bfloat16 copy samples and TRL's truncated importance weight corrects the gap);
- **4-turn, exact, drifting**: ``training/configs/smollm2-cpu-grpo-4turn.yaml`` (four appraised
  agent turns, the user's voice answering each) with ``rollout.rounds`` off: each engine
  batches whatever has queued, and the dialogues drift into small batches;
- **4-turn, exact** and **4-turn, bfloat16**: the same config as shipped, in rounds (each turn
  of the running dialogues decodes as one batch), with either sampler.

For each, every phase's time is split out and set against the machine's floor, measured in the
same process: the FLOPs of the tokens the phase processed divided by the matmul throughput
(``speed_floor.measure_floor``, 512 rows) in the phase's dtype.

- policy prefill and decode, and the user's voice: the engines' own split and token counts
  (``speed_floor.count_flops``), against the floor of the engine's dtype;
- the appraiser: the encoder's time and the tokens it encoded (2 × its linear parameters per
  token);
- the update: the trainer's ``time/update_s`` and the tokens of the batch (forward and backward
  are 3 forwards; one more with gradient checkpointing, which recomputes the forward). The
  correction adds no pass: its old logprobs are the loss's own float32 forward.

Phases overlap (the engines run in threads), so their times need not add up to the step. The
probe wraps ``Engine.__init__`` (to collect the engines) and the appraiser's encoder call (to
time it and count its tokens); nothing else is changed.

    python benchmarks/step_time.py [--steps 1] [--repeats 1] [--modes "4-turn, exact" ...]

Results: docs/benchmarks.md ("The training step against its floor").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from speed_floor import count_flops, measure_floor

from rlver_agents.appraisers.embedding_appraiser import EmbeddingAppraiser, load_model
from rlver_agents.appraisers.learned_appraiser import _Judge
from rlver_agents.models.engine import Engine, EngineStats
from training.cli import run as train
from training.config import TrainConfig, load_train_config
from training.policy import METRICS_FILE

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"
STAGES = {"one-turn": "smollm2-cpu-grpo.yaml", "4-turn": "smollm2-cpu-grpo-4turn.yaml"}
MODES: dict[str, tuple[str, str, bool]] = {
    "one-turn, exact": ("one-turn", "exact", True),
    "one-turn, bfloat16": ("one-turn", "bfloat16", True),
    "4-turn, exact, drifting": ("4-turn", "exact", False),
    "4-turn, exact": ("4-turn", "exact", True),
    "4-turn, bfloat16": ("4-turn", "bfloat16", True),
}
"""Name: (stage, ``rollout.sampler``, ``rollout.rounds``)."""
COMPARISONS = (
    ("one-turn, exact", "one-turn, bfloat16"),
    ("4-turn, exact, drifting", "4-turn, exact"),
    ("4-turn, exact", "4-turn, bfloat16"),
)


class Probe:
    """Collects what the phases did: every engine built, and the appraiser's encoder calls
    (the learned judge's or the embedding appraiser's, whichever the config uses; both are
    all-MiniLM-L6-v2, so one floor serves)."""

    def __init__(self) -> None:
        self.engines: list[Engine] = []
        self.encode_s = 0.0
        self.encode_tokens = 0
        probe = self
        build = Engine.__init__

        def tracked_init(engine: Engine, *args: Any, **kwargs: Any) -> None:
            build(engine, *args, **kwargs)
            probe.engines.append(engine)

        encode = EmbeddingAppraiser._encode

        def timed_encode(appraiser: EmbeddingAppraiser, texts: Any) -> Any:
            model = load_model(appraiser._model_path)
            probe.encode_tokens += sum(
                len(ids) for ids in model.tokenizer(list(texts))["input_ids"]
            )
            began = time.perf_counter()
            try:
                return encode(appraiser, texts)
            finally:
                probe.encode_s += time.perf_counter() - began

        predict = _Judge.predict

        def timed_predict(judge: _Judge, pairs: Any, batch_size: int = 32) -> list[float]:
            probe.encode_tokens += sum(
                len(ids)
                for ids in judge.tokenizer([a for a, _ in pairs], [b for _, b in pairs])[
                    "input_ids"
                ]
            )
            began = time.perf_counter()
            try:
                return predict(judge, pairs, batch_size)
            finally:
                probe.encode_s += time.perf_counter() - began

        Engine.__init__ = tracked_init  # type: ignore[method-assign]
        EmbeddingAppraiser._encode = timed_encode  # type: ignore[method-assign]
        _Judge.predict = timed_predict  # type: ignore[method-assign]

    def reset(self) -> None:
        for engine in self.engines:
            engine.stats = EngineStats()
        self.encode_s, self.encode_tokens = 0.0, 0


def linear_params(model: torch.nn.Module) -> int:
    """Parameters of the linear layers, without the embeddings (a lookup, not a matmul)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def encoder_floor(model: torch.nn.Module, rows: int = 512) -> float:
    """FLOP/s of the encoder's linear layers at ``rows`` rows in float32, fastest of repeats."""
    flops, seconds = 0.0, 0.0
    with torch.inference_mode():
        for layer in [m for m in model.modules() if isinstance(m, torch.nn.Linear)]:
            x = torch.randn(rows, layer.in_features)
            layer(x)
            fastest = min(_timed(layer, x) for _ in range(5))
            flops += 2.0 * rows * layer.in_features * layer.out_features
            seconds += fastest
    return flops / seconds


def _timed(layer: torch.nn.Module, x: torch.Tensor) -> float:
    began = time.perf_counter()
    layer(x)
    return time.perf_counter() - began


def run_mode(name: str, config: TrainConfig, probe: Probe, floor: dict[str, float]) -> dict:
    """One training run of ``config``; its step time and each phase's seconds and × floor."""
    probe.reset()
    with tempfile.TemporaryDirectory() as out:
        run = config.model_copy(update={"output_dir": Path(out), "resume": False})
        began = time.perf_counter()
        train(run)
        wall = time.perf_counter() - began
        lines = (Path(out) / METRICS_FILE).read_text().splitlines()
    rows = [row for row in map(json.loads, lines) if "time/step_s" in row]  # not the summary
    steps = len(rows)
    policy = next(e for e in probe.engines if e.key.path.startswith("live:") and e.stats.batches)
    voice = [e for e in probe.engines if not e.key.path.startswith("live:") and e.stats.batches]
    model_config = policy.model.config
    phases: dict[str, tuple[float, float]] = {}
    dialogues = config.grpo.generation_batch() if config.grpo else 0
    prefill, decode = count_flops(model_config, policy.stats, dialogues * _turns(config))
    phases["policy prefill"] = (policy.stats.prefill_s, prefill / floor[policy.key.dtype])
    phases["policy decode"] = (policy.stats.decode_s, decode / floor[policy.key.dtype])
    for engine in voice:
        prefill, decode = count_flops(model_config, engine.stats, dialogues * _turns(config))
        phases[f"user voice ({engine.key.dtype})"] = (
            engine.stats.prefill_s + engine.stats.decode_s,
            (prefill + decode) / floor[engine.key.dtype],
        )
    phases["appraiser"] = (
        probe.encode_s,
        2.0 * floor["encoder_params"] * probe.encode_tokens / floor["encoder"],
    )
    tokens = rows[-1]["num_tokens"] if steps else 0.0
    passes = 3.0 + config.policy.gradient_checkpointing
    update_flops = passes * 2.0 * linear_params(policy.model) * tokens
    update_s = sum(r["time/update_s"] for r in rows)
    phases["update (forward + backward)"] = (update_s, update_flops / floor["float32"])
    return {
        "mode": name,
        "steps": steps,
        "wall_s": wall,
        "step_s": statistics.fmean(r["time/step_s"] for r in rows),
        "rollout_s": statistics.fmean(r["time/rollout_s"] for r in rows),
        "update_s": update_s / steps,
        "agent_turns_per_step": dialogues * statistics.fmean(r["rollout/turns_mean"] for r in rows),
        "logprob_gap_mean": statistics.fmean(
            r.get("sampling/sampling_logp_difference/mean", 0.0) for r in rows
        ),
        "capped_share": statistics.fmean(r.get("sampling/capped_share", 0.0) for r in rows),
        "phases": {k: {"s": s / steps, "floor_s": f / steps} for k, (s, f) in phases.items()},
    }


def _turns(config: TrainConfig) -> int:
    return config.rollout.emotion_rules().max_turns


def table(best: dict[str, dict], before: str, after: str) -> list[str]:
    """The two modes of one stage side by side, then each phase against its floor."""
    lines = [
        f"| {before} → {after} | before | after | before ÷ after |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in (
        ("step_s", "s per step"),
        ("rollout_s", "rollout s per step"),
        ("update_s", "update s per step"),
        ("agent_turns_per_step", "agent turns trained per step"),
    ):
        b, a = best[before][key], best[after][key]
        lines.append(f"| {label} | {b:.1f} | {a:.1f} | {b / a:.2f}× |")
    b, a = (per_turn(best[name]) for name in (before, after))
    lines.append(f"| s per trained agent turn | {b:.2f} | {a:.2f} | {b / a:.2f}× |")
    b, a = (rollout_vs_floor(best[name]) for name in (before, after))
    lines.append(f"| rollout × its floor | {b:.1f} | {a:.1f} | |")
    lines += ["", "| phase | before s | before × floor | after s | after × floor |"]
    lines.append("| --- | --- | --- | --- | --- |")
    names = list(dict.fromkeys([*best[before]["phases"], *best[after]["phases"]]))
    for phase in names:
        cells = []
        for name in (before, after):
            entry = best[name]["phases"].get(phase)
            cells += (
                [f"{entry['s']:.1f}", f"{entry['s'] / entry['floor_s']:.1f}"]
                if entry and entry["floor_s"]
                else ["-", "-"]
            )
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return lines


def per_turn(result: dict) -> float:
    return result["step_s"] / result["agent_turns_per_step"]


def rollout_vs_floor(result: dict) -> float:
    """The rollout's seconds over the floor of everything it ran (every phase but the update)."""
    floor_s = sum(v["floor_s"] for k, v in result["phases"].items() if not k.startswith("update"))
    return result["rollout_s"] / floor_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}, torch threads: {torch.get_num_threads()}")
    probe = Probe()
    configs: dict[str, TrainConfig] = {}
    for name in args.modes:
        stage, sampler, rounds = MODES[name]
        shipped = load_train_config(CONFIGS / STAGES[stage])
        rollout = shipped.rollout.model_copy(update={"sampler": sampler, "rounds": rounds})
        configs[name] = shipped.model_copy(
            update={"rollout": rollout, "max_steps": args.steps, "save_steps": 10_000}
        )
    from transformers import AutoConfig

    from rlver_agents.models.embedded import embedded_model_path

    model_config = AutoConfig.from_pretrained(embedded_model_path())
    measured = measure_floor(model_config, [512])
    encoder = load_model(None)
    floor = {
        "float32": measured.flops[("float32", 512)],
        "bfloat16": measured.flops[("bfloat16", 512)],
        "encoder": encoder_floor(encoder),
        "encoder_params": float(linear_params(encoder)),
    }
    print(
        "floor GFLOP/s: "
        + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in floor.items() if k != "encoder_params")
    )
    results: dict[str, list[dict]] = defaultdict(list)
    for _ in range(args.repeats):
        for name, config in configs.items():
            result = run_mode(name, config, probe, floor)
            print(json.dumps(result), flush=True)
            results[name].append(result)
    best = {name: min(runs, key=lambda r: r["step_s"]) for name, runs in results.items()}
    print(f"\nload average at end: {os.getloadavg()}\n")
    for before, after in COMPARISONS:
        if before in best and after in best:
            print("\n".join(table(best, before, after)) + "\n")
    for sampler in ("exact", "bfloat16"):
        one, four = best.get(f"one-turn, {sampler}"), best.get(f"4-turn, {sampler}")
        if one and four:
            ratio = per_turn(four) / per_turn(one)
            print(f"4-turn ÷ one-turn, s per trained agent turn ({sampler}): {ratio:.2f}×")
    for name, result in best.items():
        print(
            f"{name}: sampler–trainer log-prob gap {result['logprob_gap_mean']:.4f} (mean), "
            f"{result['capped_share']:.2%} of policy tokens at the cap"
        )


if __name__ == "__main__":
    main()
