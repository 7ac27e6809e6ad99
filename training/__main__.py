"""``python -m training CONFIG.yaml``."""

from training.cli import app

app(prog_name="rlver-train")
