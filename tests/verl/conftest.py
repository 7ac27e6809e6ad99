"""Fixtures for the tests that run against the real verl (its own environment, see .ci/run).

The policy's rollout server is stood in for by :class:`TinyPolicyServer`, which samples from
the tiny random Qwen2 of ``tests/models_fixtures.py`` the way verl's vLLM server answers the
agent loop: prompt token ids in, sampled token ids and their logprobs out.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from autogen_ext.models.replay import ReplayChatCompletionClient
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer
from verl.experimental.agent_loop.agent_loop import (
    DictConfigWrap,
    ToolListWrap,
)
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

from rlver_agents.agents.simulator import SimulatedUser
from rlver_agents.appraisers.appraisal import LLMAppraiser
from rlver_agents.episodes.episode import EpisodeContext
from rlver_agents.personas import Persona, bundled_personas_dir, load_personas
from training.verl.agent_loop import RlverDialogueAgentLoop
from training.verl.settings import REPO_ROOT

CONFIGS = REPO_ROOT / "training" / "verl" / "configs"
PROMPT_LENGTH = 1024
RESPONSE_LENGTH = 1024
TURN_TOKENS = 12
SPECIAL_BANS = ("<|endoftext|>", "<|im_start|>", "<think>", "</think>")


class TinyPolicyServer:
    """verl's server manager, played by the tiny random Qwen2 on the CPU.

    It bans the template's control tokens and the think tags and holds back the end-of-turn
    token for the first ``min_tokens`` tokens (vLLM's ``bad_words`` and ``min_tokens``), so
    that every reply is visible text; after that a logit bias on the end-of-turn token makes
    some turns stop on their own and others run into the token cap. :meth:`constrain` is
    public so a test can recompute the exact distribution each token was drawn from.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        seed: int = 0,
        min_tokens: int = 3,
        eos_bias: float = 4.0,
    ) -> None:
        self.model = model
        self.eos = int(tokenizer.eos_token_id)
        self.banned = [int(tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_BANS]
        self.min_tokens = min_tokens
        self.eos_bias = eos_bias
        self.generator = torch.Generator().manual_seed(seed)
        self.requests: list[dict[str, Any]] = []

    def constrain(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        logits = logits.clone()
        logits[..., self.banned] = float("-inf")
        if step < self.min_tokens:
            logits[..., self.eos] = float("-inf")
        else:
            logits[..., self.eos] += self.eos_bias
        return logits

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **_: Any
    ) -> TokenOutput:
        self.requests.append({"prompt_ids": list(prompt_ids), "sampling": dict(sampling_params)})
        assert sampling_params.get("top_k", -1) == -1 and sampling_params.get("top_p", 1.0) == 1.0
        temperature = float(sampling_params.get("temperature", 1.0))
        sequence = list(prompt_ids)
        tokens: list[int] = []
        logprobs: list[float] = []
        with torch.no_grad():
            for step in range(int(sampling_params["max_tokens"])):
                logits = self.model(torch.tensor([sequence])).logits[0, -1].float()
                logp = torch.log_softmax(self.constrain(logits, step) / temperature, dim=-1)
                token = int(torch.multinomial(logp.exp(), 1, generator=self.generator))
                tokens.append(token)
                logprobs.append(float(logp[token]))
                sequence.append(token)
                if token == self.eos:
                    break
        return TokenOutput(
            token_ids=tokens,
            log_probs=logprobs if sampling_params.get("logprobs") else None,
            stop_reason="completed",
        )


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def wide_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with room for a simulated user's long prompts (RoPE has no position
    weights, so only the configured limit changes)."""
    target = tmp_path_factory.mktemp("tiny-wide")
    shutil.copytree(tiny_checkpoint, target, dirs_exist_ok=True)
    config = json.loads((target / "config.json").read_text())
    config["max_position_embeddings"] = 8192
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_checkpoint: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_checkpoint)


def compose_overlay(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """One of the shipped verl overlays, composed with verl's own configs as ``main_ppo`` does."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name=name, overrides=list(overrides))


@pytest.fixture(scope="session")
def trainer_config(tiny_checkpoint: Path) -> DictConfig:
    """The PPO overlay, sized for the tiny model."""
    return compose_overlay(
        "rlver_ppo",
        [
            f"actor_rollout_ref.model.path={tiny_checkpoint}",
            f"data.max_prompt_length={PROMPT_LENGTH}",
            f"data.max_response_length={RESPONSE_LENGTH}",
        ],
    )


def english_persona() -> Persona:
    """A bundled English persona with a scripted opening (the opening needs no model)."""
    personas = load_personas(bundled_personas_dir() / "test.jsonl")
    return next(p for p in personas if p.language == "en" and p.first_talk)


JUDGE = "Intent: support\nFit: close\nReaction: a reaction\nChange: {:+d}"


class ScriptedUsers:
    """Simulated users whose judge and voice are scripted; keeps every user it built."""

    def __init__(self, changes: Sequence[int]) -> None:
        self.changes = list(changes)
        self.built: list[SimulatedUser] = []

    def __call__(self, context: EpisodeContext) -> SimulatedUser:
        judge = LLMAppraiser(ReplayChatCompletionClient([JUDGE.format(c) for c in self.changes]))
        voice = ReplayChatCompletionClient([f"user line number {i}." for i in range(1, 40)])
        user = SimulatedUser("user", voice, context.persona, rules=context.rules, appraiser=judge)
        self.built.append(user)
        return user


def build_loop(
    config: DictConfig,
    server: Any,
    tokenizer: Any,
    *,
    settings: dict[str, Any] | None = None,
    users: Callable[[EpisodeContext], SimulatedUser] | None = None,
) -> RlverDialogueAgentLoop:
    """The loop as verl's ``AgentLoopWorker`` makes it: from the agent-loop YAML, by Hydra."""
    entries = OmegaConf.load(CONFIGS / "agent_loop.yaml")
    entry = next(e for e in entries if e.name == "rlver_dialogue")
    entry = OmegaConf.merge(entry, {"settings": settings or {}})
    extra: dict[str, Any] = {"users": users} if users is not None else {}
    loop = instantiate(
        config=entry,
        trainer_config=DictConfigWrap(config=config),
        server_manager=server,
        tokenizer=tokenizer,
        processor=None,
        hf_model_type="qwen2",
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(config.data),
        tools=ToolListWrap([]),
        **extra,
    )
    assert isinstance(loop, RlverDialogueAgentLoop)
    return loop


def sampling_params(config: DictConfig) -> dict[str, Any]:
    """What ``AgentLoopWorker.generate_sequences`` hands every loop, from the rollout config."""
    rollout = config.actor_rollout_ref.rollout
    return {
        "temperature": rollout.temperature,
        "top_p": rollout.top_p,
        "top_k": rollout.top_k,
        "repetition_penalty": 1.0,
        "logprobs": rollout.calculate_log_probs,
    }
