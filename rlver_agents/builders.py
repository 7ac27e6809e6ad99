"""Turn a :class:`RunConfig` into fresh agents for each dialogue.

Every dialogue gets new agents and new model clients: clients are cheap (a local model is
loaded once per process and shared), and per-dialogue clients keep token records apart.
"""

from __future__ import annotations

from autogen_agentchat.base import ChatAgent

from rlver_agents.agent import EmpatheticAgent
from rlver_agents.appraisal import BaseAppraiser, LLMAppraiser
from rlver_agents.config import RunConfig
from rlver_agents.episode import AgentFactory, EpisodeConfig, EpisodeContext
from rlver_agents.models.spec import ModelSpec, build_chat_client
from rlver_agents.simulator import SimulatedUser


def _seeded(spec: ModelSpec, seed: int | None) -> ModelSpec:
    """Give an unseeded spec the episode's seed, so a campaign is reproducible."""
    if spec.seed is not None or seed is None:
        return spec
    return spec.model_copy(update={"seed": seed})


def build_appraiser(config: RunConfig, seed: int | None = None) -> BaseAppraiser:
    settings = config.simulator.appraiser
    if settings.kind == "llm":
        spec = settings.model or config.simulator.model
        return LLMAppraiser(
            build_chat_client(_seeded(spec, seed)), max_retries=settings.max_retries
        )
    from rlver_agents.embedding_appraiser import EmbeddingAppraiser

    return EmbeddingAppraiser()


def user_factory(config: RunConfig) -> AgentFactory:
    """Simulated users for :func:`rlver_agents.episode.run_episode` and the collector."""

    def build(context: EpisodeContext) -> ChatAgent:
        return SimulatedUser(
            "user",
            build_chat_client(_seeded(config.simulator.model, context.seed)),
            context.persona,
            rules=context.rules,
            appraiser=build_appraiser(config, context.seed),
        )

    return build


def agent_factory(config: RunConfig) -> AgentFactory:
    """Empathetic agents; they see the persona's language only, never its hidden need."""

    def build(context: EpisodeContext) -> ChatAgent:
        return EmpatheticAgent(
            "agent",
            build_chat_client(_seeded(config.agent.model, context.seed)),
            think=config.agent.think,
            language=context.persona.language,
            system_message=config.agent.system_message,
        )

    return build


def episode_config(config: RunConfig) -> EpisodeConfig:
    """What every episode records about how it was produced."""
    return EpisodeConfig(
        agent=config.agent.model_dump(mode="json"),
        simulator=config.simulator.model.model_dump(mode="json"),
        appraiser=config.simulator.appraiser.model_dump(mode="json"),
    )
