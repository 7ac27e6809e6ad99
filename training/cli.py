"""``rlver-train CONFIG.yaml`` (also ``python -m training CONFIG.yaml``): one entry point for
every algorithm; ``algorithm:`` in the file picks the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from training.config import TrainConfig, TrainConfigError, load_train_config

app = typer.Typer(add_completion=False, help=__doc__)
console = Console(stderr=True, soft_wrap=True)


def run(config: TrainConfig) -> Path:
    """Train as ``config.algorithm`` says, after the supervised warm-up if ``warmup:`` is
    set; returns the directory of the final checkpoint."""
    if config.warmup is not None:
        from training.warmup import warm_up

        warmed = config.policy.model_copy(update={"model": str(warm_up(config))})
        config = config.model_copy(update={"policy": warmed})
    if config.algorithm == "grpo":
        from training.grpo import train_grpo

        return train_grpo(config)
    from training.ppo import train_ppo

    return train_ppo(config)


@app.command()
def main(
    config: Annotated[Path, typer.Argument(help="A training configuration (YAML).")],
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help="Overrides output_dir.")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Overrides max_steps.")
    ] = None,
    no_resume: Annotated[
        bool, typer.Option("--no-resume", help="Start over even if checkpoints exist.")
    ] = False,
) -> None:
    """Train the empathetic agent's policy against simulated users."""
    overrides: dict[str, Any] = {}
    if output_dir is not None:
        overrides["output_dir"] = str(output_dir)
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    if no_resume:
        overrides["resume"] = False
    try:
        loaded = load_train_config(config, overrides)
    except TrainConfigError as exc:
        console.print(str(exc), style="red", highlight=False, markup=False)
        raise typer.Exit(2) from None
    final = run(loaded)
    console.print(f"Final checkpoint: {final}")
