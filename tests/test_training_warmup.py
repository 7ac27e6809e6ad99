"""The supervised warm-up: its examples are the prompts the agent really sends, it learns the
corpus's fitting replies on the tiny Qwen2, it is not repeated on resume, and `rlver-train`
starts RL from its weights."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from autogen_agentchat.messages import TextMessage
from autogen_core.models import (
    AssistantMessage,
    LLMMessage,
    SystemMessage,
    UserMessage,
)
from autogen_ext.models.replay import ReplayChatCompletionClient
from training_users import tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlver_agents.agents.agent import EmpatheticAgent
from rlver_agents.appraisers.corpus import corpus_path, load_corpus
from training import cli
from training.config import TrainConfig, TrainConfigError
from training.warmup import SUMMARY_FILE, warm_up, warmup_examples
from training.warmup_config import WARMUP_DIR

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

SYSTEM = "Reply to your friend in one short sentence."


class _Recording(ReplayChatCompletionClient):
    """Replays the agent's turns and keeps every message list the agent sent."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__(replies)
        self.sent: list[list[LLMMessage]] = []

    async def create(self, messages: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.sent.append(list(messages))
        return await super().create(messages, **kwargs)


def _roles(messages: list[LLMMessage]) -> list[dict[str, str]]:
    kinds = {SystemMessage: "system", UserMessage: "user", AssistantMessage: "assistant"}
    return [{"role": kinds[type(m)], "content": str(m.content)} for m in messages]


def _config(checkpoint: Path, out: Path, **warmup: object) -> TrainConfig:
    data = tiny_config(checkpoint, out).model_dump(mode="json")
    data["rollout"]["max_new_tokens"] = 96
    data["policy"] = {"model": str(checkpoint), "system_message": SYSTEM}
    return TrainConfig.model_validate(data | {"warmup": {"epochs": 1, **warmup}})


def test_each_example_is_the_prompt_the_agent_sends_at_that_turn(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    config = _config(tiny_checkpoint, tmp_path / "run")
    examples, _ = warmup_examples(config, AutoTokenizer.from_pretrained(tiny_checkpoint))
    rows = [r for r in load_corpus("train") if r.change >= 5]
    example = next(e for e in examples if len(e["prompt"]) >= 6)  # the agent's third turn
    row = next(r for r in rows if r.reply == example["completion"][0]["content"])

    said = [turn.text for turn in row.history if turn.role == "agent"]
    client = _Recording([*said, row.reply])
    agent = EmpatheticAgent("agent", model_client=client, system_message=SYSTEM)
    for turn in row.history:
        if turn.role == "user":
            asyncio.run(agent.on_messages([TextMessage(content=turn.text, source="user")], None))

    assert _roles(client.sent[-1]) == example["prompt"]
    assert len(example["completion"]) == 1
    assert 0.5 * len(rows) < len(examples) <= len(rows)


def _corpus(path: Path) -> Path:
    opening = "I feel so tired and nobody at work listens to me."
    rows = [
        ("w-1", "That sounds exhausting, and it is fair to want to be heard.", 7, "fitting"),
        ("w-2", "Nobody listening after a long shift is a lot. What happened today?", 6, "fitting"),
        ("w-3", "Okay.", -2, "filler"),
        ("w-4", "You sound worn out. " * 30, 8, "fitting"),
    ]
    with path.open("w") as out:
        for id_, reply, change, category in rows:
            out.write(
                json.dumps(
                    {
                        "id": id_,
                        "persona_id": "p0",
                        "history": [{"role": "user", "text": opening}],
                        "reply": reply,
                        "change": change,
                        "reason": "test row",
                        "category": category,
                    }
                )
                + "\n"
            )
    return path


def _reply_logprob(checkpoint: Path, system: str, user: str, reply: str) -> float:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    chat = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt + reply, return_tensors="pt", add_special_tokens=False).input_ids
    start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    return float(logp[start - 1 :].gather(-1, targets[start - 1 :, None]).sum())


def test_the_warm_up_learns_the_fitting_replies_and_is_not_repeated(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    corpus = _corpus(tmp_path / "corpus.jsonl")
    config = _config(
        tiny_checkpoint, tmp_path / "run", corpus=str(corpus), epochs=20, learning_rate=3e-3
    )
    config = config.model_copy(
        update={"rollout": config.rollout.model_copy(update={"max_new_tokens": 40})}
    )
    final = warm_up(config)

    summary = json.loads((config.output_dir / WARMUP_DIR / SUMMARY_FILE).read_text())
    assert summary["rows"] == 2  # the filler row is below min_change
    assert summary["dropped_too_long"] == 1  # the 150-word reply cannot fit 40 new tokens
    assert summary["last_loss"] < summary["first_loss"]
    opening = "I feel so tired and nobody at work listens to me."
    taught = "That sounds exhausting, and it is fair to want to be heard."
    before = _reply_logprob(tiny_checkpoint, SYSTEM, opening, taught)
    after = _reply_logprob(final, SYSTEM, opening, taught)
    assert after > before + 10, (before, after)
    assert _reply_logprob(final, SYSTEM, opening, "Okay.") < after

    weights = final / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert warm_up(config) == final
    assert weights.stat().st_mtime_ns == written


def test_rlver_train_starts_rl_from_the_warmed_up_weights(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tiny_checkpoint, tmp_path / "run", corpus=str(_corpus(tmp_path / "c.jsonl")))
    seen: list[str] = []

    def fake_grpo(given: TrainConfig) -> Path:
        seen.append(given.policy.model)
        return given.output_dir / "final"

    monkeypatch.setattr("training.grpo.train_grpo", fake_grpo)
    cli.run(config)
    assert seen == [str(config.output_dir / WARMUP_DIR / "final")]


def test_a_corpus_with_test_personas_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "leaky.jsonl"
    corpus.write_text(corpus_path("validation").read_text().splitlines()[0] + "\n")
    config = _config(tiny_checkpoint, tmp_path / "run", corpus=str(corpus))
    with pytest.raises(TrainConfigError, match=r"warmup.corpus: .*leaky.jsonl has rows on test"):
        warmup_examples(config, AutoTokenizer.from_pretrained(tiny_checkpoint))


def test_warmup_refuses_think_mode(tiny_checkpoint: Path, tmp_path: Path) -> None:
    data = _config(tiny_checkpoint, tmp_path / "run").model_dump(mode="json")
    data["policy"]["think"] = True
    with pytest.raises(ValueError, match="warmup: the corpus's replies carry no thoughts"):
        TrainConfig.model_validate(data)
