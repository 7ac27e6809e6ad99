"""`EmpatheticAgent` with scripted model outputs: privacy of thoughts, fallbacks, state, configs."""

from __future__ import annotations

import json

import pytest
from autogen_agentchat.agents import AssistantAgent, BaseChatAgent
from autogen_agentchat.base import TaskResult
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.messages import (
    ModelClientStreamingChunkEvent,
    TextMessage,
    ThoughtEvent,
)
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    AssistantMessage,
    CreateResult,
    LLMMessage,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_ext.models.replay import ReplayChatCompletionClient

from rlver_agents.agents.agent import (
    FORMAT_VIOLATION_KEY,
    EmpatheticAgent,
    EmpatheticAgentConfig,
    default_system_message,
    fallback_reply,
)
from rlver_agents.thinking import FALLBACK_REPLY, FALLBACK_REPLY_ZH, FormatViolation

THOUGHT = "She feels invisible at work and needs to be heard first."
REPLY = "Ugh, being overlooked like that really stings. What happened?"
WELL_FORMED = f"<think>{THOUGHT}</think>\n{REPLY}"


def _agent(*outputs: str | CreateResult, **kwargs: object) -> EmpatheticAgent:
    return EmpatheticAgent("friend", ReplayChatCompletionClient(list(outputs)), **kwargs)  # type: ignore[arg-type]


def _text(message: LLMMessage) -> str:
    return json.dumps(message.model_dump(), ensure_ascii=False)


async def test_think_mode_yields_thought_event_then_reply_only() -> None:
    result = await _agent(WELL_FORMED, think=True).run(task="Nobody noticed my work again.")
    task, thought, reply = result.messages
    assert isinstance(task, TextMessage)
    assert isinstance(thought, ThoughtEvent)
    assert thought.content == THOUGHT
    assert thought.source == "friend"
    assert isinstance(reply, TextMessage)
    assert reply.content == REPLY
    assert reply.metadata[FORMAT_VIOLATION_KEY] == ""


@pytest.mark.parametrize(
    ("output", "reply", "violation", "thought"),
    [
        (
            "<think>she is hurt and I",
            FALLBACK_REPLY,
            FormatViolation.UNCLOSED_THINK,
            "she is hurt and I",
        ),
        (
            "<think>comfort her</think>  ",
            FALLBACK_REPLY,
            FormatViolation.EMPTY_REPLY,
            "comfort her",
        ),
        ("That sounds hard.", "That sounds hard.", FormatViolation.MISSING_THINK, None),
        ("", FALLBACK_REPLY, FormatViolation.EMPTY_REPLY, None),
        ("stuck</think>I hear you.", "I hear you.", FormatViolation.STRAY_TAG, "stuck"),
    ],
    ids=["unclosed", "empty_reply", "no_tags", "empty_output", "stray_tag"],
)
async def test_malformed_output_gets_fallback_and_flag(
    output: str, reply: str, violation: FormatViolation, thought: str | None
) -> None:
    result = await _agent(output, think=True).run(task="I failed my exam.")
    final = result.messages[-1]
    assert isinstance(final, TextMessage)
    assert final.content == reply
    assert final.metadata[FORMAT_VIOLATION_KEY] == violation.value
    thoughts = [m.content for m in result.messages if isinstance(m, ThoughtEvent)]
    assert thoughts == ([thought] if thought else [])


@pytest.mark.parametrize(
    ("output", "violation"),
    [
        ("<think>she is hurt and I", FormatViolation.UNCLOSED_THINK),
        ("<think>comfort her</think>  ", FormatViolation.EMPTY_REPLY),
        ("", FormatViolation.EMPTY_REPLY),
    ],
)
async def test_without_the_fallback_a_reply_less_output_is_sent_empty(
    output: str, violation: FormatViolation
) -> None:
    agent = _agent(output, think=True, say_fallback=False)
    final = (await agent.run(task="I failed my exam.")).messages[-1]
    assert isinstance(final, TextMessage)
    assert final.content == ""
    assert final.metadata[FORMAT_VIOLATION_KEY] == violation.value
    loaded = BaseChatAgent.load_component(agent.dump_component())
    assert isinstance(loaded, EmpatheticAgent) and loaded.say_fallback is False


async def test_chinese_agent_uses_chinese_prompt_and_fallback() -> None:
    client = ReplayChatCompletionClient(["<think>她很难过"])
    agent = EmpatheticAgent("friend", client, think=True, language="zh")
    result = await agent.run(task="我今天被骂了。")
    final = result.messages[-1]
    assert isinstance(final, TextMessage)
    assert final.content == FALLBACK_REPLY_ZH == fallback_reply("zh")
    assert final.metadata[FORMAT_VIOLATION_KEY] == FormatViolation.UNCLOSED_THINK.value
    system = client.create_calls[0]["messages"][0]
    assert isinstance(system, SystemMessage)
    assert system.content == default_system_message("zh", think=True)
    assert "<think>" in system.content
    assert "朋友" in system.content


async def test_client_side_thought_is_used_and_content_is_the_reply() -> None:
    parsed = CreateResult(
        finish_reason="stop",
        content=REPLY,
        usage=RequestUsage(prompt_tokens=5, completion_tokens=9),
        cached=False,
        thought=THOUGHT,
    )
    agent = _agent(parsed, think=True)
    result = await agent.run(task="Nobody noticed my work again.")
    kinds = [type(m) for m in result.messages]
    assert kinds == [TextMessage, ThoughtEvent, TextMessage]
    assert result.messages[1].content == THOUGHT
    final = result.messages[-1]
    assert isinstance(final, TextMessage)
    assert final.content == REPLY
    assert final.metadata[FORMAT_VIOLATION_KEY] == ""
    stored = (await agent.model_context.get_messages())[-1]
    assert isinstance(stored, AssistantMessage)
    assert (stored.content, stored.thought) == (REPLY, None)


async def test_client_side_thought_with_empty_content_falls_back() -> None:
    parsed = CreateResult(
        finish_reason="length",
        content="",
        usage=RequestUsage(prompt_tokens=5, completion_tokens=9),
        cached=False,
        thought="still thinking",
    )
    result = await _agent(parsed, think=True).run(task="hi")
    final = result.messages[-1]
    assert isinstance(final, TextMessage)
    assert final.content == FALLBACK_REPLY
    assert final.metadata[FORMAT_VIOLATION_KEY] == FormatViolation.EMPTY_REPLY.value


async def test_own_context_keeps_the_reply_not_the_thought() -> None:
    client = ReplayChatCompletionClient([WELL_FORMED, "<think>follow up</think>I'm listening."])
    agent = EmpatheticAgent("friend", client, think=True)
    await agent.run(task="Nobody noticed my work again.")
    await agent.run(task="My boss took the credit.")
    second_prompt = client.create_calls[1]["messages"]
    history = [m for m in second_prompt if not isinstance(m, SystemMessage)]
    assert len(history) == 3
    assert not any(THOUGHT in _text(m) or "<think>" in _text(m) for m in history)
    assistant_turns = [m for m in second_prompt if isinstance(m, AssistantMessage)]
    assert [(m.content, m.thought) for m in assistant_turns] == [(REPLY, None)]


async def test_other_agents_in_a_team_never_see_the_thought() -> None:
    friend_client = ReplayChatCompletionClient([WELL_FORMED, "<think>she is calmer</think>Glad."])
    coach_client = ReplayChatCompletionClient(["Maybe write down what you did this week."])
    friend = EmpatheticAgent("friend", friend_client, think=True)
    coach = AssistantAgent("coach", coach_client, system_message="Give one practical tip.")
    team = RoundRobinGroupChat([friend, coach], termination_condition=MaxMessageTermination(4))
    result = await team.run(task="Nobody noticed my work again.")

    coach_view = await coach.model_context.get_messages()
    assert [m.content for m in coach_view if isinstance(m, UserMessage)] == [
        "Nobody noticed my work again.",
        REPLY,
    ]
    assert not any(THOUGHT in _text(m) for m in coach_view)
    assert not any(THOUGHT in _text(m) for m in coach_client.create_calls[0]["messages"])

    holding_thought = [m for m in result.messages if THOUGHT in str(m.content)]
    assert len(holding_thought) == 1
    assert isinstance(holding_thought[0], ThoughtEvent)
    replies = [m for m in result.messages if isinstance(m, TextMessage) and m.source == "friend"]
    assert [m.content for m in replies] == [REPLY, "Glad."]
    assert all(m.metadata[FORMAT_VIOLATION_KEY] == "" for m in replies)


async def test_streamed_chunks_never_show_the_thought() -> None:
    agent = _agent(
        "<think>she is scared tonight</think> You are not alone.",
        think=True,
        model_client_stream=True,
    )
    agent_stream = agent.run_stream(task="I can't sleep.")
    chunks: list[str] = []
    final: TaskResult | None = None
    async for item in agent_stream:
        if isinstance(item, ModelClientStreamingChunkEvent):
            chunks.append(item.content)
        elif isinstance(item, TaskResult):
            final = item
    assert chunks
    assert "".join(chunks).strip() == "You are not alone."
    assert final is not None
    assert final.messages[-1].content == "You are not alone."


async def test_on_messages_returns_reply_with_thought_in_inner_messages() -> None:
    agent = _agent(WELL_FORMED, think=True)
    response = await agent.on_messages(
        [TextMessage(content="Nobody noticed my work.", source="user")], CancellationToken()
    )
    assert isinstance(response.chat_message, TextMessage)
    assert response.chat_message.content == REPLY
    assert response.inner_messages is not None
    assert [m.content for m in response.inner_messages if isinstance(m, ThoughtEvent)] == [THOUGHT]


async def test_think_false_behaves_as_plain_assistant_with_default_prompt() -> None:
    raw = "<think>x</think>Hey, that sounds like a lot."
    client = ReplayChatCompletionClient([raw])
    plain_client = ReplayChatCompletionClient([raw])
    agent = EmpatheticAgent("friend", client)
    plain = AssistantAgent("friend", plain_client, system_message=default_system_message("en"))
    ours = await agent.run(task="Long day.")
    theirs = await plain.run(task="Long day.")
    assert [(type(m), m.content) for m in ours.messages] == [
        (type(m), m.content) for m in theirs.messages
    ]
    assert not any(isinstance(m, ThoughtEvent) for m in ours.messages)
    final = ours.messages[-1]
    assert isinstance(final, TextMessage)
    assert final.content == raw
    assert final.metadata[FORMAT_VIOLATION_KEY] == ""
    assert client.create_calls[0]["messages"] == plain_client.create_calls[0]["messages"]
    system = client.create_calls[0]["messages"][0]
    assert isinstance(system, SystemMessage)
    assert system.content == default_system_message("en")
    assert "<think>" not in system.content


def test_default_prompts_differ_by_mode_and_language() -> None:
    prompts = {
        (language, think): default_system_message(language, think=think)
        for language in ("en", "zh")
        for think in (False, True)
    }
    assert len(set(prompts.values())) == 4
    assert all("</think>" in text for (_, think), text in prompts.items() if think)
    assert not any("<think>" in text for (_, think), text in prompts.items() if not think)


def test_custom_system_message_wins() -> None:
    agent = _agent(REPLY, think=True, system_message="Be kind.")
    config = agent.dump_component().config
    assert config["system_message"] == "Be kind."


def test_unknown_language_is_rejected() -> None:
    with pytest.raises(ValueError, match="language"):
        _agent(REPLY, language="fr")


async def test_save_and_load_state() -> None:
    agent = _agent(WELL_FORMED, think=True)
    await agent.run(task="Nobody noticed my work again.")
    state = json.loads(json.dumps(await agent.save_state()))
    restored = _agent(REPLY, think=True)
    await restored.load_state(state)
    assert await restored.model_context.get_messages() == await agent.model_context.get_messages()
    assert not any(THOUGHT in _text(m) for m in await restored.model_context.get_messages())


async def test_component_round_trip_keeps_think_and_language() -> None:
    agent = _agent(WELL_FORMED, think=True, language="zh", description="a friend")
    dumped = agent.dump_component()
    assert dumped.provider == "rlver_agents.agents.EmpatheticAgent"
    assert dumped.config["think"] is True
    assert dumped.config["language"] == "zh"
    loaded = BaseChatAgent.load_component(json.loads(dumped.model_dump_json()))
    assert isinstance(loaded, EmpatheticAgent)
    assert (loaded.think, loaded.language, loaded.description) == (True, "zh", "a friend")
    assert loaded.dump_component() == dumped
    result = await loaded.run(task="我今天被骂了。")
    assert result.messages[-1].content == REPLY


def test_minimal_config_uses_the_packaged_prompt() -> None:
    model_client = ReplayChatCompletionClient([REPLY]).dump_component().model_dump()
    agent = BaseChatAgent.load_component(
        {
            "provider": "rlver_agents.agents.EmpatheticAgent",
            "component_type": "agent",
            "config": {"name": "friend", "model_client": model_client, "think": True},
        }
    )
    assert isinstance(agent, EmpatheticAgent)
    config = EmpatheticAgentConfig.model_validate(agent.dump_component().config)
    assert config.system_message == default_system_message("en", think=True)
    assert (config.think, config.language) == (True, "en")


async def test_reflection_after_a_tool_call_is_split_too() -> None:
    def weather(city: str) -> str:
        """Today's weather in a city."""
        return f"Sunny in {city}."

    call = CreateResult(
        finish_reason="function_calls",
        content=[FunctionCall(id="1", name="weather", arguments='{"city": "Oslo"}')],
        usage=RequestUsage(prompt_tokens=1, completion_tokens=1),
        cached=False,
    )
    client = ReplayChatCompletionClient(
        [call, "<think>cheer her up with the good news</think>Good news: it's sunny in Oslo!"],
        model_info=ModelInfo(
            vision=False,
            function_calling=True,
            json_output=False,
            family="unknown",
            structured_output=False,
        ),
    )
    agent = EmpatheticAgent("friend", client, think=True, tools=[weather], reflect_on_tool_use=True)
    result = await agent.run(task="Will my trip to Oslo be rained out?")
    final = result.messages[-1]
    assert isinstance(final, TextMessage)
    assert final.content == "Good news: it's sunny in Oslo!"
    assert final.metadata[FORMAT_VIOLATION_KEY] == ""
    thoughts = [m.content for m in result.messages if isinstance(m, ThoughtEvent)]
    assert thoughts == ["cheer her up with the good news"]
    stored = (await agent.model_context.get_messages())[-1]
    assert isinstance(stored, AssistantMessage)
    assert stored.content == "Good news: it's sunny in Oslo!"
