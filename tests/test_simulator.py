"""SimulatedUser on scripted models: exact trajectories, teams, state and serialisation."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from autogen_agentchat.agents import AssistantAgent, BaseChatAgent
from autogen_agentchat.base import Response, TerminatedException
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, StopMessage, TextMessage
from autogen_core import CancellationToken
from autogen_core.models import ModelInfo, SystemMessage
from autogen_ext.models.replay import ReplayChatCompletionClient
from pydantic import ValidationError

from rlver_agents import prompts
from rlver_agents.agents.reply_guard import ReplyGuard, stock_reply
from rlver_agents.agents.simulator import (
    EmotionTermination,
    EmptyReplyError,
    SimulatedUser,
    dialogue_team,
)
from rlver_agents.appraisers.appraisal import (
    EMPTY_MESSAGE_NOTE,
    FENCE_CLOSE,
    FENCE_OPEN,
    Appraisal,
    AppraisalError,
    AppraisalEvent,
    BaseAppraiser,
    DialogueTurn,
    LLMAppraiser,
)
from rlver_agents.appraisers.embedding_appraiser import EmbeddingAppraiser
from rlver_agents.emotion import (
    RLVER_TRAIN,
    SAGE,
    Band,
    EmotionMetadata,
    EmotionRules,
    EmotionState,
    TerminationReason,
    initial_state,
)
from rlver_agents.personas import Difficulty, Persona, bundled_personas_dir, load_personas

FIRST_TALK = "My landlord just raised the rent again and I can't sleep."


def _persona() -> Persona:
    path = bundled_personas_dir() / "test.jsonl"
    if path.is_file():
        with_opening = [p for p in load_personas(path) if p.first_talk and p.language == "en"]
        if with_opening:
            return with_opening[0]
    return Persona(
        id="t-1",
        name="Dana",
        profile="Dana is a 31-year-old nurse who rents a small flat.",
        scene="Her landlord raised the rent for the second time this year.",
        hidden_need="She wants someone to take her worry seriously and help her plan a reply.",
        traits=("tired", "direct"),
        first_talk=FIRST_TALK,
    )


PERSONA = _persona()


def judge(changes: Sequence[int]) -> ReplayChatCompletionClient:
    """A scripted judge that answers in the labelled text format."""
    return ReplayChatCompletionClient(
        [
            f"Intent: turn {i}\nFit: fit {i}\nReaction: reaction {i}\nChange: {c:+d}"
            for i, c in enumerate(changes, start=1)
        ]
    )


def talker(count: int) -> ReplayChatCompletionClient:
    return ReplayChatCompletionClient([f"user line {i}" for i in range(1, count + 1)])


def make_user(
    changes: Sequence[int], rules: EmotionRules = SAGE, persona: Persona = PERSONA
) -> SimulatedUser:
    return SimulatedUser(
        "user",
        talker(len(changes)),
        persona,
        rules=rules,
        appraiser=LLMAppraiser(judge(changes)),
    )


async def say(
    user: SimulatedUser, text: str | None
) -> tuple[list[BaseAgentEvent | BaseChatMessage], TextMessage]:
    """One user turn: everything streamed, and the reply."""
    incoming = [TextMessage(content=text, source="agent")] if text is not None else []
    events: list[BaseAgentEvent | BaseChatMessage] = []
    reply: TextMessage | None = None
    async for item in user.on_messages_stream(incoming, CancellationToken()):
        if isinstance(item, Response):
            assert isinstance(item.chat_message, TextMessage)
            reply = item.chat_message
        else:
            events.append(item)
    assert reply is not None
    return events, reply


async def run_dialogue(user: SimulatedUser) -> list[EmotionMetadata]:
    """Open, then answer scripted agent lines until the user is terminal."""
    _, opening = await say(user, None)
    trajectory = [EmotionMetadata.from_metadata(opening.metadata)]
    turn = 0
    while not user.state.terminal:
        turn += 1
        events, reply = await say(user, f"agent line {turn}")
        assert [type(e) for e in events] == [AppraisalEvent]
        trajectory.append(EmotionMetadata.from_metadata(reply.metadata))
    assert all(m is not None for m in trajectory)
    return [m for m in trajectory if m is not None]


# --- trajectories ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "changes", "scores", "reason", "band"),
    [
        (SAGE, [10, 10, 15, 10, 10, 10], [40, 50, 60, 70, 80, 90, 100], "success", Band.S),
        (SAGE, [-10, 3, -10, -10, -10], [40, 30, 33, 23, 13, 3], "failure", Band.F),
        (SAGE, [1, 2, -1, 0, 3, -2, 1, 1, 0, 5], [40, 41, 43, 42, 42, 45, 43, 44, 45, 45, 50],
         "max_turns", Band.B),
        (RLVER_TRAIN, [10, 10, 10, 10, 10, 10, 10], [30, 40, 50, 60, 70, 80, 90, 100],
         "success", Band.S),
        (RLVER_TRAIN, [-10, -10, -2], [30, 20, 10, 8], "failure", Band.F),
        (RLVER_TRAIN, [5, -3, 10, 2, 0, 4, -1, 3, 6], [30, 35, 32, 42, 44, 44, 48, 47, 50, 56],
         "max_turns", Band.B),
    ],
)  # fmt: skip
async def test_exact_score_trajectories(
    rules: EmotionRules,
    changes: list[int],
    scores: list[int],
    reason: str,
    band: Band,
) -> None:
    user = make_user(changes, rules)
    trajectory = await run_dialogue(user)
    assert [m.score for m in trajectory] == scores
    assert [m.turn for m in trajectory] == list(range(len(scores)))
    assert trajectory[0].change == 0 and not trajectory[0].terminal
    assert [m.terminal for m in trajectory] == [False] * (len(scores) - 1) + [True]
    assert trajectory[-1].reason == TerminationReason(reason)
    assert trajectory[-1].band is band
    assert user.state.score == scores[-1] and user.emotion is user.state
    assert [s.raw_change for s in user.state.steps] == changes, "the judge's own numbers"
    assert all(abs(s.applied_change) <= 10 for s in user.state.steps)


async def test_appraisal_event_carries_verdict_and_step() -> None:
    user = make_user([15])
    await say(user, None)
    events, reply = await say(user, "I'm listening.")
    (event,) = events
    assert isinstance(event, AppraisalEvent)
    assert event.appraisal == Appraisal(
        intent="turn 1", fit="fit 1", reaction="reaction 1", change=10, raw_change=15
    )
    assert (event.step.raw_change, event.step.applied_change, event.step.score) == (15, 10, 50)
    assert event.to_text() == "turn 1: change +15 (applied +10), emotion 40 -> 50 [B]; reaction 1"
    assert reply.metadata["emotion_change"] == "10"


async def test_goodbye_and_last_turn_instructions_reach_the_reply_prompt() -> None:
    talk = talker(2)
    user = SimulatedUser(
        "user", talk, PERSONA, rules=SAGE, appraiser=LLMAppraiser(judge([10, -10]))
    )
    user._state = EmotionState(score=95, band=Band.A, turn=3)
    user._history = [DialogueTurn(role="user", text=FIRST_TALK)]
    await say(user, "That sounds exhausting.")
    system = talk.create_calls[0]["messages"][0]
    assert isinstance(system, SystemMessage)
    assert prompts.section("bands", "S", "en") in system.content
    assert user.state.reason is TerminationReason.SUCCESS

    talk = talker(1)
    rules = EmotionRules(max_turns=1)
    user = SimulatedUser("user", talk, PERSONA, rules=rules, appraiser=LLMAppraiser(judge([2])))
    await say(user, None)
    _, reply = await say(user, "Hm.")
    assert (
        prompts.section("bands", "last_turn", "en") in talk.create_calls[0]["messages"][0].content
    )
    assert reply.content == "user line 1"
    assert reply.metadata["termination_reason"] == "max_turns"


async def test_a_stock_closing_spares_the_model_the_line_after_the_last_appraisal() -> None:
    """Only the closing line changes: same scores, every earlier line the model's."""
    changes = [3, -4, 2]
    rules = EmotionRules(max_turns=3)
    talk = talker(len(changes))
    user = SimulatedUser(
        "user",
        talk,
        PERSONA,
        rules=rules,
        appraiser=LLMAppraiser(judge(changes)),
        closing="stock",
    )
    model_user = make_user(changes, rules)
    assert [m.score for m in await run_dialogue(user)] == [
        m.score for m in await run_dialogue(model_user)
    ]
    assert len(talk.create_calls) == len(changes) - 1
    origins = [turn.role for turn in user.history]
    assert origins == ["user", "agent", "user", "agent", "user", "agent", "user"]
    closing = user.history[-1].text
    assert closing in prompts.section("stock_replies", user.state.band.value, "en").splitlines()
    config = user.dump_component()
    assert SimulatedUser.load_component(config)._closing == "stock"


async def test_terminal_user_refuses_to_continue() -> None:
    user = make_user([-10, -10, -10, -10])
    await run_dialogue(user)
    with pytest.raises(RuntimeError, match="dialogue is over \\(failure\\)"):
        await say(user, "wait")


async def test_second_call_without_agent_message_is_an_error() -> None:
    user = make_user([1])
    await say(user, None)
    with pytest.raises(ValueError, match="expected a new message"):
        await say(user, None)


class Generous(BaseAppraiser):
    """An appraiser that loves everything, an empty message included."""

    async def appraise(self, **_: object) -> Appraisal:  # type: ignore[override]
        return Appraisal(change=10, raw_change=40, reaction="wonderful")


EMPTY_TEXTS = ["", "  \n ", "<think>say nothing</think>"]


@pytest.mark.parametrize(
    ("appraiser_kind", "text"),
    [(kind, text) for kind in ("llm", "generous") for text in EMPTY_TEXTS] + [("embedding", "")],
)
async def test_an_empty_agent_message_is_a_turn_that_never_gains(
    appraiser_kind: str, text: str
) -> None:
    scripted_judge = judge([7])
    appraiser = {
        "llm": lambda: LLMAppraiser(scripted_judge),
        "generous": Generous,
        "embedding": EmbeddingAppraiser,
    }[appraiser_kind]()
    talk = talker(1)
    user = SimulatedUser("user", talk, PERSONA, appraiser=appraiser)
    await say(user, None)
    events, reply = await say(user, text)

    (event,) = events
    assert isinstance(event, AppraisalEvent)
    assert event.appraisal.change <= 0 and event.step.raw_change <= 0
    assert event.step.applied_change <= 0
    assert int(reply.metadata["emotion_score"]) <= SAGE.initial_score
    assert reply.metadata["turn"] == "1" and reply.content == "user line 1"
    assert user.history[-2] == DialogueTurn(role="agent", text="")
    # the user's own model is shown the silence, not a blank message
    replied = talk.create_calls[0]["messages"][-1]
    assert replied.content == EMPTY_MESSAGE_NOTE["en"]
    if appraiser_kind == "llm":
        judged = scripted_judge.create_calls[0]["messages"][-1].content
        assert f"{FENCE_OPEN}\n{EMPTY_MESSAGE_NOTE['en']}\n{FENCE_CLOSE}" in judged
        assert event.appraisal.reaction == "reaction 1", "the judge's words are kept"


async def test_a_loss_for_an_empty_message_stands_and_later_turns_see_the_silence() -> None:
    scripted_judge = judge([-4, 2])
    user = SimulatedUser("user", talker(2), PERSONA, appraiser=LLMAppraiser(scripted_judge))
    await say(user, None)
    events, _ = await say(user, "")
    assert isinstance(events[0], AppraisalEvent) and events[0].step.raw_change == -4
    await say(user, "Sorry, I am here.")
    transcript = scripted_judge.create_calls[1]["messages"][-1].content
    assert f"Supporter: {EMPTY_MESSAGE_NOTE['en']}" in transcript
    assert [s.raw_change for s in user.state.steps] == [-4, 2]


# --- what the user sees and says ---------------------------------------------------------------


async def test_user_sees_only_visible_text() -> None:
    scripted_judge = judge([2])
    talk = talker(1)
    user = SimulatedUser("user", talk, PERSONA, appraiser=LLMAppraiser(scripted_judge))
    await say(user, None)
    await say(user, "<think>flatter them, then pivot</think>That sounds really hard.")
    assert user.history[-2] == DialogueTurn(role="agent", text="That sounds really hard.")
    judged = "\n".join(str(m.content) for m in scripted_judge.create_calls[0]["messages"])
    replied = "\n".join(str(m.content) for m in talk.create_calls[0]["messages"])
    assert "flatter" not in judged and "flatter" not in replied
    assert "That sounds really hard." in judged and "That sounds really hard." in replied


async def test_generated_opening_when_persona_has_no_first_talk() -> None:
    persona = PERSONA.model_copy(update={"first_talk": None})
    talk = ReplayChatCompletionClient(['"User: Ugh. Long week."'])
    user = SimulatedUser("user", talk, persona, appraiser=LLMAppraiser(judge([])))
    events, opening = await say(user, None)
    assert events == []
    assert opening.content == "Ugh. Long week."
    expected = EmotionMetadata.from_state(initial_state(SAGE)).to_metadata()
    assert opening.metadata == {**expected, "reply_origin": "model"}
    assert opening.metadata["turn"] == "0" and opening.metadata["emotion_change"] == "0"
    system = talk.create_calls[0]["messages"][0].content
    assert persona.profile in system and persona.hidden_need not in system


async def test_guarded_repeated_line_is_regenerated_once_with_a_note() -> None:
    first_talk = PERSONA.first_talk or ""
    talk = ReplayChatCompletionClient([f"  {first_talk.upper()} ", "Okay, that helps a bit."])
    user = SimulatedUser(
        "user", talk, PERSONA, appraiser=LLMAppraiser(judge([3])), reply_guard=ReplyGuard()
    )
    _, opening = await say(user, None)
    assert opening.metadata["reply_origin"] == "persona"
    _, reply = await say(user, "Tell me more.")
    assert reply.content == "Okay, that helps a bit."
    assert reply.metadata["reply_origin"] == "model_retry"
    assert len(talk.create_calls) == 2
    retry_system = talk.create_calls[1]["messages"][0].content
    assert prompts.render("reply_retry", "en", previous=first_talk) in retry_system


async def test_guarded_empty_replies_fall_back_to_a_goodbye_at_s() -> None:
    talk = ReplayChatCompletionClient(["<think>hmm</think>", "   "])
    user = SimulatedUser(
        "user", talk, PERSONA, appraiser=LLMAppraiser(judge([10])), reply_guard=ReplyGuard()
    )
    user._state = EmotionState(score=95, band=Band.A, turn=2)
    user._history = [DialogueTurn(role="user", text=FIRST_TALK)]
    _, reply = await say(user, "You did nothing wrong.")
    assert reply.content == "Thank you, really. I feel a lot better. Bye for now."
    assert reply.metadata["terminal"] == "true"
    assert reply.metadata["reply_origin"] == "stock"


async def test_unguarded_empty_reply_is_asked_again_then_fails_the_turn() -> None:
    talk = ReplayChatCompletionClient(["<think>hmm</think>", "Fine. I suppose."])
    user = SimulatedUser("user", talk, PERSONA, appraiser=LLMAppraiser(judge([2, 2])))
    await say(user, None)
    _, reply = await say(user, "How are you?")
    assert (reply.content, reply.metadata["reply_origin"]) == ("Fine. I suppose.", "model_retry")

    talk = ReplayChatCompletionClient(["", "<think>still nothing</think>"])
    user = SimulatedUser("user", talk, PERSONA, appraiser=LLMAppraiser(judge([2])))
    await say(user, None)
    with pytest.raises(EmptyReplyError, match="empty reply 2 times"):
        await say(user, "How are you?")
    assert len(user.history) == 1, "no line was put in the model's mouth"


async def test_guarded_opening_falls_back_to_a_stock_opening() -> None:
    persona = PERSONA.model_copy(update={"first_talk": None})
    talk = ReplayChatCompletionClient(["", ""])
    user = SimulatedUser(
        "user", talk, persona, appraiser=LLMAppraiser(judge([])), reply_guard=ReplyGuard()
    )
    _, opening = await say(user, None)
    assert opening.content == stock_reply("opening", "en", [])
    assert opening.metadata["reply_origin"] == "stock"


SIX_SENTENCES = (
    "Honestly I don't know. The rent thing has me spinning. I checked my savings twice today. "
    "My sister says I should move. But this is my home. I just want someone to get it."
)


async def test_served_model_reply_is_kept_whole_without_a_guard() -> None:
    talk = ReplayChatCompletionClient([SIX_SENTENCES, f'"{FIRST_TALK}"'])
    user = SimulatedUser("user", talk, PERSONA, appraiser=LLMAppraiser(judge([1, -1])))
    assert user.reply_guard is None
    await say(user, None)
    _, reply = await say(user, "What's on your mind?")
    assert reply.content == SIX_SENTENCES
    assert reply.metadata["reply_origin"] == "model"
    _, copy = await say(user, "Say that again?")
    assert copy.content == FIRST_TALK, "a served model's line is its own, even a repeat"
    assert copy.metadata["reply_origin"] == "model"
    assert len(talk.create_calls) == 2


async def test_guard_trims_a_rambling_reply_and_says_so() -> None:
    talk = ReplayChatCompletionClient([SIX_SENTENCES])
    user = SimulatedUser(
        "user",
        talk,
        PERSONA,
        appraiser=LLMAppraiser(judge([1])),
        reply_guard=ReplyGuard(max_sentences=2),
    )
    await say(user, None)
    _, reply = await say(user, "What's on your mind?")
    assert reply.content == "Honestly I don't know. The rent thing has me spinning."
    assert reply.metadata["reply_origin"] == "trimmed"
    assert user.history[-1].text == reply.content


async def test_a_guarded_user_that_parrots_the_agent_twice_gets_an_unused_stock_line() -> None:
    agent_line = "It sounds like the night shifts have been wearing you down for weeks now."
    talk = ReplayChatCompletionClient(
        [
            agent_line,  # a copy of the agent's message
            "It sounds like the night shifts have been wearing you down for weeks!",  # near copy
            "I'm not sure that helps.",
        ]
    )
    user = SimulatedUser(
        "user", talk, PERSONA, appraiser=LLMAppraiser(judge([-5, -5])), reply_guard=ReplyGuard()
    )
    await say(user, None)
    _, first = await say(user, agent_line)
    assert first.content == stock_reply("C", "en", [FIRST_TALK, agent_line])
    assert first.content != agent_line and first.metadata["emotion_band"] == "C"
    assert first.metadata["reply_origin"] == "stock"
    history_texts = [t.text for t in user.history]
    assert history_texts.count(first.content) == 1
    _, second = await say(user, "Have you tried sleeping more?")
    assert second.content == "I'm not sure that helps."
    assert second.metadata["reply_origin"] == "model"


def test_the_stock_line_chosen_repeats_the_dialogue_least() -> None:
    earlier = [
        "That's not really what I meant.",
        "I don't think that is fair to me.",
        "You're not really listening, are you.",
        "Okay, sure. Whatever.",
    ]
    assert stock_reply("C", "en", earlier) == "I don't think you get it."


def test_stock_lines_are_not_reused_while_unused_ones_remain() -> None:
    for language in ("en", "zh"):
        used: list[str] = []
        for _ in range(3):
            line = stock_reply("B", language, used)
            assert line not in used
            used.append(line)


async def test_usage_is_summed_over_calls() -> None:
    first_talk = PERSONA.first_talk or ""
    talk = ReplayChatCompletionClient([first_talk, "new words here"])
    user = SimulatedUser(
        "user", talk, PERSONA, appraiser=LLMAppraiser(judge([1])), reply_guard=ReplyGuard()
    )
    await say(user, None)
    _, reply = await say(user, "Go on.")
    assert reply.models_usage is not None
    assert reply.models_usage.completion_tokens == len(first_talk.split()) + 3


# --- teams -------------------------------------------------------------------------------------


def scripted_client(lines: int) -> ReplayChatCompletionClient:
    return ReplayChatCompletionClient([f"I'm here with you ({i})." for i in range(lines)])


def scripted_agent(lines: int) -> AssistantAgent:
    return AssistantAgent("agent", scripted_client(lines))


@pytest.mark.parametrize(
    ("changes", "stop_reason", "user_messages"),
    [
        ([10, 10, 10, 10, 10, 10], "success: emotion 100", 7),
        ([-10, -10, -10, -10], "failure: emotion 0", 5),
        ([1] * 10, "max_turns: emotion 50", 11),
    ],
)
async def test_team_stops_on_goodbye_with_reason(
    changes: list[int], stop_reason: str, user_messages: int
) -> None:
    user = make_user(changes)
    client = scripted_client(len(changes))
    agent = AssistantAgent("agent", client)
    team = dialogue_team(user, agent)
    result = await team.run()
    assert result.stop_reason == stop_reason
    said = [m for m in result.messages if isinstance(m, TextMessage) and m.source == "user"]
    assert len(said) == user_messages
    assert said[-1].metadata["terminal"] == "true"
    events = [m for m in result.messages if isinstance(m, AppraisalEvent)]
    assert [e.step.raw_change for e in events] == changes
    assert isinstance(result.messages[-1], TextMessage) and result.messages[-1].source == "user"
    seen = "\n".join(str(m.content) for call in client.create_calls for m in call["messages"])
    assert "user line 1" in seen and "reaction 1" not in seen


async def test_team_message_bound_stops_first() -> None:
    team = dialogue_team(make_user([1] * 10), scripted_agent(10), max_messages=4)
    result = await team.run()
    assert "Maximum number of messages 4" in (result.stop_reason or "")
    assert len([m for m in result.messages if isinstance(m, BaseChatMessage)]) == 4


async def test_emotion_termination_semantics_and_round_trip() -> None:
    condition = EmotionTermination()
    plain = TextMessage(content="hi", source="agent")
    going = TextMessage(content="bye", source="user", metadata=EmotionMetadata(
        score=5, change=-10, band=Band.F, turn=4, terminal=True, reason=TerminationReason.FAILURE
    ).to_metadata())  # fmt: skip
    assert await condition([plain]) is None and not condition.terminated
    stop = await condition([plain, going])
    assert isinstance(stop, StopMessage) and stop.content == "failure: emotion 5"
    assert condition.terminated
    with pytest.raises(TerminatedException):
        await condition([plain])
    await condition.reset()
    assert not condition.terminated
    loaded = EmotionTermination.load_component(condition.dump_component())
    assert isinstance(loaded, EmotionTermination) and not loaded.terminated


# --- state, reset, serialisation ---------------------------------------------------------------


async def test_save_and_load_state_round_trip() -> None:
    user = make_user([4, -2, 6, 1])
    await say(user, None)
    await say(user, "one")
    await say(user, "two")
    saved = json.loads(json.dumps(await user.save_state()))
    twin = SimulatedUser(
        "user",
        ReplayChatCompletionClient(["user line 3"]),
        PERSONA,
        appraiser=LLMAppraiser(ReplayChatCompletionClient(["Change: +6"])),
    )
    await twin.load_state(saved)
    assert twin.state == user.state and twin.history == user.history
    _, a = await say(user, "three")
    _, b = await say(twin, "three")
    assert (a.content, a.metadata) == (b.content, b.metadata)
    assert twin.state == user.state


async def test_on_reset_returns_to_the_initial_state() -> None:
    user = make_user([5, 5], rules=RLVER_TRAIN)
    await say(user, None)
    await say(user, "hello")
    assert user.state.score == 35
    await user.on_reset(CancellationToken())
    assert user.state == initial_state(RLVER_TRAIN) and user.history == ()
    _, opening = await say(user, None)
    assert opening.metadata["emotion_score"] == "30" and opening.metadata["turn"] == "0"


@pytest.mark.parametrize("appraiser_kind", ["llm", "embedding"])
async def test_component_round_trip(appraiser_kind: str) -> None:
    appraiser = (
        LLMAppraiser(judge([3]), max_retries=4) if appraiser_kind == "llm" else EmbeddingAppraiser()
    )
    guard = ReplyGuard(max_sentences=2) if appraiser_kind == "llm" else None
    user = SimulatedUser(
        "sim", talker(1), PERSONA, rules=RLVER_TRAIN, appraiser=appraiser, reply_guard=guard
    )
    model = user.dump_component()
    loaded = BaseChatAgent.load_component(json.loads(model.model_dump_json()))
    assert isinstance(loaded, SimulatedUser)
    assert (loaded.name, loaded.persona, loaded.rules) == ("sim", PERSONA, RLVER_TRAIN)
    assert loaded.reply_guard == guard
    assert type(loaded.appraiser) is type(appraiser)
    assert loaded.dump_component() == model
    if appraiser_kind == "llm":
        await say(loaded, None)
        _, reply = await say(loaded, "hi")
        assert reply.metadata["emotion_score"] == "33"
    assert list(loaded.produced_message_types) == [TextMessage]


async def test_appraiser_without_a_config_works_but_does_not_serialise() -> None:
    class Fixed(BaseAppraiser):
        async def appraise(self, **_: object) -> Appraisal:  # type: ignore[override]
            return Appraisal(change=-4)

    user = SimulatedUser("user", talker(1), PERSONA, appraiser=Fixed())
    await say(user, None)
    _, reply = await say(user, "hm")
    assert reply.metadata["emotion_score"] == "36"
    with pytest.raises(TypeError, match="not a Component"):
        user.dump_component()


# --- LLMAppraiser ------------------------------------------------------------------------------

STRUCTURED = ModelInfo(
    vision=False, function_calling=False, json_output=True, family="unknown", structured_output=True
)


async def appraise_with(client: ReplayChatCompletionClient, max_retries: int = 2) -> Appraisal:
    return await LLMAppraiser(client, max_retries=max_retries).appraise(
        persona=PERSONA,
        history=[DialogueTurn(role="user", text=FIRST_TALK)],
        agent_message="That sounds stressful.",
        state=initial_state(SAGE),
        rules=SAGE,
    )


async def test_structured_output_is_requested_when_supported() -> None:
    client = ReplayChatCompletionClient(
        ['{"intent": "i", "fit": "f", "reaction": "r", "change": 14}'], model_info=STRUCTURED
    )
    assert await appraise_with(client) == Appraisal(
        intent="i", fit="f", reaction="r", change=10, raw_change=14
    )
    assert "raw_change" not in json.dumps(Appraisal.model_json_schema())
    call = client.create_calls[0]
    assert call["json_output"] is Appraisal
    assert prompts.section("appraise_format", "json", "en", min_change=-10, max_change=10) in (
        call["messages"][0].content
    )


async def test_text_format_is_used_without_structured_output() -> None:
    client = judge([-3])
    assert (await appraise_with(client)).change == -3
    assert client.create_calls[0]["json_output"] is None
    assert "Change: <a whole number from -10 to 10" in client.create_calls[0]["messages"][0].content


async def test_unreadable_output_is_retried_then_raises() -> None:
    client = ReplayChatCompletionClient(["no idea", "still no idea", "Change: -2"])
    assert (await appraise_with(client, max_retries=2)).change == -2
    assert len(client.create_calls) == 3
    assert client.create_calls[1]["messages"][-2].content == "no idea"

    client = ReplayChatCompletionClient(["no idea", "Change: ???", "Change: -2"])
    with pytest.raises(AppraisalError) as caught:
        await appraise_with(client, max_retries=1)
    assert caught.value.raw_outputs == ("no idea", "Change: ???")


async def test_appraisal_error_surfaces_and_leaves_state_untouched() -> None:
    user = SimulatedUser(
        "user",
        talker(1),
        PERSONA,
        appraiser=LLMAppraiser(ReplayChatCompletionClient(["?"]), max_retries=0),
    )
    await say(user, None)
    with pytest.raises(AppraisalError):
        await say(user, "hello")
    assert user.state == initial_state(SAGE) and len(user.history) == 1


@pytest.mark.parametrize("language", ["en", "zh"])
async def test_difficulty_paragraph_is_in_the_judge_prompt(language: str) -> None:
    for difficulty in ("simple", "hard"):
        persona = PERSONA.model_copy(
            update={"difficulty": Difficulty(difficulty), "language": language}
        )
        client = judge([1])
        await LLMAppraiser(client).appraise(
            persona=persona,
            history=[],
            agent_message="hi",
            state=initial_state(SAGE),
            rules=SAGE,
        )
        system = client.create_calls[0]["messages"][0].content
        assert prompts.section("difficulty", difficulty, language) in system  # type: ignore[arg-type]


class RejectingJudge(ReplayChatCompletionClient):
    """A structured-output judge whose scripted replies may be errors the client raises."""

    def __init__(self, script: Sequence[str | Exception]) -> None:
        super().__init__([], model_info=STRUCTURED)
        self._script = list(script)

    async def create(self, messages, **kwargs):  # type: ignore[no-untyped-def,override]
        item = self._script.pop(0)
        if isinstance(item, Exception):
            self.create_calls.append({"messages": messages, **kwargs})
            raise item
        self.chat_completions.append(item)
        return await super().create(messages, **kwargs)


def _schema_error(reply: str) -> Exception:
    try:
        Appraisal.model_validate_json(reply)
    except ValidationError as exc:
        return exc
    raise AssertionError(f"{reply!r} validates")


def _cut_off(reply: str) -> Exception:
    from openai import LengthFinishReasonError
    from openai.types.chat import ChatCompletion

    completion = ChatCompletion.model_validate(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "judge",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "length",
                    "message": {"role": "assistant", "content": reply},
                }
            ],
        }
    )
    return LengthFinishReasonError(completion=completion)


async def test_structured_judge_is_asked_again_after_a_schema_error() -> None:
    truncated = '{"intent": "comfort", "fit": "close", "reac'
    client = RejectingJudge([_schema_error(truncated), _cut_off(truncated), '{"change": -4}'])
    appraisal = await appraise_with(client, max_retries=2)
    assert appraisal.change == -4
    assert len(client.create_calls) == 3
    assert all(call["json_output"] is Appraisal for call in client.create_calls)
    assert client.create_calls[1]["messages"][-2].content == truncated, "the judge sees its reply"


async def test_structured_judge_falls_back_to_the_text_reader() -> None:
    labelled = "Intent: comfort\nFit: close\nReaction: a bit lighter\nChange: +3"
    client = RejectingJudge([_schema_error(labelled)])
    appraisal = await appraise_with(client)
    assert (appraisal.change, appraisal.reaction) == (3, "a bit lighter")
    missing = RejectingJudge([_schema_error('{"reaction": "meh"}'), '{"change": 1}'])
    assert (await appraise_with(missing)).change == 1


async def test_structured_judge_gives_up_with_every_raw_reply() -> None:
    client = RejectingJudge([_cut_off('{"cha'), _schema_error('{"change": "lots"}')])
    with pytest.raises(AppraisalError) as caught:
        await appraise_with(client, max_retries=1)
    first, second = caught.value.raw_outputs
    assert first == '{"cha'
    assert second.startswith("(reply rejected by the schema: change:") and "'lots'" in second


async def test_other_judge_errors_are_not_swallowed() -> None:
    client = RejectingJudge([ConnectionError("judge down")])
    with pytest.raises(ConnectionError, match="judge down"):
        await appraise_with(client)
