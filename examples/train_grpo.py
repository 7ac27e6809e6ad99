"""Train the empathetic agent's policy with GRPO from Python, then benchmark it.

The same as ``rlver-train training/configs/smollm2-cpu-grpo.yaml``, with the configuration
changed in code. Runs offline on the CPU (a few minutes per step on 2 cores):

    python examples/train_grpo.py --steps 2 --out runs/example-grpo
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.config import load_train_config
from training.grpo import train_grpo

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "smollm2-cpu-grpo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/example-grpo"))
    args = parser.parse_args()
    config = load_train_config(CONFIG, {"output_dir": str(args.out), "max_steps": args.steps})
    final = train_grpo(config)
    print(f"trained policy: {final}")
    print(f"benchmark it:   rlver eval with agent.model = {{kind: local, model: {final}}}")


if __name__ == "__main__":
    main()
