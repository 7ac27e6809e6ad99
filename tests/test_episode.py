"""The episode runner: what one dialogue records, how it fails, and how it retries."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import openai
import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseChatMessage
from autogen_core.models import ChatCompletionClient, CreateResult, LLMMessage
from autogen_ext.models.replay import ReplayChatCompletionClient
from scripted_user import ScriptedUser, changes_in_order

from rlver_agents.agents.agent import EmpatheticAgent
from rlver_agents.agents.simulator import EmptyReplyError, SimulatedUser, dialogue_team
from rlver_agents.appraisers.appraisal import AppraisalError, AppraisalEvent, LLMAppraiser
from rlver_agents.emotion import (
    RLVER_TRAIN,
    RLVER_TRAIN_CLIPPED,
    EmotionRules,
    TerminationReason,
    replay,
)
from rlver_agents.episodes.episode import (
    DialogueContractError,
    Episode,
    EpisodeConfig,
    EpisodeContext,
    RetryPolicy,
    attempt_seed,
    run_episode,
    token_source,
    worth_restarting,
)
from rlver_agents.errors import describe_error, is_transient
from rlver_agents.models.openai_compat import MalformedResponseError
from rlver_agents.models.records import GenerationRecord, GenerationRecorder, SamplingParams
from rlver_agents.models.retrying import ModelCallError
from rlver_agents.personas import Persona

try:  # openai 3 ships its HTTP stack as httpx2
    import httpx2 as httpx
except ImportError:
    import httpx

PERSONA = Persona(
    id="p1",
    name="Ana",
    profile="Ana is a nurse on night shifts.",
    scene="Her manager moved her shifts again without asking.",
    hidden_need="She wants to hear that her frustration is fair.",
)
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.0, turn_timeout_s=5.0)


class RecordingClient(ReplayChatCompletionClient):
    """A replay client that also keeps token-exact records, like LocalChatCompletionClient."""

    def __init__(self, replies: Sequence[str]) -> None:
        super().__init__(list(replies))
        self.records: list[GenerationRecord] = []

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        result = await super().create(messages, **kwargs)
        n = len(self.records)
        self.records.append(
            GenerationRecord(
                prompt_token_ids=[1, 2, n],
                completion_token_ids=[10 + n, 11 + n],
                completion_logprobs=[-0.5, -0.25],
                raw_logprobs=[-0.7, -0.4],
                prompt_text="p",
                completion_text=str(result.content),
                finish_reason="stop",
                sampling=SamplingParams(),
                model="tiny",
            )
        )
        return result


class FailingClient(ReplayChatCompletionClient):
    """Raises ``error`` on call number ``fail_on`` (1-based), replays otherwise."""

    def __init__(self, replies: Sequence[str], error: Exception, fail_on: int = 1) -> None:
        super().__init__(list(replies))
        self._error = error
        self._fail_on = fail_on
        self._calls = 0

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        self._calls += 1
        if self._calls == self._fail_on:
            raise self._error
        return await super().create(messages, **kwargs)


class SlowClient(ReplayChatCompletionClient):
    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        await asyncio.sleep(10)
        return await super().create(messages, **kwargs)


def user_with(changes: Sequence[int], **kwargs: Any):
    return lambda ctx: ScriptedUser(ctx.rules, change=changes_in_order(changes), **kwargs)


def assistant(client_factory):
    return lambda ctx: AssistantAgent("agent", client_factory())


async def test_records_every_turn_of_an_empathetic_dialogue() -> None:
    rules = EmotionRules(name="t", initial_score=80, max_turns=5)
    replies = [f"<think>plan {i}</think>I hear you, {i}." for i in range(5)]
    episode = await run_episode(
        PERSONA,
        user_factory=user_with([30, 4, 50]),
        agent_factory=lambda ctx: EmpatheticAgent(
            "friend", ReplayChatCompletionClient(replies), think=True
        ),
        rules=rules,
        sample=2,
        seed=11,
    )
    assert episode.termination is TerminationReason.SUCCESS
    assert (episode.final_score, episode.num_turns, episode.sample) == (100, 3, 2)
    assert [t.speaker for t in episode.turns] == ["user", "agent"] * 3 + ["user"]
    opening, first_agent, first_reply = episode.turns[:3]
    assert opening.appraisal is None and opening.emotion_before is None
    assert first_agent.thought == "plan 0" and first_agent.text == "I hear you, 0."
    assert first_agent.format_violation is None
    assert first_reply.raw_change == 30 and first_reply.applied_change == 10  # clipped
    assert (first_reply.emotion_before, first_reply.emotion_after) == (80, 90)
    assert first_reply.appraisal == {
        "intent": "",
        "fit": "",
        "reaction": "felt +30",
        "change": 30,
        "raw_change": None,
    }
    last = episode.turns[-1]
    assert (last.emotion_before, last.emotion_after, last.band) == (94, 100, "S")
    assert (last.raw_change, last.applied_change) == (50, 6)  # capped at 100
    assert first_reply.usage is not None and first_reply.usage.prompt_tokens == 7
    assert first_agent.usage is not None and first_agent.usage.completion_tokens > 0
    assert episode.config.rules["initial_score"] == 80 and episode.config.seed == 11
    assert episode.config.agent["provider"] == "rlver_agents.agents.EmpatheticAgent"
    assert episode.error is None and episode.attempts == 1 and episode.duration_s > 0


async def test_any_assistant_agent_plays_until_max_turns() -> None:
    episode = await run_episode(
        PERSONA,
        user_factory=user_with([1] * 9),
        agent_factory=assistant(lambda: ReplayChatCompletionClient(["ok"] * 9)),
        rules=RLVER_TRAIN,
    )
    assert episode.termination is TerminationReason.MAX_TURNS
    assert episode.num_turns == 9 and len(episode.turns) == 19
    assert episode.final_score == 39
    assert all(t.thought is None and t.generations is None for t in episode.turns)


class PublicClientAgent(AssistantAgent):
    """An assistant that exposes its client, the one thing ``token_source`` looks for."""

    @property
    def model_client(self) -> ChatCompletionClient:
        return self._model_client


async def test_generation_records_land_on_their_agent_turns() -> None:
    clients: list[RecordingClient] = []

    def agent(ctx: EpisodeContext) -> PublicClientAgent:
        clients.append(RecordingClient(["a", "b", "c"]))
        return PublicClientAgent("agent", clients[-1])

    episode = await run_episode(
        PERSONA,
        user_factory=user_with([-40, -40, -40]),
        agent_factory=agent,
        rules=RLVER_TRAIN_CLIPPED,
    )
    assert episode.termination is TerminationReason.FAILURE and episode.final_score == 0
    agent_turns = [t for t in episode.turns if t.speaker == "agent"]
    assert [t.generations for t in agent_turns] == [[r] for r in clients[0].records]
    assert [t.generations[0].completion_token_ids for t in agent_turns if t.generations] == [
        [10, 11],
        [11, 12],
        [12, 13],
    ]
    assert all(t.generations is None for t in episode.turns if t.speaker == "user")
    again = Episode.model_validate_json(episode.model_dump_json())
    assert again.turns[1].generations == [clients[0].records[0]]  # every field survives JSON


async def test_an_agent_without_a_public_recording_client_has_no_generations() -> None:
    recording = RecordingClient(["a"] * 8)
    assert isinstance(recording, GenerationRecorder)
    assert not isinstance(ReplayChatCompletionClient(["a"]), GenerationRecorder)
    assert token_source(PublicClientAgent("agent", recording)) is recording.records
    assert token_source(AssistantAgent("agent", recording)) is None  # client kept private
    assert token_source(PublicClientAgent("agent", ReplayChatCompletionClient(["a"]))) is None


async def test_a_model_error_is_retried_then_becomes_an_error_episode_with_its_reason() -> None:
    seeds: list[int | None] = []

    def agent(ctx: EpisodeContext) -> AssistantAgent:
        seeds.append(ctx.seed)
        return AssistantAgent(
            "agent", FailingClient(["fine"] * 3, ValueError("bad request"), fail_on=2)
        )

    episode = await run_episode(
        PERSONA,
        user_factory=user_with([1, 1, 1]),
        agent_factory=agent,
        rules=RLVER_TRAIN,
        seed=11,
        retry=FAST,
    )
    assert episode.termination is TerminationReason.ERROR
    assert episode.error == "ValueError: bad request"
    assert episode.final_score is None and episode.attempts == 3  # a failed model call: retried
    assert episode.attempt_errors == ["ValueError: bad request"] * 2
    assert len(episode.turns) == 3 and episode.num_turns == 1  # turns so far are kept
    assert seeds == [attempt_seed(11, k) for k in (1, 2, 3)] and len(set(seeds)) == 3
    assert seeds[0] == 11 and episode.config.seed == seeds[-1], "the record names its own seed"


async def test_contract_violations_and_bugs_are_not_started_over() -> None:
    no_metadata = await run_episode(
        PERSONA,
        user_factory=user_with([1], emit=False),
        agent_factory=assistant(lambda: ReplayChatCompletionClient(["ok"])),
        rules=RLVER_TRAIN,
        retry=FAST,
    )
    assert no_metadata.error and no_metadata.error.startswith("DialogueContractError: ")
    bug = await run_episode(
        PERSONA,
        user_factory=user_with([1]),
        agent_factory=assistant(lambda: FailingClient(["ok"], TypeError("'int' is not str"))),
        rules=RLVER_TRAIN,
        retry=FAST,
    )
    assert bug.error == "TypeError: 'int' is not str"
    assert (no_metadata.attempts, bug.attempts) == (1, 1)
    assert no_metadata.attempt_errors == bug.attempt_errors == []


def test_what_is_worth_starting_over() -> None:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    caused = TypeError("wrapped")
    caused.__cause__ = ConnectionResetError("peer reset")
    worth = [
        AppraisalError("judge output unreadable after 3 attempt(s)", ["?"]),
        EmptyReplyError("the simulated user's model wrote an empty reply 2 times"),
        ModelCallError("judge", "model 'm'", 4, TimeoutError()),
        MalformedResponseError("http://x", "m", "a message whose content is null"),
        _status_error(openai.BadRequestError, 400),
        openai.APIConnectionError(request=request),
        ValueError("No more mock responses available"),
        RuntimeError("CUDA out of memory"),
        caused,
    ]
    assert all(worth_restarting(error) for error in worth)
    never = [DialogueContractError("no emotion metadata"), TypeError("x"), AttributeError("y")]
    assert not any(worth_restarting(error) for error in never)


def _unreadable_then_fine(ctx: EpisodeContext) -> SimulatedUser:
    """A judge that writes nonsense in the first dialogue and verdicts in the next."""
    outputs = ["I would rather not say."] * 3 if ctx.attempt == 1 else [JUDGE.format(2)] * 3
    judge = LLMAppraiser(ReplayChatCompletionClient(outputs), max_retries=2)
    voice = ReplayChatCompletionClient([f"reply {i}" for i in range(3)])
    return SimulatedUser("user", voice, ctx.persona, rules=ctx.rules, appraiser=judge)


async def test_an_unreadable_judge_starts_the_dialogue_over() -> None:
    rules = EmotionRules(name="t", initial_score=40, max_turns=2)
    episode = await run_episode(
        PERSONA,
        user_factory=_unreadable_then_fine,
        agent_factory=assistant(lambda: ReplayChatCompletionClient(["I hear you."] * 2)),
        rules=rules,
        seed=5,
        retry=FAST,
    )
    assert episode.ok and episode.final_score == 44 and episode.attempts == 2
    (abandoned,) = episode.attempt_errors
    assert abandoned.startswith("AppraisalError: judge output unreadable after 3 attempt(s)")
    assert episode.config.seed == attempt_seed(5, 2) != 5


def _generous_user(ctx: EpisodeContext) -> SimulatedUser:
    """A user whose judge says +5 to everything, an empty message included."""
    judge = LLMAppraiser(ReplayChatCompletionClient([JUDGE.format(5)] * 3))
    voice = ReplayChatCompletionClient([f"reply {i}" for i in range(4)])  # the opening, 3 replies
    return SimulatedUser("user", voice, ctx.persona, rules=ctx.rules, appraiser=judge)


@pytest.mark.parametrize("empty", ["", "   ", "<think>nothing to say</think>"])
async def test_an_empty_reply_is_a_scored_turn_that_gains_nothing(empty: str) -> None:
    rules = EmotionRules(name="t", initial_score=40, max_turns=3)
    episode = await run_episode(
        PERSONA,
        user_factory=_generous_user,
        agent_factory=assistant(lambda: ReplayChatCompletionClient(["I see.", empty, "Go on."])),
        rules=rules,
        retry=FAST,
    )
    assert episode.ok and episode.error is None and episode.attempts == 1
    assert episode.termination is TerminationReason.MAX_TURNS and episode.num_turns == 3
    agent_turns = [t for t in episode.turns if t.speaker == "agent"]
    assert [t.empty for t in agent_turns] == [False, True, False]
    user_turns = episode.turns[2::2]
    assert [t.applied_change for t in user_turns] == [5, 0, 5]
    assert user_turns[1].appraisal and user_turns[1].appraisal["change"] == 0
    raw = [t.raw_change for t in user_turns]
    assert all(isinstance(c, int) for c in raw)
    assert replay([c for c in raw if c is not None], rules).score == episode.final_score == 50


def test_episode_files_from_before_the_empty_flag_still_load() -> None:
    old = {
        "persona_id": "p",
        "termination": "max_turns",
        "final_score": 45,
        "turns": [{"index": 1, "speaker": "agent", "source": "agent", "text": "hi"}],
    }
    episode = Episode.model_validate(old)
    assert episode.turns[0].empty is False and episode.attempt_errors == []


async def test_transient_errors_restart_the_dialogue_with_fresh_agents() -> None:
    built: list[EpisodeContext] = []

    def factory(ctx: EpisodeContext) -> AssistantAgent:
        built.append(ctx)
        error = ConnectionResetError("peer reset") if ctx.attempt == 1 else None
        client = (
            FailingClient(["ok"] * 9, error, fail_on=3)
            if error
            else ReplayChatCompletionClient(["ok"] * 9)
        )
        return AssistantAgent("agent", client)

    episode = await run_episode(
        PERSONA,
        user_factory=user_with([1] * 9),
        agent_factory=factory,
        rules=RLVER_TRAIN,
        retry=FAST,
    )
    assert episode.termination is TerminationReason.MAX_TURNS
    assert episode.attempts == 2 and [c.attempt for c in built] == [1, 2]
    assert episode.attempt_errors == ["ConnectionResetError: peer reset"]
    assert len(episode.turns) == 19  # the abandoned attempt's turns are not mixed in


async def test_a_stuck_turn_times_out_and_is_recorded_after_the_last_attempt() -> None:
    episode = await run_episode(
        PERSONA,
        user_factory=user_with([1]),
        agent_factory=assistant(lambda: SlowClient(["never"])),
        rules=RLVER_TRAIN,
        retry=RetryPolicy(max_attempts=2, base_delay_s=0, turn_timeout_s=0.05),
    )
    assert episode.termination is TerminationReason.ERROR and episode.attempts == 2
    assert episode.error == "TimeoutError: agent 'agent' took longer than 0.05s"
    assert episode.attempt_errors == [episode.error]


async def test_a_user_that_never_ends_is_bounded_and_an_error() -> None:
    class EndlessUser(ScriptedUser):
        async def on_messages_stream(self, messages, cancellation_token):  # type: ignore[override]
            async for item in super().on_messages_stream(messages, cancellation_token):
                if isinstance(item, Response):
                    meta = {**item.chat_message.metadata, "terminal": "false"}
                    message = item.chat_message.model_copy(update={"metadata": meta})
                    yield Response(chat_message=message)
                else:
                    yield item

    rules = EmotionRules(name="short", initial_score=40, max_turns=3)
    episode = await run_episode(
        PERSONA,
        user_factory=lambda ctx: EndlessUser(rules),
        agent_factory=assistant(lambda: ReplayChatCompletionClient(["ok"] * 9)),
        rules=rules,
    )
    assert episode.termination is TerminationReason.ERROR
    assert "did not end the dialogue within 3 turns" in (episode.error or "")
    assert len(episode.turns) == 7


async def test_a_user_whose_appraisal_and_metadata_disagree_is_an_error() -> None:
    class InconsistentUser(ScriptedUser):
        async def on_messages_stream(self, messages, cancellation_token):  # type: ignore[override]
            async for item in super().on_messages_stream(messages, cancellation_token):
                if isinstance(item, AppraisalEvent):
                    step = item.step.model_copy(update={"score": item.step.score + 1})
                    yield item.model_copy(update={"step": step})
                else:
                    yield item

    episode = await run_episode(
        PERSONA,
        user_factory=lambda ctx: InconsistentUser(ctx.rules, change=changes_in_order([3])),
        agent_factory=assistant(lambda: ReplayChatCompletionClient(["ok"])),
        rules=RLVER_TRAIN,
    )
    assert episode.termination is TerminationReason.ERROR
    assert "disagrees with its reply metadata (turn 1, score 33)" in (episode.error or "")


async def test_a_user_without_emotion_metadata_is_an_error() -> None:
    episode = await run_episode(
        PERSONA,
        user_factory=user_with([1], emit=False),
        agent_factory=assistant(lambda: ReplayChatCompletionClient(["ok"])),
        rules=RLVER_TRAIN,
    )
    assert episode.termination is TerminationReason.ERROR
    assert "emotion_score" in (episode.error or "") and episode.turns == []


async def test_a_factory_error_and_clashing_names_are_recorded() -> None:
    def broken(ctx: EpisodeContext) -> AssistantAgent:
        raise KeyError("model_client")

    episode = await run_episode(
        PERSONA, user_factory=user_with([1]), agent_factory=broken, rules=RLVER_TRAIN
    )
    assert episode.error == "KeyError: 'model_client'"
    clash = await run_episode(
        PERSONA,
        user_factory=user_with([1], name="agent"),
        agent_factory=assistant(lambda: ReplayChatCompletionClient(["ok"])),
        rules=RLVER_TRAIN,
    )
    assert clash.error == "ValueError: user and agent share the name 'agent'; names must differ"


async def test_cancellation_propagates_instead_of_being_recorded() -> None:
    task = asyncio.create_task(
        run_episode(
            PERSONA,
            user_factory=user_with([1]),
            agent_factory=assistant(lambda: SlowClient(["x"])),
            rules=RLVER_TRAIN,
        )
    )
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _status_error(cls: type[openai.APIStatusError], status: int) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    return cls("server", response=httpx.Response(status, request=request), body=None)


def test_transient_errors_are_recognised_through_the_cause_chain() -> None:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    assert is_transient(TimeoutError())
    assert is_transient(ConnectionResetError())
    assert is_transient(httpx.ReadTimeout("slow", request=request))
    assert is_transient(openai.APIConnectionError(request=request))
    assert is_transient(_status_error(openai.InternalServerError, 503))
    assert not is_transient(_status_error(openai.BadRequestError, 400))
    assert not is_transient(ValueError("parse"))
    try:
        try:
            raise ConnectionError("down")
        except ConnectionError as inner:
            raise RuntimeError("appraiser failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    try:
        try:
            raise ConnectionError("down")
        except ConnectionError:
            raise ValueError("bad reply") from None
    except ValueError as suppressed:
        assert not is_transient(suppressed)
    assert describe_error(TimeoutError()) == "TimeoutError"


def test_retry_delays_grow_and_stay_within_jitter() -> None:
    import random

    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=5.0, jitter=0.5)
    rng = random.Random(0)
    delays = [policy.delay_s(k, rng) for k in (2, 3, 4, 5, 6)]
    for delay, full in zip(delays, [1, 2, 4, 5, 5], strict=True):
        assert full * 0.5 <= delay <= full


def test_episode_lines_round_trip() -> None:
    episode = Episode(persona_id="p", sample=3, termination=TerminationReason.ERROR, error="X: y")
    again = Episode.model_validate_json(episode.model_dump_json())
    assert again == episode and again.key == ("p", 3) and not again.ok
    assert EpisodeConfig().rules == {}


JUDGE = "Intent: support\nFit: close\nReaction: warmer\nChange: +{}"


def real_pair(changes: Sequence[int]):
    """A SimulatedUser with an LLM appraiser and a thinking EmpatheticAgent, all scripted."""

    def user(ctx: EpisodeContext) -> SimulatedUser:
        judge = LLMAppraiser(ReplayChatCompletionClient([JUDGE.format(c) for c in changes]))
        voice = ReplayChatCompletionClient([f"reply {i}" for i in range(len(changes) + 1)])
        return SimulatedUser("user", voice, ctx.persona, rules=ctx.rules, appraiser=judge)

    def agent(ctx: EpisodeContext) -> EmpatheticAgent:
        replies = [f"<think>t{i}</think>said {i}" for i in range(len(changes))]
        return EmpatheticAgent("friend", RecordingClient(replies), think=True)

    return user, agent


async def test_the_runner_plays_what_a_dialogue_team_plays() -> None:
    rules = EmotionRules(name="t", initial_score=70, max_turns=6)
    user_factory, agent_factory = real_pair([10, 10, 10])
    episode = await run_episode(
        PERSONA, user_factory=user_factory, agent_factory=agent_factory, rules=rules
    )
    assert episode.termination is TerminationReason.SUCCESS and episode.final_score == 100
    assert [t.text for t in episode.turns if t.speaker == "agent"] == ["said 0", "said 1", "said 2"]
    assert [t.thought for t in episode.turns if t.speaker == "agent"] == ["t0", "t1", "t2"]
    assert [t.emotion_after for t in episode.turns[2::2]] == [80, 90, 100]
    assert episode.turns[2].appraisal == {
        "intent": "support",
        "fit": "close",
        "reaction": "warmer",
        "change": 10,
        "raw_change": 10,
    }
    agent_turns = [t for t in episode.turns if t.speaker == "agent"]
    assert all(t.generations and len(t.generations) == 1 for t in agent_turns)

    context = EpisodeContext(persona=PERSONA, rules=rules)
    team = dialogue_team(user_factory(context), agent_factory(context), max_messages=20)
    result = await team.run()
    chat = [m for m in result.messages if isinstance(m, BaseChatMessage)]
    assert [m.to_text() for m in chat] == [t.text for t in episode.turns]
    events = [m for m in result.messages if isinstance(m, AppraisalEvent)]
    assert [e.step.score for e in events] == [t.emotion_after for t in episode.turns[2::2]]


async def test_a_clients_own_timeout_keeps_its_message_and_is_retried() -> None:
    episode = await run_episode(
        PERSONA,
        user_factory=user_with([1]),
        agent_factory=assistant(lambda: FailingClient(["x"], TimeoutError("read timed out"))),
        rules=RLVER_TRAIN,
        retry=FAST,
    )
    assert episode.error == "TimeoutError: read timed out" and episode.attempts == 3
    assert episode.attempt_errors == ["TimeoutError: read timed out"] * 2
