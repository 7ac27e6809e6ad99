"""An EmpatheticAgent inside an ordinary AutoGen team, next to a plain AssistantAgent.

The friend thinks privately before it speaks; the coach only ever sees what the friend says.
Runs offline on the embedded SmolLM2-135M model:

    python examples/drop_in_team.py
    python examples/drop_in_team.py --max-new-tokens 24 --language zh
"""

from __future__ import annotations

import argparse
import asyncio

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import TaskResult
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.messages import TextMessage, ThoughtEvent
from autogen_agentchat.teams import RoundRobinGroupChat

from rlver_agents.agents.agent import FORMAT_VIOLATION_KEY, EmpatheticAgent
from rlver_agents.models.local import LocalChatCompletionClient
from rlver_agents.prompts import Language

TASKS: dict[Language, str] = {
    "en": "I worked all weekend on the launch and nobody on my team even said thanks.",
    "zh": "我整个周末都在加班赶项目，结果团队里没有一个人说声谢谢。",
}

COACH_PROMPTS: dict[Language, str] = {
    "en": (
        "You are a practical coach in a group chat. After the friend has replied, suggest one "
        "small, concrete step the person could take today. One sentence, no lists."
    ),
    "zh": (
        "你是群聊里一位务实的教练。等朋友回复之后，给出一个今天就能做的具体小行动。"
        "只说一句话，不要列清单。"
    ),
}


def build_team(
    *, max_new_tokens: int, seed: int, language: Language
) -> tuple[RoundRobinGroupChat, list[LocalChatCompletionClient]]:
    """A friend and a coach taking turns; each agent gets its own cheap client."""
    clients = [
        LocalChatCompletionClient(
            "embedded", temperature=0.7, top_p=0.9, max_new_tokens=max_new_tokens, seed=seed + i
        )
        for i in range(2)
    ]
    friend = EmpatheticAgent("friend", clients[0], think=True, language=language)
    coach = AssistantAgent(
        "coach",
        clients[1],
        system_message=COACH_PROMPTS[language],
        description="Suggests one practical next step.",
    )
    # The task, one reply from the friend, one from the coach.
    team = RoundRobinGroupChat([friend, coach], termination_condition=MaxMessageTermination(3))
    return team, clients


async def main(max_new_tokens: int, seed: int, language: Language) -> None:
    team, clients = build_team(max_new_tokens=max_new_tokens, seed=seed, language=language)
    async for item in team.run_stream(task=TASKS[language]):
        if isinstance(item, ThoughtEvent):
            print(f"  ({item.source} thinks, privately: {item.content!r})")
        elif isinstance(item, TextMessage):
            flag = item.metadata.get(FORMAT_VIOLATION_KEY, "")
            note = f"  [format: {flag}]" if flag else ""
            print(f"{item.source}: {item.content}{note}")
        elif isinstance(item, TaskResult):
            print(f"-- stopped: {item.stop_reason}")
    for client in clients:
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--language", choices=["en", "zh"], default="en")
    args = parser.parse_args()
    asyncio.run(main(args.max_new_tokens, args.seed, args.language))
