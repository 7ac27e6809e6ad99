"""Session fixtures every test module sees: model checkpoints and a served model.

Built once per session here, rather than imported into each module, where each importing
module would register (and build) its own copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from models_fixtures import ServedModel, build_tiny_checkpoint, free_port, wait_ready


@pytest.fixture(scope="session", name="tiny_checkpoint")
def tiny_checkpoint_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random chat checkpoint on disk, built once per test session."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session", name="embedded_checkpoint")
def embedded_checkpoint_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded SmolLM2 checkpoint, from the user cache (built there on first use)."""
    from rlver_agents.models.embedded import embedded_model_path

    return embedded_model_path()


@pytest.fixture(scope="session", name="served_embedded_model")
def served_embedded_model_fixture(
    embedded_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedModel]:
    """``transformers serve`` on 127.0.0.1 serving the embedded checkpoint, for the session."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "transformers.cli.transformers",
        "serve",
        str(embedded_checkpoint),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--log-level",
        "warning",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_ready(process, f"http://127.0.0.1:{port}/health", timeout_s=180)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}; log:\n{log_path.read_text()[-3000:]}") from error
        yield ServedModel(f"http://127.0.0.1:{port}/v1", str(embedded_checkpoint))
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
