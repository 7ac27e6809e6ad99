"""Model test equipment: a tiny random Qwen2 checkpoint with a tokenizer trained in-process, a
scripted engine, and a ``transformers serve`` launcher. The fixtures built on them are in
``conftest.py``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from rlver_agents.models.engine import GenerationOutput
    from rlver_agents.models.local import LocalChatCompletionClient

# Everything here is built locally; nothing may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TAGS = ["<think>", "</think>"]
CORPUS = [
    "I feel so tired and nobody at work listens to me.",
    "That sounds exhausting; it makes sense you feel unheard.",
    "My sister did not call me on my birthday.",
    "You wanted her to remember you, that hurts.",
    "Thank you for listening, I feel a little better now.",
    "What happened today? Tell me more about it.",
    "system user assistant hello hi how are you fine sad happy angry calm",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_checkpoint(target: Path, *, seed: int = 0) -> Path:
    """Save a 2-layer random Qwen2 and a word-level tokenizer with a chat template to ``target``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(CORPUS, trainer)
    bpe = json.loads(core.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe["vocab"],
        merges=[tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]],
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.add_tokens(THINK_TAGS)
    tokenizer.chat_template = CHAT_TEMPLATE
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.2,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float().eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


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
