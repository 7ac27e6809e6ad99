"""Rewards computed from an episode record: outcome, per-turn process and think-format.

Every function is pure and works on a finished :class:`~rlver_agents.episodes.Episode` (or on
plain numbers), so training code can call them as plain callables; TRL's reward functions
over rollout columns are ``training.rewards``, built on these.

An errored episode has no score. It is refused with :class:`EpisodeNotScorable` rather than
scored as 0, which would teach the policy that a crashed dialogue is a failed one.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from rlver_agents.episodes.episode import Episode, Turn

DEFAULT_FORMAT_PENALTY = 0.1
"""Penalty per agent turn whose output broke the think-then-say format.

0.1 is worth a 10-point emotion change under the outcome scale (score / 100): large enough
that a policy cannot profit from skipping the thought, small enough not to swamp the outcome.
"""


class EpisodeNotScorable(ValueError):
    """The episode errored or lacks the data a reward needs; the message says which episode."""


def _describe(episode: Episode) -> str:
    return f"episode (persona {episode.persona_id!r}, sample {episode.sample})"


def final_score_of(episode: Episode) -> int:
    """The final emotion score of a scored episode; refuses errored or score-less ones."""
    if not episode.ok:
        raise EpisodeNotScorable(
            f"{_describe(episode)} ended in an error and has no score: "
            f"{episode.error or 'no detail'}"
        )
    if episode.final_score is None:
        raise EpisodeNotScorable(f"{_describe(episode)} has no final_score")
    return episode.final_score


def outcome_reward(episode_or_score: Episode | float) -> float:
    """RLVER's terminal reward ``max(final, 0) / 100``, from an episode or a final score."""
    score = (
        final_score_of(episode_or_score)
        if isinstance(episode_or_score, Episode)
        else episode_or_score
    )
    return max(score, 0) / 100


def agent_turns(episode: Episode) -> list[Turn]:
    """The agent's messages, in dialogue order."""
    return [turn for turn in episode.turns if turn.speaker == "agent"]


def process_rewards(episode: Episode) -> list[float]:
    """Per-turn reward: the applied emotion change / 100, credited to the agent turn causing it.

    The result has one entry per agent turn. The user turn that answers agent turn ``k`` (the
    first user turn after it) carries the change ``k`` caused. An agent turn that no user turn
    appraised makes the episode unscorable: the change it caused is unknown, not zero.
    """
    final_score_of(episode)
    rewards: list[float] = []
    pending: Turn | None = None
    for turn in episode.turns:
        if turn.speaker == "agent":
            if pending is not None:
                raise EpisodeNotScorable(
                    f"{_describe(episode)}: agent turn {pending.index} is followed by another "
                    "agent turn with no user appraisal in between"
                )
            pending = turn
        elif pending is not None:
            if turn.applied_change is None:
                raise EpisodeNotScorable(
                    f"{_describe(episode)}: user turn {turn.index} answers agent turn "
                    f"{pending.index} but has no applied_change"
                )
            rewards.append(turn.applied_change / 100)
            pending = None
    if pending is not None:
        raise EpisodeNotScorable(
            f"{_describe(episode)}: the last agent turn {pending.index} was never appraised"
        )
    return rewards


def format_penalties(episode: Episode, penalty: float = DEFAULT_FORMAT_PENALTY) -> list[float]:
    """``-penalty`` for each agent turn with a format violation, else 0; one entry per agent turn.

    Format does not depend on the emotion score, but an errored episode is still refused so
    that all rewards of one episode are either all present or all absent.
    """
    if penalty < 0:
        raise ValueError(f"penalty must be >= 0 (it is subtracted), got {penalty}")
    final_score_of(episode)
    return [-penalty if turn.format_violation else 0.0 for turn in agent_turns(episode)]


class EpisodeRewards(BaseModel):
    """All rewards of one episode, aligned on its agent turns."""

    model_config = ConfigDict(frozen=True)

    persona_id: str
    sample: int
    outcome: float
    process: list[float]
    format: list[float]

    @property
    def total(self) -> float:
        """Outcome plus every format penalty: the scalar a sequence-level trainer needs."""
        return self.outcome + sum(self.format)


def episode_rewards(
    episode: Episode, format_penalty: float = DEFAULT_FORMAT_PENALTY
) -> EpisodeRewards:
    """Outcome, process and format rewards of one episode in one value."""
    return EpisodeRewards(
        persona_id=episode.persona_id,
        sample=episode.sample,
        outcome=outcome_reward(episode),
        process=process_rewards(episode),
        format=format_penalties(episode, format_penalty),
    )
