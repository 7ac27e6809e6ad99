"""Model test equipment: the tiny random Qwen2 checkpoint (built by
``rlver_agents.testing.tiny_model``), a scripted engine, and a ``transformers serve``
launcher. The fixtures built on them are in ``conftest.py``."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest

from rlver_agents.testing.tiny_model import build_tiny_checkpoint

if TYPE_CHECKING:
    from rlver_agents.models.engine import GenerationOutput
    from rlver_agents.models.local import LocalChatCompletionClient

# Everything here is built locally; nothing may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__all__ = ["ServedModel", "build_tiny_checkpoint", "free_port", "scripted_engine", "wait_ready"]


def scripted_engine(
    client: LocalChatCompletionClient, monkeypatch: pytest.MonkeyPatch, replies: list[str]
) -> list[list[int]]:
    """Make the client's engine answer with ``replies`` in order, as canonical token ids.

    A reply ending in "…" is cut off (finish "length"); the others end with the eos token.
    Returns the prompts the engine was given.
    """
    from rlver_agents.models.engine import GenerationOutput

    engine = client.engine
    tokenizer = engine.tokenizer
    pending = list(replies)
    prompts: list[list[int]] = []

    async def scripted(prompt_ids: list[int], params: object) -> GenerationOutput:
        prompts.append(list(prompt_ids))
        text = pending.pop(0)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        reason = "length" if text.endswith("…") else "stop"
        if reason == "stop":
            ids = [*ids, tokenizer.eos_token_id]
        return GenerationOutput(
            completion_ids=ids,
            logprobs=[-1.0] * len(ids),
            raw_logprobs=[-1.5] * len(ids),
            finish_reason=reason,
        )

    monkeypatch.setattr(engine, "generate", scripted)
    return prompts


class ServedModel:
    """A running OpenAI-compatible server: where it listens and the model name to ask for."""

    def __init__(self, base_url: str, model: str) -> None:
        self.base_url = base_url
        self.model = model


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(process: subprocess.Popen[bytes], url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"transformers serve exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"transformers serve was not ready at {url} within {timeout_s:.0f} s")
