"""The two training units from real dialogues on the tiny random Qwen2.

The agent is an `EmpatheticAgent` on a `LocalChatCompletionClient`; the user a `SimulatedUser`
whose talker and judge are replay clients, so only the policy's tokens are random.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from autogen_ext.models.replay import ReplayChatCompletionClient
from models_fixtures import scripted_engine
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlver_agents.agents.agent import EmpatheticAgent, default_system_message
from rlver_agents.agents.simulator import SimulatedUser
from rlver_agents.appraisers.appraisal import LLMAppraiser
from rlver_agents.emotion import EmotionRules
from rlver_agents.episodes.episode import Episode, EpisodeContext, Turn, run_episode
from rlver_agents.episodes.samples import TokenSample, dialogue_sample, turn_samples
from rlver_agents.models.local import LocalChatCompletionClient
from rlver_agents.models.records import GenerationRecord, SamplingParams, TokenMode
from rlver_agents.personas import Persona

PERSONA = Persona(
    id="p1",
    name="Ana",
    profile="Ana is a nurse on night shifts.",
    scene="Her manager moved her shifts again without asking.",
    hidden_need="She wants to hear that her frustration is fair.",
    first_talk="I feel so tired and nobody at work listens to me.",
)
RULES = EmotionRules(name="test", initial_score=40, max_turns=3)
TEMPERATURE = 0.8


def judge(changes: Sequence[int]) -> ReplayChatCompletionClient:
    return ReplayChatCompletionClient(
        [
            f"Intent: turn {i}\nFit: fit {i}\nReaction: reaction {i}\nChange: {c:+d}"
            for i, c in enumerate(changes, start=1)
        ]
    )


async def play(
    checkpoint: Path,
    *,
    token_mode: TokenMode,
    top_p: float = 1.0,
    seed: int = 3,
    think: bool = False,
    keep_thoughts: bool = False,
) -> Episode:
    def agent_factory(context: EpisodeContext) -> EmpatheticAgent:
        client = LocalChatCompletionClient(
            str(checkpoint),
            temperature=TEMPERATURE,
            top_p=top_p,
            seed=seed,
            max_new_tokens=10,
            token_mode=token_mode,
            on_policy=True,
        )
        return EmpatheticAgent("friend", client, think=think, keep_thoughts=keep_thoughts)

    def user_factory(context: EpisodeContext) -> SimulatedUser:
        lines = ["My shifts changed again.", "It is not fair.", "Maybe you are right.", "Bye."]
        return SimulatedUser(
            "user",
            ReplayChatCompletionClient(lines),
            PERSONA,
            rules=RULES,
            appraiser=LLMAppraiser(judge([5, -3, 4])),
        )

    episode = await run_episode(
        PERSONA, user_factory=user_factory, agent_factory=agent_factory, rules=RULES, seed=seed
    )
    assert episode.ok, episode.error
    return episode


def rescore(model: torch.nn.Module, sample: TokenSample, temperature: float) -> list[float]:
    """One forward pass over prompt + completion at the sampling temperature."""
    ids = torch.tensor([sample.prompt_ids + sample.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    start = len(sample.prompt_ids) - 1
    picked = logits[start : start + len(sample.completion_ids)] / temperature
    targets = torch.tensor(sample.completion_ids).unsqueeze(1)
    return torch.log_softmax(picked, dim=-1).gather(1, targets).squeeze(1).tolist()


def runs(sample: TokenSample, mask: int) -> list[list[int]]:
    """The maximal stretches of completion ids whose mask is ``mask``, in order."""
    found: list[list[int]] = []
    previous = None
    for token, bit in zip(sample.completion_ids, sample.completion_mask, strict=True):
        if bit == mask:
            if previous != mask:
                found.append([])
            found[-1].append(token)
        previous = bit
    return found


def agent_turns(episode: Episode) -> list[Turn]:
    return [t for t in episode.turns if t.speaker == "agent"]


@pytest.mark.parametrize("top_p", [1.0, 0.8])
@pytest.mark.parametrize("unit", ["turn", "dialogue"])
async def test_one_forward_pass_reproduces_the_recorded_logprobs(
    tiny_checkpoint: Path, unit: str, top_p: float
) -> None:
    """Both units rescore to the recorded on-policy logprobs; the first PPO ratio is 1."""
    episode = await play(
        tiny_checkpoint, token_mode="append" if unit == "dialogue" else "render", top_p=top_p
    )
    samples = turn_samples(episode) if unit == "turn" else [dialogue_sample(episode)]
    assert len(samples) == (len(agent_turns(episode)) if unit == "turn" else 1) >= 1
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    for sample in samples:
        new = rescore(model, sample, TEMPERATURE)
        on_policy = [
            (n, old)
            for n, old, bit in zip(new, sample.logprobs, sample.completion_mask, strict=True)
            if bit
        ]
        assert on_policy and max(abs(n - old) for n, old in on_policy) <= 1e-4
        ratios = torch.exp(torch.tensor([n - old for n, old in on_policy], dtype=torch.float64))
        assert float((ratios - 1).abs().max()) <= 1e-4
        raw = rescore(model, sample, 1.0)
        assert max(abs(r - old) for r, (_, old) in zip(raw, on_policy, strict=False)) > 1e-3


async def test_turn_samples_are_the_generations_as_sampled(tiny_checkpoint: Path) -> None:
    episode = await play(tiny_checkpoint, token_mode="render")
    samples = turn_samples(episode)
    records = [r for t in agent_turns(episode) for r in t.generations or []]
    assert [s.turn for s in samples] == list(range(1, len(agent_turns(episode)) + 1))
    for sample, record in zip(samples, records, strict=True):
        assert (sample.unit, sample.persona_id, sample.sample) == ("turn", "p1", 0)
        assert sample.prompt_ids == record.prompt_token_ids
        assert sample.completion_ids == record.completion_token_ids
        assert sample.completion_mask == [1] * len(record.completion_token_ids)
        assert sample.logprobs == record.completion_logprobs
        assert sample.truncated == (record.finish_reason == "length")


async def test_dialogue_sample_masks_segments_and_fresh_render(tiny_checkpoint: Path) -> None:
    """Mask-1 stretches decode to the agent's messages and mask-0 stretches to the user's turns.

    Without think mode the append-only stream equals a fresh render of the whole chat. The
    fixture's template is ChatML, which is what Qwen2.5's template renders for a chat that
    starts with a system message and uses no tools.
    """
    episode = await play(tiny_checkpoint, token_mode="append", seed=5)
    sample = dialogue_sample(episode)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    records = [r for t in agent_turns(episode) for r in t.generations or []]
    policy_runs, user_runs = runs(sample, 1), runs(sample, 0)
    assert len(policy_runs) == len(records) == len(agent_turns(episode)) == RULES.max_turns
    assert len(user_runs) == len(records) - 1
    assert sample.completion_mask[0] == 1 and sample.completion_mask[-1] == 1
    assert sample.completion_ids[-1] == records[-1].completion_token_ids[-1]
    assert sample.truncated == (records[-1].finish_reason == "length")
    paired = list(zip(sample.logprobs, sample.completion_mask, strict=True))
    assert [lp for lp, bit in paired if bit] == [
        lp for r in records for lp in r.completion_logprobs
    ]
    assert all(lp == 0.0 for lp, bit in paired if not bit)
    for run, record, turn in zip(policy_runs, records, agent_turns(episode), strict=True):
        assert run == record.completion_token_ids
        text = run[:-1] if record.finish_reason == "stop" else run
        assert tokenizer.decode(text) == turn.text
    user_texts = [t.text for t in episode.turns if t.speaker == "user"]
    for run, record, answer in zip(user_runs, records, user_texts[1:], strict=False):
        closing = "" if record.finish_reason == "stop" else "<|im_end|>"
        expected = f"{closing}\n<|im_start|>user\n{answer}<|im_end|>\n<|im_start|>assistant\n"
        assert tokenizer.decode(run) == expected

    chat = [{"role": "system", "content": default_system_message()}]
    for turn in episode.turns[: episode.turns.index(agent_turns(episode)[-1]) + 1]:
        chat.append(
            {"role": "user" if turn.speaker == "user" else "assistant", "content": turn.text}
        )
    fresh = tokenizer.apply_chat_template(chat, tokenize=False)
    streamed = tokenizer.decode(sample.prompt_ids + sample.completion_ids)
    assert fresh.startswith(streamed)
    assert fresh[len(streamed) :] in ("\n", "<|im_end|>\n")


async def test_think_mode_keeps_earlier_thoughts_in_the_dialogue_and_the_deployed_agent(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dialogue stream holds each sampled thought; a keep_thoughts agent's context does too,
    so a deployed agent (render mode) sees its past thoughts as the dialogue unit did."""
    replies = [f"<think>she is tired {i}</think> I hear you, that sounds hard." for i in range(3)]
    probe = LocalChatCompletionClient(str(tiny_checkpoint))
    prompts = scripted_engine(probe, monkeypatch, replies + replies)
    episode = await play(tiny_checkpoint, token_mode="append", think=True, keep_thoughts=True)
    sample = dialogue_sample(episode)
    tokenizer = probe.engine.tokenizer
    for i, (run, turn) in enumerate(zip(runs(sample, 1), agent_turns(episode), strict=True)):
        assert tokenizer.decode(run) == replies[i] + "<|im_end|>"
        assert (turn.thought, turn.text) == (f"she is tired {i}", "I hear you, that sounds hard.")
    deployed = await play(tiny_checkpoint, token_mode="render", think=True, keep_thoughts=True)
    last_prompt = tokenizer.decode(prompts[-1])
    assert "she is tired 0" in last_prompt and "she is tired 1" in last_prompt
    assert [r.prompt_token_ids for r in agent_turns(deployed)[-1].generations or []] == [
        prompts[-1]
    ]


async def test_an_empty_reply_is_one_end_of_turn_token_of_the_stream(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy that ends its turn at once has played a turn: the end-of-turn token is in the
    stream with mask 1, the user answered it, and the judge's +5 for it became 0."""
    probe = LocalChatCompletionClient(str(tiny_checkpoint))
    scripted_engine(probe, monkeypatch, ["", "I hear you.", "Go on."])
    episode = await play(tiny_checkpoint, token_mode="append")
    assert [t.empty for t in agent_turns(episode)] == [True, False, False]
    assert [t.applied_change for t in episode.turns[2::2]] == [0, -3, 4]
    sample = dialogue_sample(episode)
    eos = probe.engine.tokenizer.eos_token_id
    assert runs(sample, 1)[0] == [eos] and len(runs(sample, 1)) == 3


def _record(prompt: list[int], completion: list[int], mode: TokenMode) -> GenerationRecord:
    return GenerationRecord(
        prompt_token_ids=prompt,
        completion_token_ids=completion,
        completion_logprobs=[-1.0] * len(completion),
        raw_logprobs=[-1.0] * len(completion),
        prompt_text="",
        completion_text="",
        finish_reason="stop",
        sampling=SamplingParams(),
        model="m",
        token_mode=mode,
    )


def _episode(generations: list[list[GenerationRecord] | None]) -> Episode:
    turns = [Turn(index=0, speaker="user", source="user", text="hi")]
    for records in generations:
        turns.append(
            Turn(index=len(turns), speaker="agent", source="a", text="x", generations=records)
        )
        turns.append(Turn(index=len(turns), speaker="user", source="user", text="y"))
    return Episode(persona_id="p9", sample=2, turns=turns, termination="max_turns")


def test_dialogue_sample_refuses_what_is_not_one_stream() -> None:
    chained = _episode(
        [[_record([1, 2], [3, 4], "append")], [_record([1, 2, 3, 4, 5], [6, 7], "append")]]
    )
    sample = dialogue_sample(chained)
    assert (sample.unit, sample.turn, sample.persona_id, sample.sample) == (
        "dialogue",
        None,
        "p9",
        2,
    )
    assert (sample.prompt_ids, sample.completion_ids) == ([1, 2], [3, 4, 5, 6, 7])
    assert sample.completion_mask == [1, 1, 0, 1, 1]
    assert sample.logprobs == [-1.0, -1.0, 0.0, -1.0, -1.0]
    rerendered = _episode(
        [[_record([1, 2], [3, 4], "render")], [_record([1, 2, 9, 5], [6, 7], "render")]]
    )
    with pytest.raises(ValueError, match=r"p9#2: generation 2 \(token_mode='render'\)"):
        dialogue_sample(rerendered)
    with pytest.raises(ValueError, match=r"agent turn 2 .* has no generation records"):
        turn_samples(_episode([[_record([1], [2], "render")], None]))
    with pytest.raises(ValueError, match="no agent generations"):
        dialogue_sample(_episode([]))
