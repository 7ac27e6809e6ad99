"""The simulated user as an interaction: driven by verl's tool agent loop, rewarded by verl."""

from __future__ import annotations

from itertools import groupby, pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import torch
from conftest import (
    CONFIGS,
    PROMPT_LENGTH,
    RESPONSE_LENGTH,
    TURN_TOKENS,
    ScriptedUsers,
    TinyPolicyServer,
    compose_overlay,
    english_persona,
    sampling_params,
)
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopOutput,
    DictConfigWrap,
    ToolListWrap,
    _agent_loop_registry,
)
from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
from verl.protocol import DataProto
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.utils.dataset.rl_dataset import RLHFDataset

from rlver_agents.emotion import RLVER_TRAIN
from training.verl.data import convert, persona_rows, read_rows, write_parquet
from training.verl.interaction import (
    RlverInteraction,
    RlverUserToolAgentLoop,
    load_interactions,
)
from training.verl.reward import compute_score
from training.verl.settings import AGENT_NAME, INTERACTION_NAME, USER_TOOL_AGENT_NAME

# Under rlver_train: 30 -> 35 -> 20 -> 45 -> 85 -> 100 (+50 capped at +15): success at turn 5.
# The -15, +25 and +40 would be clipped to 10 under SAGE's arithmetic.
CHANGES = [5, -15, 25, 40, 50]
TURN_SCORES = [0.05, -0.15, 0.25, 0.40, 0.15]


def mask_runs(mask: list[int]) -> list[tuple[int, int]]:
    """(value, length) of each run of equal mask values."""
    return [(value, len(list(run))) for value, run in groupby(mask)]


def interaction_row(tokenizer: Any, folder: Path) -> dict[str, Any]:
    """The persona's row as verl's RLHFDataset hands it to an agent loop."""
    rows = persona_rows([english_persona()], split="test", interaction=INTERACTION_NAME)
    path = write_parquet(rows, folder / "rows.parquet")
    config = OmegaConf.create({"cache_dir": str(folder / "cache"), "max_prompt_length": 1024})
    row = RLHFDataset(str(path), tokenizer, config)[0]
    row.pop("dummy_tensor")
    return row


@pytest.fixture(scope="module")
def interaction_config(tiny_checkpoint: Path) -> DictConfig:
    return compose_overlay(
        "rlver_interaction",
        [
            f"actor_rollout_ref.model.path={tiny_checkpoint}",
            f"data.max_prompt_length={PROMPT_LENGTH}",
            f"data.max_response_length={RESPONSE_LENGTH}",
        ],
    )


class Played:
    def __init__(
        self, output: AgentLoopOutput, row: dict[str, Any], server: TinyPolicyServer
    ) -> None:
        self.output = output
        self.row = row
        self.server = server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def played(
    interaction_config: DictConfig,
    tiny_model: Any,
    tiny_tokenizer: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Played:
    """One dialogue through the loop verl builds from agent_loop.yaml, the user scripted."""
    row = interaction_row(tiny_tokenizer, tmp_path_factory.mktemp("rows"))
    entries = OmegaConf.load(CONFIGS / "agent_loop.yaml")
    entry = next(e for e in entries if e.name == USER_TOOL_AGENT_NAME)
    entry = OmegaConf.merge(entry, {"settings": {"max_tokens_per_turn": TURN_TOKENS}})
    user = RlverInteraction({"name": INTERACTION_NAME}, users=ScriptedUsers(CHANGES))
    server = TinyPolicyServer(tiny_model, tiny_tokenizer)
    loop = instantiate(
        config=entry,
        trainer_config=DictConfigWrap(config=interaction_config),
        server_manager=server,
        tokenizer=tiny_tokenizer,
        processor=None,
        hf_model_type="qwen2",
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(interaction_config.data),
        tools=ToolListWrap([]),
        interactions={INTERACTION_NAME: user},
    )
    assert isinstance(loop, RlverUserToolAgentLoop)
    output = await loop.run(sampling_params(interaction_config), **row)
    return Played(output, row, server)


def test_the_loop_is_verls_tool_loop_registered_from_the_agent_loop_file() -> None:
    assert issubclass(RlverUserToolAgentLoop, ToolAgentLoop)
    target = f"{RlverUserToolAgentLoop.__module__}.RlverUserToolAgentLoop"
    assert _agent_loop_registry[USER_TOOL_AGENT_NAME]["_target_"] == target
    entries = OmegaConf.load(CONFIGS / "agent_loop.yaml")
    assert next(e for e in entries if e.name == USER_TOOL_AGENT_NAME)._target_ == target
    config = compose_overlay("rlver_interaction")
    assert config.actor_rollout_ref.rollout.agent.default_agent_loop == USER_TOOL_AGENT_NAME
    assert config.reward.custom_reward_function.path == "pkg://training.verl.reward"


def test_the_interaction_file_builds_our_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLVER_SIMULATOR_URL", "http://10.1.2.3:9000/v1")
    loaded = load_interactions("training/verl/configs/interaction.yaml")
    assert list(loaded) == [INTERACTION_NAME]
    interaction = loaded[INTERACTION_NAME]
    assert isinstance(interaction, RlverInteraction)
    assert interaction.name == INTERACTION_NAME and interaction.rules == RLVER_TRAIN
    assert interaction.settings.run_config == "training/verl/configs/simulator_vllm.yaml"


def test_bad_interaction_files_name_the_problem(tmp_path: Path) -> None:
    twice = tmp_path / "twice.yaml"
    entry = "  - {name: a, class_name: training.verl.interaction.RlverInteraction}\n"
    twice.write_text("interaction:\n" + entry + entry)
    with pytest.raises(ValueError, match="'a' is named twice"):
        load_interactions(twice)
    missing = tmp_path / "missing.yaml"
    missing.write_text("interaction:\n  - {name: a, class_name: training.verl.nope.Nothing}\n")
    with pytest.raises(ValueError, match=r"missing\.yaml: cannot import 'training\.verl\.nope"):
        load_interactions(missing)
    with pytest.raises(ValueError, match="not an interaction file"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("interaction: []\n")
        load_interactions(bad)


async def test_the_interaction_contract() -> None:
    persona = english_persona()
    interaction = RlverInteraction({"name": INTERACTION_NAME}, users=ScriptedUsers(CHANGES))
    with pytest.raises(ValueError, match="no 'persona'"):
        await interaction.start_interaction(None, name=INTERACTION_NAME)
    instance = await interaction.start_interaction(None, persona=persona.model_dump_json())
    spoken_first = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(ValueError, match="the simulated user opens the dialogue"):
        await interaction.generate_response(instance, spoken_first)
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be kind."}]
    done, opening, score, metadata = await interaction.generate_response(instance, messages)
    assert (done, opening, score) == (False, persona.first_talk, 0.0)
    assert metadata["emotion_trajectory"] == [30] and metadata["persona_id"] == persona.id
    messages.append({"role": "user", "content": opening})
    with pytest.raises(ValueError, match="must be the policy's reply"):
        await interaction.generate_response(instance, messages)
    scores, ended = [], []
    for turn in range(len(CHANGES)):
        messages.append({"role": "assistant", "content": f"<think>plan</think>reply {turn}"})
        done, reply, score, metadata = await interaction.generate_response(instance, messages)
        messages.append({"role": "user", "content": reply})
        scores.append(score)
        ended.append(done)
    assert scores == pytest.approx(TURN_SCORES)
    assert ended == [False, False, False, False, True]
    assert metadata["emotion_trajectory"] == [30, 35, 20, 45, 85, 100]
    assert (metadata["final_score"], metadata["termination"]) == (100, "success")
    assert await interaction.calculate_score(instance) == pytest.approx(1.0)
    await interaction.finalize_interaction(instance)
    with pytest.raises(KeyError, match="not started, or already finalised"):
        await interaction.calculate_score(instance)


def test_the_dialogue_is_one_token_stream(played: Played, tiny_tokenizer: Any) -> None:
    output = played.output
    assert isinstance(AgentLoopOutput.model_validate(output.model_dump()), AgentLoopOutput)
    n = len(output.response_ids)
    assert len(output.response_mask) == n and len(output.response_logprobs or []) == n
    runs = mask_runs(output.response_mask)
    # five policy turns, four user replies between them; the closing reply is not appended
    assert [value for value, _ in runs] == [1, 0, 1, 0, 1, 0, 1, 0, 1]
    assert all(length <= TURN_TOKENS + 1 for value, length in runs if value == 1)
    user_text = tiny_tokenizer.decode(
        [t for t, m in zip(output.response_ids, output.response_mask, strict=True) if m == 0]
    )
    for line in range(1, 5):
        assert f"user line number {line}." in user_text
    assert "user line number 5." not in user_text
    assert output.num_turns == 4 + 5 + 1  # user turns + policy turns + the prompt
    prompt = tiny_tokenizer.decode(output.prompt_ids)
    assert english_persona().first_talk in prompt
    requests = played.server.requests
    assert len(requests) == 5
    assert all(r["sampling"]["max_tokens"] == TURN_TOKENS for r in requests)
    for request, later in pairwise(requests):
        assert later["prompt_ids"][: len(request["prompt_ids"])] == request["prompt_ids"]


def test_turn_scores_and_the_outcome_reach_extra_fields(played: Played) -> None:
    fields = played.output.extra_fields
    assert fields["turn_scores"] == pytest.approx(TURN_SCORES)
    assert fields["interaction_score"] == pytest.approx(1.0)
    assert fields["emotion_trajectory"] == [30, 35, 20, 45, 85, 100]
    assert (fields["final_score"], fields["termination"]) == (100, "success")
    assert fields["persona_id"] == english_persona().id
    assert played.output.reward_score is None  # verl's reward manager computes it


def verl_reward_batch(played: Played) -> DataProto:
    """The one-sample batch verl's agent-loop worker hands its reward loop (``_compute_score``)."""
    prompts = torch.tensor(played.output.prompt_ids)
    responses = torch.tensor(played.output.response_ids)
    input_ids = torch.cat([prompts, responses])
    batch = TensorDict(
        {
            "prompts": prompts[None],
            "responses": responses[None],
            "input_ids": input_ids[None],
            "attention_mask": torch.ones_like(input_ids)[None],
        },
        batch_size=1,
    )
    row = played.row
    tool_extra_fields = np.empty(1, dtype=object)
    tool_extra_fields[0] = dict(played.output.extra_fields)
    extra_info = np.empty(1, dtype=object)
    extra_info[0] = dict(row["extra_info"])
    reward_model = np.empty(1, dtype=object)
    reward_model[0] = dict(row["reward_model"])
    return DataProto(
        batch=batch,
        non_tensor_batch={
            "data_source": np.array([row["data_source"]], dtype=object),
            "reward_model": reward_model,
            "extra_info": extra_info,
            "tool_extra_fields": tool_extra_fields,
            "__num_turns__": np.array([played.output.num_turns]),
        },
    )


@pytest.mark.parametrize(("overrides", "expected"), [([], 1.0), (["process_weight=0.5"], 1.35)])
async def test_verls_reward_manager_scores_the_dialogue_with_our_function(
    played: Played,
    tiny_checkpoint: Path,
    tiny_tokenizer: Any,
    overrides: list[str],
    expected: float,
) -> None:
    config = compose_overlay(
        "rlver_interaction",
        [f"actor_rollout_ref.model.path={tiny_checkpoint}"]
        + [f"+reward.custom_reward_function.reward_kwargs.{o}" for o in overrides],
    )
    manager = NaiveRewardManager(config, tiny_tokenizer, get_custom_reward_fn(config))
    result = await manager.run_single(verl_reward_batch(played))
    assert result["reward_score"] == pytest.approx(expected)
    info = result["reward_extra_info"]
    assert info["outcome"] == pytest.approx(1.0) and info["process"] == pytest.approx(0.70)
    assert (info["turns"], info["final_score"]) == (5.0, 100.0)


def test_a_row_played_elsewhere_is_refused() -> None:
    with pytest.raises(ValueError, match="lacks the interaction's score"):
        compute_score("rlver", "", "", {"index": 0})


def test_interaction_rows(tmp_path: Path, tiny_tokenizer: Any) -> None:
    rows = convert(["test"], tmp_path / "users.parquet", interaction=INTERACTION_NAME, limit=2)
    assert read_rows(tmp_path / "users.parquet") == rows
    plain = convert(["test"], tmp_path / "plain.parquet", limit=2)
    assert {r.agent_name for r in rows} == {USER_TOOL_AGENT_NAME}
    assert {r.agent_name for r in plain} == {AGENT_NAME}
    assert all(r.extra_info.interaction_kwargs is None for r in plain)
    row = interaction_row(tiny_tokenizer, tmp_path / "verl")
    assert row["agent_name"] == USER_TOOL_AGENT_NAME
    assert row["interaction_kwargs"]["name"] == INTERACTION_NAME
    assert row["interaction_kwargs"]["persona"] == english_persona().model_dump_json()
    assert row["reward_model"] == {"style": "rule", "ground_truth": ""}
