"""The two token-exact training units built from an episode's generation records. Torch-free.

**turn** (RLVER's unit): one sample per agent generation; the prompt is exactly the ids the
policy was given and the completion exactly the ids it sampled.

**dialogue**: one sample per episode, from a client in ``token_mode="append"``: the first
prompt, then every sampled completion (mask 1) with the environment tokens between them (the
template tokens of the user's messages and the next generation prompt, mask 0), ending on the
policy's last sampled token.

Both carry the recorded on-policy logprobs (the sampling temperature, before top-p), so a
trainer's forward pass at that temperature reproduces them and its first importance ratio is 1.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, model_validator

from rlver_agents.episodes.episode import Episode
from rlver_agents.models.records import GenerationRecord

Unit = Literal["turn", "dialogue"]


class TokenSample(BaseModel):
    """One training sequence: a prompt and a masked completion with its sampling logprobs."""

    persona_id: str
    sample: int
    """The episode's sample index within its group."""
    unit: Unit
    turn: int | None
    """Agent-turn number (1-based) for the turn unit; None for the dialogue unit."""
    prompt_ids: list[int]
    completion_ids: list[int]
    completion_mask: list[int]
    """1 = sampled by the policy, 0 = environment (user) token."""
    logprobs: list[float]
    """On-policy logprob of each completion token; 0.0 where the mask is 0."""
    truncated: bool
    """The policy's last generation hit the length limit."""
    policy_version: int
    """The oldest weight version among the generations in this sample."""

    @model_validator(mode="after")
    def _aligned(self) -> TokenSample:
        n = len(self.completion_ids)
        if len(self.completion_mask) != n or len(self.logprobs) != n:
            raise ValueError(
                f"TokenSample {self.persona_id}#{self.sample}: completion_ids ({n}), "
                f"completion_mask ({len(self.completion_mask)}) and logprobs "
                f"({len(self.logprobs)}) differ in length"
            )
        if set(self.completion_mask) - {0, 1}:
            raise ValueError(
                f"TokenSample {self.persona_id}#{self.sample}: completion_mask holds values "
                "other than 0 and 1"
            )
        return self


def _agent_generations(episode: Episode) -> list[tuple[int, list[GenerationRecord]]]:
    """(agent-turn number, its records) for every agent turn, in order."""
    found: list[tuple[int, list[GenerationRecord]]] = []
    for number, turn in enumerate((t for t in episode.turns if t.speaker == "agent"), start=1):
        if turn.generations is None:
            raise ValueError(
                f"Episode {episode.persona_id}#{episode.sample}: agent turn {number} (message "
                f"{turn.index}) has no generation records; play it with a client that keeps "
                "them (LocalChatCompletionClient)"
            )
        found.append((number, turn.generations))
    return found


def turn_samples(episode: Episode) -> list[TokenSample]:
    """One sample per agent generation (usually one per agent turn), in dialogue order."""
    return [
        TokenSample(
            persona_id=episode.persona_id,
            sample=episode.sample,
            unit="turn",
            turn=number,
            prompt_ids=record.prompt_token_ids,
            completion_ids=record.completion_token_ids,
            completion_mask=[1] * len(record.completion_token_ids),
            logprobs=record.completion_logprobs,
            truncated=record.finish_reason == "length",
            policy_version=record.policy_version,
        )
        for number, records in _agent_generations(episode)
        for record in records
    ]


def dialogue_sample(episode: Episode) -> TokenSample:
    """The whole dialogue as one append-only sequence.

    Raises ``ValueError`` when a generation's prompt does not start with the previous prompt
    and completion, i.e. the dialogue was not played with ``token_mode="append"``.
    """
    name = f"Episode {episode.persona_id}#{episode.sample}"
    records = [record for _, turn_records in _agent_generations(episode) for record in turn_records]
    if not records:
        raise ValueError(f"{name}: no agent generations, so there is no dialogue sample")
    first = records[0]
    completion: list[int] = []
    mask: list[int] = []
    logprobs: list[float] = []
    stream = list(first.prompt_token_ids)
    for index, record in enumerate(records):
        if record.prompt_token_ids[: len(stream)] != stream:
            raise ValueError(
                f"{name}: generation {index + 1} (token_mode={record.token_mode!r}) does not "
                "extend the previous prompt and completion; the dialogue unit needs an agent "
                "client with token_mode='append'"
            )
        environment = record.prompt_token_ids[len(stream) :]
        completion += environment + record.completion_token_ids
        mask += [0] * len(environment) + [1] * len(record.completion_token_ids)
        logprobs += [0.0] * len(environment) + record.completion_logprobs
        stream = record.prompt_token_ids + record.completion_token_ids
    return TokenSample(
        persona_id=episode.persona_id,
        sample=episode.sample,
        unit="dialogue",
        turn=None,
        prompt_ids=first.prompt_token_ids,
        completion_ids=completion,
        completion_mask=mask,
        logprobs=logprobs,
        truncated=records[-1].finish_reason == "length",
        policy_version=min(record.policy_version for record in records),
    )
