"""Run a simulation campaign from your own async script and compare two agents.

An ordinary AutoGen ``AssistantAgent`` and the ``EmpatheticAgent`` each talk to the same
simulated users (English test personas), the trajectories go to resumable JSONL files, and
the Sentient benchmark scores both. Runs offline on the embedded SmolLM2-135M model; point
the ``ModelSpec``s at a vLLM server to run it for real.

    python examples/campaign.py
    python examples/campaign.py --personas 6 --max-turns 4 --out runs/compare
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import ChatAgent

from rlver_agents.builders import ClientPool, agent_factory, episode_config, user_factory
from rlver_agents.config import RunConfig
from rlver_agents.emotion import EmotionRules
from rlver_agents.episodes.collector import CollectorConfig, TrajectoryCollector
from rlver_agents.episodes.episode import AgentFactory, EpisodeContext
from rlver_agents.episodes.episode_file import read_episodes
from rlver_agents.evaluation.benchmark import sentient_benchmark
from rlver_agents.models.spec import ModelSpec
from rlver_agents.personas import load_split


def plain_assistant(spec: ModelSpec, pool: ClientPool) -> AgentFactory:
    """Any AutoGen agent can be benchmarked: here, AutoGen's own AssistantAgent."""

    def build(context: EpisodeContext) -> ChatAgent:
        return AssistantAgent("assistant", pool.client(spec, context.seed))

    return build


async def main(personas: int, max_turns: int, out: Path) -> None:
    rules = EmotionRules(name=f"sage_{max_turns}_turns", max_turns=max_turns)
    run = RunConfig(rules=rules, concurrency=4)
    chosen = load_split("test")[:personas]
    pool = ClientPool()
    contenders = {
        "assistant": plain_assistant(run.agent.model, pool),
        "empathetic": agent_factory(run, pool),
    }
    try:
        for name, factory in contenders.items():
            collector = TrajectoryCollector(
                CollectorConfig(output=out / f"{name}.jsonl", rules=rules, concurrency=4),
                user_factory=user_factory(run, pool),
                agent_factory=factory,
                episode_config=episode_config(run),
            )
            await collector.run(chosen)
            report = sentient_benchmark(read_episodes(out / f"{name}.jsonl"), rules)
            print(
                f"{name}: mean final emotion {report.mean_final_score:.1f} over "
                f"{report.n_scored} dialogues, {report.success} successes, "
                f"{report.failure} failures, {report.errored} errors"
            )
    finally:
        await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--personas", type=int, default=3)
    parser.add_argument("--max-turns", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/campaign"))
    args = parser.parse_args()
    asyncio.run(main(args.personas, args.max_turns, args.out))
