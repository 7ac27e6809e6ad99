"""GRPO through TRL on the tiny random Qwen2: it trains, checkpoints, resumes, and learns only
from the policy's own tokens."""

from __future__ import annotations

import asyncio
import json
import math
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from autogen_core.models import UserMessage
from autogen_ext.models.replay import ReplayChatCompletionClient
from training_users import PERSONAS, scripted_users, tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlver_agents.agents.agent import default_system_message
from rlver_agents.agents.simulator import SimulatedUser
from rlver_agents.appraisers.appraisal import Appraisal, BaseAppraiser
from rlver_agents.emotion import EmotionRules
from rlver_agents.episodes.episode import EpisodeContext
from rlver_agents.models.spec import ModelSpec, build_chat_client
from training.config import TrainConfig
from training.grpo import build_trainer, train_grpo
from training.policy import METRICS_FILE, load_policy
from training.rollout import Rollout

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _varied_users() -> Any:
    """Users whose appraisal depends on the agent's reply, so groups have reward spread."""
    return scripted_users(change=lambda text: len(text) % 7 - 3)


class CountingRollout(Rollout):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plays = 0

    async def play(self, *args: Any, **kwargs: Any) -> Any:
        self.plays += 1
        return await super().play(*args, **kwargs)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _reply(checkpoint: Path) -> str:
    """One reply from the checkpoint through rlver's local client (``kind: local``)."""
    client = build_chat_client(
        ModelSpec(kind="local", model=str(checkpoint), max_new_tokens=4, seed=0)
    )
    result = asyncio.run(client.create([UserMessage(content="hello", source="user")]))
    return str(result.content)


def test_two_steps_train_checkpoint_and_resume(tiny_checkpoint: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_checkpoint, tmp_path / "run")
    rollout = CountingRollout(config, personas=PERSONAS, users=_varied_users())
    final = train_grpo(config, rollout=rollout)

    assert rollout.plays == 2
    assert (config.output_dir / "checkpoint-2" / "trainer_state.json").is_file()
    before, after = _weights(tiny_checkpoint), _weights(final)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed, "two GRPO steps left every weight as it was"
    logged = [json.loads(line) for line in (config.output_dir / METRICS_FILE).open()]
    assert [row["step"] for row in logged if "rollout/final_score_mean" in row] == [1, 2]
    assert all("time/rollout_s" in row and "time/update_s" in row for row in logged[:2])

    # the output is a plain checkpoint with its chat template: rlver's local client runs it
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer.chat_template
    assert isinstance(_reply(final), str)

    # resume: two more steps from checkpoint-2, not four from scratch
    resumed = config.model_copy(update={"max_steps": 4})
    again = CountingRollout(resumed, personas=PERSONAS, users=_varied_users())
    train_grpo(resumed, rollout=again)
    assert again.plays == 2
    state = json.loads((config.output_dir / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_a_quantization_marker_from_gguf_is_dropped(tiny_checkpoint: Path, tmp_path: Path) -> None:
    marked = tmp_path / "marked"
    shutil.copytree(tiny_checkpoint, marked)
    config_file = marked / "config.json"
    data = json.loads(config_file.read_text())
    data["quantization_config"] = {"quant_method": "gguf"}
    config_file.write_text(json.dumps(data))
    model, tokenizer = load_policy(tiny_config(marked, tmp_path / "run"))
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.pad_token_id is not None


def _first_position_probability(model: Any, tokenizer: Any, token: int) -> float:
    """The policy's probability of ``token`` as the first word of its first reply."""
    text = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": default_system_message()},
            {"role": "user", "content": PERSONAS[0].first_talk},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0, -1]
    return float(torch.softmax(logits.float(), dim=-1)[token])


def _favourite_token(checkpoint: Path) -> int:
    """The untrained policy's most likely first token: common enough to be sampled at once."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    probabilities = [
        _first_position_probability(model, tokenizer, t) for t in range(len(tokenizer))
    ]
    return max(range(len(probabilities)), key=probabilities.__getitem__)


def _count_reward(token: int, *, on_policy_tokens: bool) -> Any:
    """Reward = how often ``token`` appears in the policy's (or only the user's) tokens."""

    def token_reward(
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        policy_mask: Sequence[Sequence[int]],
        **_: Any,
    ) -> list[float]:
        return [
            float(
                sum(
                    t == token and bool(m) == on_policy_tokens
                    for t, m in zip(ids, mask, strict=True)
                )
            )
            for ids, mask in zip(completion_ids, policy_mask, strict=True)
        ]

    return token_reward


def _learn(config: TrainConfig, users: Any, reward: Any) -> tuple[Any, Any]:
    without_outcome = config.model_copy(
        update={"rewards": config.rewards.model_copy(update={"outcome": 0.0})}
    )
    rollout = Rollout(without_outcome, personas=PERSONAS, users=users)
    trainer, _ = build_trainer(without_outcome, rollout=rollout, extra_rewards=[(reward, 1.0)])
    trainer.train()
    return trainer.model, trainer.processing_class


STEPS = 20


def test_a_rewarded_policy_token_is_learned_and_a_user_token_is_not(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    token = _favourite_token(tiny_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    start = _first_position_probability(
        AutoModelForCausalLM.from_pretrained(tiny_checkpoint), tokenizer, token
    )
    settings = {"learning_rate": 1e-2, "loss_type": "grpo"}

    # 1. the token is rewarded where the policy says it: its probability rises clearly
    config = tiny_config(tiny_checkpoint, tmp_path / "policy", **settings)
    config = config.model_copy(update={"max_steps": STEPS, "save_steps": 1000})
    model, _ = _learn(config, scripted_users(), _count_reward(token, on_policy_tokens=True))
    learned = _first_position_probability(model, tokenizer, token)
    assert learned > max(3 * start, 0.3), (start, learned)

    # 2. the token is rewarded only where the simulated user says it (a random number of
    #    times per dialogue, whatever the policy does): the masked user tokens carry no
    #    gradient, so the policy does not learn to say it
    word = tokenizer.decode([token])

    def user_line(ctx: EpisodeContext, turn: int) -> str:
        rng = random.Random(f"{ctx.seed}:{turn}")
        return " ".join([word] * rng.randint(0, 3) + ["fine"])

    config = tiny_config(tiny_checkpoint, tmp_path / "user", **settings)
    config = config.model_copy(update={"max_steps": STEPS, "save_steps": 1000})
    model, _ = _learn(
        config, scripted_users(line=user_line), _count_reward(token, on_policy_tokens=False)
    )
    unlearned = _first_position_probability(model, tokenizer, token)
    assert unlearned < max(2 * start, 0.15) < learned, (start, unlearned, learned)


# --- an empty turn is a scored turn ------------------------------------------------------------


class Generous(BaseAppraiser):
    """A judge that says +5 to anything, an empty message included."""

    async def appraise(self, **_: Any) -> Appraisal:  # type: ignore[override]
        return Appraisal(change=5, reaction="lovely")


def _generous_users(ctx: EpisodeContext) -> SimulatedUser:
    voice = ReplayChatCompletionClient(["I see."] * 2)
    return SimulatedUser("user", voice, ctx.persona, rules=ctx.rules, appraiser=Generous())


def _eager_to_stop(checkpoint: Path, target: Path, probability: float) -> Path:
    """A copy of the tiny policy whose first reply token is end-of-turn with ``probability``.

    Only the end-of-turn row of an untied output layer moves, by exactly what lifts its logit
    at the first reply position to the wanted probability.
    """
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model.config.tie_word_embeddings = False
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    text = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": default_system_message()},
            {"role": "user", "content": PERSONAS[0].first_talk},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        logits = head(hidden)
        others = torch.logsumexp(torch.cat([logits[:eos], logits[eos + 1 :]]), dim=0)
        wanted = others + math.log(probability / (1 - probability))
        head.weight[eos] += (wanted - logits[eos]) * hidden / hidden.dot(hidden)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def test_a_policy_that_ends_its_turn_at_once_is_pushed_down(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The judge loves everything, so only saying nothing can lose: the empty dialogue is
    scored (not an errored row with no gradient), gets a negative advantage, and one step makes
    end-of-turn as the first reply token less likely."""
    checkpoint = _eager_to_stop(tiny_checkpoint, tmp_path / "eager", probability=0.4)
    config = tiny_config(checkpoint, tmp_path / "run")
    one_turn = EmotionRules(name="test", initial_score=30, max_turns=1)
    config = config.model_copy(
        update={
            "max_steps": 1,
            "save_steps": 1000,
            "rollout": config.rollout.model_copy(update={"rules": one_turn}),
        }
    )
    rollout = Rollout(config, personas=PERSONAS, users=_generous_users)
    trainer, rollout_func = build_trainer(config, rollout=rollout)
    tokenizer = trainer.processing_class
    eos = tokenizer.eos_token_id
    before = _first_position_probability(trainer.model, tokenizer, eos)
    assert 0.3 < before < 0.5

    trainer.train()

    rows = rollout_func.last_rows
    advantages = list(trainer._logs["advantages"])
    assert len(advantages) == len(rows) == 8
    stopped = [
        index
        for index, row in enumerate(rows)
        if [t for t, m in zip(row.completion_ids, row.env_mask, strict=True) if m] == [eos]
    ]
    assert 0 < len(stopped) < len(rows), "some dialogues, not all, must end at once, scored"
    assert all(row.error is None and row.final_score is not None for row in rows)
    for index, (row, advantage) in enumerate(zip(rows, advantages, strict=True)):
        if index in stopped:
            assert row.final_score == 30 and advantage < 0, (row, advantage)
    assert {row.final_score for row in rows} == {30, 35}
    after = _first_position_probability(trainer.model, tokenizer, eos)
    assert after < before, (before, after)


def test_a_corrected_bfloat16_sampler_learns_as_the_exact_one(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The same token-learning run sampled by the float32 policy and by its bfloat16 copy:
    both learn the token, and their reward curves agree within the steps' noise."""
    token = _favourite_token(tiny_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    start = _first_position_probability(
        AutoModelForCausalLM.from_pretrained(tiny_checkpoint), tokenizer, token
    )
    curves: dict[str, list[float]] = {}
    for sampler in ("exact", "bfloat16"):
        config = tiny_config(
            tiny_checkpoint, tmp_path / sampler, learning_rate=1e-2, loss_type="grpo"
        )
        config = config.model_copy(
            update={
                "max_steps": STEPS,
                "save_steps": 1000,
                "rollout": config.rollout.model_copy(update={"sampler": sampler}),
            }
        )
        model, _ = _learn(config, scripted_users(), _count_reward(token, on_policy_tokens=True))
        learned = _first_position_probability(model, tokenizer, token)
        assert learned > max(3 * start, 0.3), (sampler, start, learned)
        logged = [json.loads(line) for line in (config.output_dir / METRICS_FILE).open()]
        curves[sampler] = [row["reward"] for row in logged if "reward" in row]
    exact, copy = (torch.tensor(curves[name][STEPS // 2 :]) for name in ("exact", "bfloat16"))
    noise = 3 * float(torch.sqrt((exact.var() + copy.var()) / len(exact)))
    assert abs(float(exact.mean() - copy.mean())) < noise, curves
