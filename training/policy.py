"""The policy's files, for both trainers: loading it, exporting it, checkpointing a run.

GRPO and PPO start from the same checkpoint, write the same ``final/`` directory (a plain
Hugging Face checkpoint with its tokenizer and chat template, which ``rlver eval`` and vLLM
load as they are) and log to the same ``metrics.jsonl``. PPO's critic and frozen reference
are loaded here too, from the same kind of checkpoint. GRPO's own checkpoints are TRL's;
PPO's are :func:`save_checkpoint`'s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlver_agents.models.embedded import without_quantization
from training.config import TrainConfig, TrainConfigError
from training.ppo_config import CriticSettings

METRICS_FILE = "metrics.jsonl"
"""``output_dir/metrics.jsonl``: one object per logged step, the same for every algorithm."""
FINAL_DIR = "final"
"""Sub-directory of ``output_dir`` holding the trained policy as a plain checkpoint."""
CHECKPOINT_PREFIX = "checkpoint-"
ACTOR_DIR = "actor"
CRITIC_DIR = "critic"
STATE_DIR = "state"


def append_metrics(output_dir: Path, step: int, metrics: dict[str, float]) -> None:
    """One line of ``output_dir/metrics.jsonl``: the same file for every algorithm, so curves
    are plotted (and the trainers compared) without TensorBoard."""
    path = output_dir / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps({"step": step, **metrics}) + "\n")


def _plain_config(path: str, **overrides: object) -> PreTrainedConfig:
    return without_quantization(AutoConfig.from_pretrained(path, **overrides))


def load_policy(config: TrainConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The policy to train and its tokenizer (which must have a chat template)."""
    path = config.policy.path()
    model = AutoModelForCausalLM.from_pretrained(
        path, config=_plain_config(path), dtype=getattr(torch, config.policy.dtype)
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        raise TrainConfigError(f"policy.model: the tokenizer of {path} has no chat template")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def peft_config(config: TrainConfig) -> Any:
    """peft's ``LoraConfig`` for ``policy.lora``; None for full fine-tuning."""
    if config.policy.lora is None:
        return None
    from peft import LoraConfig

    lora = config.policy.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def load_critic(
    settings: CriticSettings, policy_path: str, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """The critic: the backbone of a causal LM with a one-output head at every position.

    A causal-LM checkpoint gets a fresh head with zero weights, so every value starts at 0
    (the critic starts with no opinion rather than a random one); a saved critic keeps its head.
    The head's dropout is off: the values the advantages use must be the ones the loss clips to.
    """
    path = settings.model_path if settings.source == "path" else policy_path
    assert path is not None
    config = _plain_config(path, num_labels=1)
    config.classifier_dropout = 0.0
    critic, info = AutoModelForTokenClassification.from_pretrained(
        path, config=config, dtype=dtype, output_loading_info=True
    )
    head = critic.score
    if any(key.startswith("score") for key in info["missing_keys"]):
        with torch.no_grad():
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()
    critic.config.use_cache = False
    return critic.train()


def load_reference(path: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A frozen copy of the starting policy, only needed when ``kl_coef > 0``."""
    reference = AutoModelForCausalLM.from_pretrained(
        path, config=_plain_config(path), dtype=dtype
    ).eval()
    reference.requires_grad_(False)
    return reference


def export_model(
    accelerator: Accelerator,
    model: torch.nn.Module,
    target: Path,
    tokenizer: PreTrainedTokenizerBase | None,
) -> Path:
    """A plain Hugging Face checkpoint (with the tokenizer and its chat template if given).

    A LoRA adapter (GRPO's ``policy.lora``; PPO trains full weights) is merged into the
    weights in place, so for such a model this is the last thing a run does.
    """
    unwrapped = accelerator.unwrap_model(model)
    if hasattr(unwrapped, "merge_and_unload"):
        unwrapped, state = unwrapped.merge_and_unload(), None
    else:
        state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped.save_pretrained(target, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(target)
    accelerator.wait_for_everyone()
    return target


def last_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint with the highest step in ``output_dir`` that finished writing."""
    if not output_dir.is_dir():
        return None
    done = [
        path
        for path in output_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
        and (path / STATE_DIR).is_dir()
        and (path / "trainer_state.json").is_file()
    ]
    return max(done, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)), default=None)


def checkpoint_step(checkpoint: Path) -> int:
    """The step a checkpoint of :func:`save_checkpoint` was written after."""
    return int(json.loads((checkpoint / "trainer_state.json").read_text())["step"])


def save_checkpoint(
    accelerator: Accelerator,
    policy: torch.nn.Module,
    critic: torch.nn.Module | None,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: Path,
    step: int,
    keep: int | None,
) -> Path:
    """``checkpoint-<step>/``: the actor and critic as plain checkpoints, and ``state/``
    (accelerate's: every model, optimizer, scheduler and random state) to resume from."""
    target = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    export_model(accelerator, policy, target / ACTOR_DIR, tokenizer)
    if critic is not None:
        export_model(accelerator, critic, target / CRITIC_DIR, None)
    accelerator.save_state(str(target / STATE_DIR))
    if accelerator.is_main_process:
        (target / "trainer_state.json").write_text(json.dumps({"step": step}) + "\n")
        if keep is not None:
            finished = sorted(
                (p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p != target),
                key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)),
            )
            for stale in finished[: max(len(finished) - (keep - 1), 0)]:
                shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    return target
