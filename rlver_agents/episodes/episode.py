"""One dialogue between a simulated user and any AutoGen chat agent, and its record.

The runner drives the two agents itself through the `ChatAgent` protocol, exactly as a
two-member `RoundRobinGroupChat` would: each side receives the other's last message and
answers. Doing it here rather than through a team keeps exceptions with their real types (a
team turns them into `RuntimeError` text, and the retry policy needs the type), makes the
message bound exact, and spares a per-dialogue agent runtime when hundreds run at once. The
dialogue ends when the user's reply metadata says it is terminal; the termination reason and
the final score come from that metadata, never from the runner.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from autogen_agentchat.base import ChatAgent, Response
from autogen_agentchat.messages import (
    BaseAgentEvent,
    BaseChatMessage,
    ModelClientStreamingChunkEvent,
    ThoughtEvent,
)
from autogen_core import CancellationToken
from autogen_core.models import RequestUsage
from pydantic import BaseModel, ConfigDict, Field

from rlver_agents._version import __version__
from rlver_agents.appraisers.appraisal import AppraisalEvent
from rlver_agents.deadlines import Deadline
from rlver_agents.emotion import Band, EmotionMetadata, EmotionRules, TerminationReason
from rlver_agents.errors import describe_error, is_transient
from rlver_agents.models.records import GenerationRecord, GenerationRecorder
from rlver_agents.personas import Persona
from rlver_agents.seeds import stable_seed
from rlver_agents.thinking import visible_text

_log = logging.getLogger(__name__)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Turn(BaseModel):
    """One message of the dialogue.

    User turns carry the appraisal of the agent message they answer and the emotion
    before and after it; the opening line has neither. Agent turns carry the thought, the
    format flag, whether the visible reply was empty and, when the agent's client keeps them,
    the token-exact records of the model calls that produced the turn (usually one).
    """

    index: int
    speaker: Literal["user", "agent"]
    source: str
    text: str
    thought: str | None = None
    format_violation: str | None = None
    empty: bool = Field(
        False,
        description="Agent turns: the visible reply was empty (nothing, whitespace or only a "
        "thought). It was still appraised, with a change of at most 0.",
    )
    appraisal: dict[str, Any] | None = None
    raw_change: int | None = None
    applied_change: int | None = None
    emotion_before: int | None = None
    emotion_after: int | None = None
    band: Band | None = None
    reply_origin: str | None = Field(
        None,
        description="User turns: where the text came from (model, model_retry, trimmed, stock, "
        "persona; see rlver_agents.agents.reply_guard).",
    )
    usage: Usage | None = None
    generations: list[GenerationRecord] | None = None
    duration_s: float | None = Field(None, description="Wall time of the turn.")
    queued_s: float | None = Field(
        None,
        description="Of which its model calls waited in a local engine's queue (not counted "
        "toward the turn deadline).",
    )


class EpisodeConfig(BaseModel):
    """Everything needed to reproduce an episode."""

    agent: dict[str, Any] = Field(default_factory=dict)
    simulator: dict[str, Any] = Field(default_factory=dict)
    appraiser: dict[str, Any] = Field(default_factory=dict)
    rules: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    package_version: str = ""


class Episode(BaseModel):
    """The record of one dialogue; one JSON line per episode in a campaign file.

    ``attempts`` counts the dialogues started for this record (more than one when a failed
    dialogue was started over with fresh agents, see :func:`worth_restarting`);
    ``attempt_errors`` keeps the reason each abandoned attempt failed; ``duration_s`` spans
    every attempt and the waits between.
    """

    model_config = ConfigDict(extra="forbid")

    persona_id: str
    sample: int = 0
    config: EpisodeConfig = Field(default_factory=EpisodeConfig)
    turns: list[Turn] = Field(default_factory=list)
    termination: TerminationReason
    error: str | None = None
    final_score: int | None = None
    num_turns: int = 0
    attempts: int = 1
    attempt_errors: list[str] = Field(default_factory=list)
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        """A scored dialogue; errored episodes have no score and are reported apart."""
        return self.termination is not TerminationReason.ERROR

    @property
    def key(self) -> tuple[str, int]:
        return (self.persona_id, self.sample)

    def emotion_trajectory(self) -> list[int]:
        """The user's score before the first agent turn, then after each appraised agent turn.

        A dialogue that errored before any appraisal gives ``[start]`` (the recorded rules'
        ``initial_score``), not ``[]``: the user did start at that score, so reports, rollout
        logs and verl's extra fields see one shape for every episode, and a mean over
        trajectories counts such a dialogue as what it was, one that never moved. Only a
        hand-made record with neither an appraisal nor its rules gives ``[]``.
        """
        appraised = [turn for turn in self.turns if turn.emotion_after is not None]
        if appraised and appraised[0].emotion_before is not None:
            start = appraised[0].emotion_before
        elif self.config.rules:
            start = EmotionRules.model_validate(self.config.rules).initial_score
        else:
            return []
        return [start, *(t.emotion_after for t in appraised if t.emotion_after is not None)]


class EpisodeContext(BaseModel):
    """What the factories receive to build the two agents of one dialogue.

    The persona is there for the simulated user (and for the agent's language); an agent
    factory must not put the persona's hidden need in front of the agent.
    """

    model_config = ConfigDict(frozen=True)

    persona: Persona
    sample: int = 0
    rules: EmotionRules
    seed: int | None = None
    attempt: int = 1


AgentFactory = Callable[[EpisodeContext], ChatAgent]
"""Builds a fresh agent for each dialogue (agents hold per-dialogue state)."""


class RetryPolicy(BaseModel):
    """How failed dialogues are survived: start them over with fresh agents and a fresh seed.

    Which failures are worth it is :func:`worth_restarting`'s call. Attempt ``k`` (from 2)
    waits ``min(max_delay_s, base_delay_s * 2**(k-2))`` shortened by up to ``jitter`` of itself
    at random, so concurrent dialogues hit by the same outage do not come back in lockstep.
    ``turn_timeout_s`` bounds each side's turn (its model calls); a turn that runs over is a
    transient error. Its default leaves room for a server client's own per-call timeout and
    retries (``RunConfig.timeouts``), which act first. Time a call waits in a local engine's
    queue does not count (:mod:`rlver_agents.deadlines`): the deadline catches hangs, not load.
    """

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(3, ge=1)
    base_delay_s: float = Field(1.0, ge=0)
    max_delay_s: float = Field(30.0, ge=0)
    jitter: float = Field(0.5, ge=0, le=1)
    turn_timeout_s: float | None = Field(600.0, gt=0)

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before ``attempt`` (2, 3, ...)."""
        delay = min(self.max_delay_s, self.base_delay_s * 2 ** max(attempt - 2, 0))
        return delay * (1 - self.jitter * rng.random())


class DialogueContractError(ValueError):
    """A side broke the runner's contract: a user reply without emotion metadata, an appraisal
    that disagrees with it, a user that never ends, a turn without a response. The same agents
    would break it again, so such a dialogue is not started over."""


_BUGS: tuple[type[Exception], ...] = (
    TypeError,
    AttributeError,
    NameError,
    ImportError,
    NotImplementedError,
)
"""Errors of code that cannot run as written; a new dialogue runs the same code."""


def worth_restarting(error: BaseException) -> bool:
    """Whether a dialogue that failed with ``error`` while it was played is started over.

    Yes for every failure of a model or a judge: a call that kept failing (timeouts, dropped
    connections, HTTP errors, malformed bodies, a server's ``content: null``), a judge whose
    output stayed unreadable, a simulated user that wrote nothing, a model's own exception. A
    new dialogue sends new requests and samples new text, so these are worth another try.
    No for what a new dialogue would meet again: a :class:`DialogueContractError` and
    programming errors (``TypeError``, ``AttributeError``, ...), unless a transient failure
    caused them. Errors while the agents are built (a configuration error, clashing names) are
    never restarted either; :func:`run_episode` sees those before any turn is played.
    """
    return is_transient(error) or not isinstance(error, (DialogueContractError, *_BUGS))


def attempt_seed(seed: int | None, attempt: int) -> int | None:
    """The seed of a dialogue's ``attempt``: ``seed`` for the first, a derived one after it.

    A seeded local judge whose output was unreadable would write the same output again under
    the same seed; a restart must not replay the failure it is meant to escape.
    """
    if seed is None or attempt == 1:
        return seed
    return stable_seed(seed, "attempt", attempt)


def token_source(agent: ChatAgent) -> list[GenerationRecord] | None:
    """The records list of the agent's public ``model_client``, if that client keeps them.

    Any agent that exposes its client as ``model_client`` (as `EmpatheticAgent` does) and whose
    client is a :class:`~rlver_agents.models.records.GenerationRecorder` gets token-exact turns.
    """
    client = getattr(agent, "model_client", None)
    return client.records if isinstance(client, GenerationRecorder) else None


def _component_config(agent: ChatAgent) -> dict[str, Any]:
    """The agent's declarative config with secrets masked, or its class when not serialisable."""
    try:
        return agent.dump_component().model_dump(mode="json")
    except Exception as exc:  # not every agent or client is serialisable
        return {
            "provider": f"{type(agent).__module__}.{type(agent).__qualname__}",
            "name": agent.name,
            "not_serialisable": describe_error(exc),
        }


@dataclass(frozen=True)
class _TurnResult:
    message: BaseChatMessage
    thoughts: list[str]
    appraisal: AppraisalEvent | None
    usage: Usage | None
    duration_s: float
    queued_s: float


async def _take_turn(
    agent: ChatAgent,
    incoming: list[BaseChatMessage],
    timeout_s: float | None,
    role: str,
) -> _TurnResult:
    """One ``on_messages_stream`` call: the final message plus what the events told us."""
    thoughts: list[str] = []
    appraisal: AppraisalEvent | None = None
    usages: list[RequestUsage] = []
    response: Response | None = None
    clock = time.monotonic()
    deadline = Deadline(timeout_s)  # stands still while a local engine queues the turn's calls
    try:
        async with deadline:
            async for item in agent.on_messages_stream(incoming, CancellationToken()):
                if isinstance(item, Response):
                    response = item
                    continue
                if isinstance(item, ModelClientStreamingChunkEvent):
                    continue
                if isinstance(item, ThoughtEvent):
                    thoughts.append(item.content)
                elif isinstance(item, AppraisalEvent):
                    appraisal = item
                if isinstance(item, BaseAgentEvent | BaseChatMessage) and item.models_usage:
                    usages.append(item.models_usage)
    except TimeoutError:
        if not deadline.expired():  # a client's own timeout keeps its message
            raise
        raise TimeoutError(f"{role} {agent.name!r} took longer than {timeout_s}s") from None
    if response is None:
        raise DialogueContractError(f"{role} {agent.name!r} ended its turn without a response")
    if response.chat_message.models_usage:
        usages.append(response.chat_message.models_usage)
    usage = (
        Usage(
            prompt_tokens=sum(u.prompt_tokens for u in usages),
            completion_tokens=sum(u.completion_tokens for u in usages),
        )
        if usages
        else None
    )
    return _TurnResult(
        message=response.chat_message,
        thoughts=thoughts,
        appraisal=appraisal,
        usage=usage,
        duration_s=time.monotonic() - clock,
        queued_s=deadline.queued_s,
    )


def _user_turn(
    index: int, result: _TurnResult, previous_score: int | None
) -> tuple[Turn, EmotionMetadata]:
    message = result.message
    emotion = EmotionMetadata.from_metadata(message.metadata)
    if emotion is None:
        raise DialogueContractError(
            f"user {message.source!r} replied without emotion metadata (field 'emotion_score'); "
            "the user side must be a SimulatedUser or follow its metadata contract"
        )
    event = result.appraisal
    if event is not None and (event.step.score, event.step.turn) != (emotion.score, emotion.turn):
        raise DialogueContractError(
            f"user {message.source!r}: appraisal step (turn {event.step.turn}, score "
            f"{event.step.score}) disagrees with its reply metadata (turn {emotion.turn}, "
            f"score {emotion.score})"
        )
    opening = index == 0
    turn = Turn(
        index=index,
        speaker="user",
        source=message.source,
        text=message.to_text(),
        appraisal=event.appraisal.model_dump(mode="json") if event else None,
        raw_change=event.step.raw_change if event else None,
        applied_change=None if opening else emotion.change,
        emotion_before=None if opening else (event.step.score_before if event else previous_score),
        emotion_after=None if opening else emotion.score,
        band=None if opening else emotion.band,
        reply_origin=message.metadata.get("reply_origin"),
        usage=result.usage,
        duration_s=result.duration_s,
        queued_s=result.queued_s,
    )
    return turn, emotion


def _agent_turn(
    index: int, result: _TurnResult, generations: list[GenerationRecord] | None
) -> Turn:
    message = result.message
    text = message.to_text()
    return Turn(
        index=index,
        speaker="agent",
        source=message.source,
        text=text,
        thought="\n".join(result.thoughts) or None,
        format_violation=message.metadata.get("format_violation") or None,
        empty=not visible_text(text),
        usage=result.usage,
        generations=generations,
        duration_s=result.duration_s,
        queued_s=result.queued_s,
    )


async def _play(
    user: ChatAgent,
    agent: ChatAgent,
    rules: EmotionRules,
    turns: list[Turn],
    timeout_s: float | None,
) -> tuple[TerminationReason, int, int]:
    """Alternate user and agent until the user's reply is terminal; fills ``turns`` as it goes.

    At most ``2 * rules.max_turns + 1`` messages: the opening line, then one agent message and
    one user reply per turn. A user that has not ended the dialogue by then is an error.
    """
    records = token_source(agent)
    opening = await _take_turn(user, [], timeout_s, "user")
    turn, emotion = _user_turn(0, opening, None)
    turns.append(turn)
    last_user = opening.message
    for _ in range(rules.max_turns):
        if emotion.terminal:
            break
        start = len(records) if records is not None else 0
        reply = await _take_turn(agent, [last_user], timeout_s, "agent")
        generations = records[start:] if records is not None else None
        turns.append(_agent_turn(len(turns), reply, generations))
        answer = await _take_turn(user, [reply.message], timeout_s, "user")
        turn, emotion = _user_turn(len(turns), answer, emotion.score)
        turns.append(turn)
        last_user = answer.message
    if not emotion.terminal or emotion.reason is None:
        raise DialogueContractError(
            f"user {user.name!r} did not end the dialogue within {rules.max_turns} turns "
            f"({len(turns)} messages); its metadata never said terminal"
        )
    return emotion.reason, emotion.score, emotion.turn


async def _attempt(
    context: EpisodeContext,
    user_factory: AgentFactory,
    agent_factory: AgentFactory,
    config: EpisodeConfig,
    timeout_s: float | None,
) -> tuple[Episode, bool]:
    """One dialogue with agents fresh from the factories; the episode, and whether it failed
    in a way worth starting over (never when building the agents failed)."""
    started_at = datetime.now(UTC)
    clock = time.monotonic()
    turns: list[Turn] = []
    agents: list[ChatAgent] = []
    error: BaseException | None = None
    playing = False
    outcome: tuple[TerminationReason, int, int] | None = None
    try:
        user = user_factory(context)
        agents.append(user)
        agent = agent_factory(context)
        agents.append(agent)
        if user.name == agent.name:
            raise ValueError(f"user and agent share the name {agent.name!r}; names must differ")
        config = config.model_copy(
            update={
                "agent": config.agent or _component_config(agent),
                "simulator": config.simulator or _component_config(user),
            }
        )
        playing = True
        outcome = await _play(user, agent, context.rules, turns, timeout_s)
    except Exception as exc:
        error = exc
    finally:
        for member in agents:
            try:
                await member.close()
            except Exception as exc:  # a failed close must not lose a finished dialogue
                _log.warning("closing %r failed: %s", member.name, describe_error(exc))
    base = {
        "persona_id": context.persona.id,
        "sample": context.sample,
        "config": config,
        "turns": turns,
        "started_at": started_at,
        "duration_s": time.monotonic() - clock,
    }
    if outcome is None:
        assert error is not None
        episode = Episode(
            **base,
            termination=TerminationReason.ERROR,
            error=describe_error(error),
            num_turns=sum(1 for t in turns if t.speaker == "agent"),
        )
        return episode, playing and worth_restarting(error)
    reason, score, num_turns = outcome
    return Episode(**base, termination=reason, final_score=score, num_turns=num_turns), False


async def run_episode(
    persona: Persona,
    *,
    user_factory: AgentFactory,
    agent_factory: AgentFactory,
    rules: EmotionRules,
    sample: int = 0,
    seed: int | None = None,
    config: EpisodeConfig | None = None,
    retry: RetryPolicy | None = None,
) -> Episode:
    """Play one dialogue and record every turn. Never raises for a failed dialogue.

    Any exception becomes an episode with ``termination=error``, ``error="Type: message"``
    and no score, keeping the turns played so far. A dialogue that failed while it was played
    is started over with agents fresh from the factories and the next :func:`attempt_seed`,
    up to ``retry.max_attempts`` dialogues, unless a new one would fail the same way (see
    :func:`worth_restarting`); ``attempt_errors`` keeps why each abandoned attempt failed.
    ``config`` is completed with the rules, the seed of the attempt recorded, the package
    version and, where empty, the agents' component configs. Cancellation propagates.
    """
    policy = retry or RetryPolicy()
    config = (config or EpisodeConfig()).model_copy(
        update={
            "rules": rules.model_dump(mode="json"),
            "seed": seed,
            "package_version": __version__,
        }
    )
    rng = random.Random()
    abandoned: list[str] = []
    attempt = 1
    clock = time.monotonic()
    while True:
        context = EpisodeContext(
            persona=persona,
            sample=sample,
            rules=rules,
            seed=attempt_seed(seed, attempt),
            attempt=attempt,
        )
        episode, restart = await _attempt(
            context,
            user_factory,
            agent_factory,
            config.model_copy(update={"seed": context.seed}),
            policy.turn_timeout_s,
        )
        if not restart or attempt >= policy.max_attempts:
            return episode.model_copy(
                update={
                    "attempts": attempt,
                    "attempt_errors": abandoned,
                    "duration_s": time.monotonic() - clock,
                }
            )
        abandoned.append(episode.error or "error")
        attempt += 1
        await asyncio.sleep(policy.delay_s(attempt, rng))
