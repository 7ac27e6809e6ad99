"""The supervised warm-up: TRL's ``SFTTrainer`` on the appraisal corpus's best replies.

Each example is exactly what the policy sees when it speaks in a rollout: the agent's system
prompt, the dialogue so far (the person's lines as user turns, the agent's as assistant
turns), and one reply that the rubric labels as fitting for this person at this point. The
loss covers the reply only. The corpus's train split holds train personas only, so the test
personas stay unseen.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from datasets import Dataset
from pydantic import BaseModel
from transformers import PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer

from rlver_agents.agents.agent import default_system_message
from rlver_agents.appraisers.corpus import CorpusRow, load_corpus, read_corpus
from rlver_agents.personas import load_split
from training.config import TrainConfig, TrainConfigError
from training.policy import FINAL_DIR, append_metrics, export_model, load_policy, peft_config
from training.warmup_config import WARMUP_DIR, WarmupSettings

SUMMARY_FILE = "warmup.json"


class WarmupSummary(BaseModel):
    """What a finished warm-up used and gave; its presence marks the stage as done."""

    policy: str
    rows: int
    dropped_too_long: int
    steps: int
    first_loss: float
    last_loss: float
    minutes: float


def _rows(settings: WarmupSettings) -> list[CorpusRow]:
    """The rows to imitate; a given corpus may not hold the benchmark's test personas."""
    rows = load_corpus("train") if settings.corpus is None else read_corpus(settings.corpus)
    unseen = {persona.id for persona in load_split("test")}
    leaked = sorted({row.persona_id for row in rows} & unseen)
    if leaked:
        raise TrainConfigError(
            f"warmup.corpus: {settings.corpus} has rows on test personas ({', '.join(leaked)}); "
            "the benchmark's people must stay unseen in training"
        )
    return [row for row in rows if row.change >= settings.min_change]


def _chat(row: CorpusRow, system: str) -> dict[str, list[dict[str, str]]]:
    """One prompt-completion example in the chat roles the live policy is prompted with."""
    prompt = [{"role": "system", "content": system}] + [
        {"role": "user" if turn.role == "user" else "assistant", "content": turn.text}
        for turn in row.history
    ]
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": row.reply}]}


def warmup_examples(
    config: TrainConfig, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[dict[str, Any]], int]:
    """The examples, and how many rows were dropped because a rollout could not say them:
    replies longer than ``rollout.max_new_tokens``, or prompts past ``warmup.max_length``."""
    assert config.warmup is not None
    system = config.policy.system_message or default_system_message("en")
    kwargs = config.policy.chat_template_kwargs
    examples: list[dict[str, Any]] = []
    dropped = 0
    for row in _rows(config.warmup):
        example = _chat(row, system)
        reply_tokens = len(tokenizer(row.reply, add_special_tokens=False)["input_ids"])
        whole = tokenizer.apply_chat_template(
            example["prompt"] + example["completion"], tokenize=True, **kwargs
        )
        whole_tokens = len(whole["input_ids"] if isinstance(whole, dict) else whole)
        if reply_tokens > config.rollout.max_new_tokens or whole_tokens > config.warmup.max_length:
            dropped += 1
            continue
        examples.append(example | {"chat_template_kwargs": kwargs} if kwargs else example)
    if not examples:
        raise ValueError(
            f"warmup: no corpus row has change >= {config.warmup.min_change} and fits "
            f"rollout.max_new_tokens ({config.rollout.max_new_tokens})"
        )
    return examples, dropped


def sft_arguments(config: TrainConfig) -> SFTConfig:
    """TRL's ``SFTConfig`` for the warm-up, from the shared parts of the configuration."""
    assert config.warmup is not None
    settings = config.warmup
    return SFTConfig(
        output_dir=str(config.output_dir / WARMUP_DIR),
        seed=config.seed,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a share of the steps
        lr_scheduler_type="cosine",
        max_length=settings.max_length,
        completion_only_loss=True,
        gradient_checkpointing=config.policy.gradient_checkpointing,
        use_cpu=config.use_cpu,
        bf16=config.bf16,
        logging_steps=config.logging.logging_steps,
        report_to=["tensorboard"] if config.logging.tensorboard else "none",
        save_strategy="no",
    )


def warm_up(config: TrainConfig) -> Path:
    """Run the warm-up into ``output_dir/warmup`` and return its final checkpoint; a run whose
    summary already exists is not repeated, so a resumed training run goes straight to RL."""
    out = config.output_dir / WARMUP_DIR
    summary_path = out / SUMMARY_FILE
    if summary_path.is_file():
        return Path(WarmupSummary.model_validate_json(summary_path.read_text()).policy)
    started = time.monotonic()
    model, tokenizer = load_policy(config)
    examples, dropped = warmup_examples(config, tokenizer)
    trainer = SFTTrainer(
        model=model,
        args=sft_arguments(config),
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
        peft_config=peft_config(config),
    )
    trainer.train()
    final = export_model(trainer.accelerator, trainer.model, out / FINAL_DIR, tokenizer)
    if trainer.accelerator.is_main_process:
        losses = [entry for entry in trainer.state.log_history if "loss" in entry]
        for entry in losses:
            append_metrics(out, entry["step"], {"warmup/loss": entry["loss"]})
        summary = WarmupSummary(
            policy=str(final),
            rows=len(examples),
            dropped_too_long=dropped,
            steps=trainer.state.global_step,
            first_loss=losses[0]["loss"] if losses else float("nan"),
            last_loss=losses[-1]["loss"] if losses else float("nan"),
            minutes=(time.monotonic() - started) / 60,
        )
        summary_path.write_text(json.dumps(summary.model_dump(), indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    return final
