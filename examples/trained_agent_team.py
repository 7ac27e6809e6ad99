"""A trained policy dropped into an ordinary AutoGen team.

``rlver-train`` writes a plain Hugging Face checkpoint (``<output_dir>/final``) with its
tokenizer and chat template. Any chat client loads it: here the local client, as
``ModelSpec(kind="local")``; on GPUs, ``vllm serve <output_dir>/final`` and ``kind: openai``.
The friend samples as in training (the training configuration's system prompt and stop
strings), answers first, and a plain AssistantAgent coach on the embedded model follows:

    python examples/trained_agent_team.py --checkpoint runs/smollm2-cpu-grpo/final
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.messages import TextMessage
from autogen_agentchat.teams import RoundRobinGroupChat

from rlver_agents.agents.agent import EmpatheticAgent
from rlver_agents.models.spec import ModelSpec, build_chat_client
from training.config import load_train_config

TASK = "I worked all weekend on the launch and nobody on my team even said thanks."
COACH = (
    "You are a practical coach in a group chat. After the friend has replied, suggest one "
    "small, concrete step the person could take today. One sentence, no lists."
)


async def main(checkpoint: Path, config: Path, max_new_tokens: int) -> None:
    training = load_train_config(config)
    trained = build_chat_client(
        ModelSpec(
            kind="local",
            model=str(checkpoint),
            max_new_tokens=max_new_tokens,
            stop=training.rollout.stop,
            seed=0,
        )
    )
    coach_client = build_chat_client(
        ModelSpec(kind="embedded", max_new_tokens=max_new_tokens, repetition_penalty=1.15, seed=1)
    )
    friend = EmpatheticAgent("friend", trained, system_message=training.policy.system_message)
    coach = AssistantAgent("coach", coach_client, system_message=COACH)
    team = RoundRobinGroupChat([friend, coach], termination_condition=MaxMessageTermination(3))
    result = await team.run(task=TASK)
    for message in result.messages:
        if isinstance(message, TextMessage):
            print(f"{message.source}: {message.content}")
    print(f"-- stopped: {result.stop_reason}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/smollm2-cpu-grpo/final"))
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "training/configs/smollm2-cpu-grpo.yaml",
        help="The training configuration the checkpoint came from.",
    )
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    asyncio.run(main(args.checkpoint, args.config, args.max_new_tokens))
