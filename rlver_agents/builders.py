"""Turn a :class:`RunConfig` into fresh agents for each dialogue.

Every dialogue gets new agents. Local model clients are new per dialogue too: they are cheap
(the weights are loaded once per process and shared) and per-dialogue clients keep token
records apart. Clients of OpenAI-compatible servers hold no per-dialogue state but do hold a
connection pool, so one client per model spec serves every dialogue of a run.
"""

from __future__ import annotations

from autogen_agentchat.base import ChatAgent
from autogen_core.models import ChatCompletionClient

from rlver_agents.agent import EmpatheticAgent
from rlver_agents.appraisal import BaseAppraiser, LLMAppraiser
from rlver_agents.config import RunConfig
from rlver_agents.episode import AgentFactory, EpisodeConfig, EpisodeContext
from rlver_agents.models.spec import ModelSpec, build_chat_client
from rlver_agents.simulator import SimulatedUser


class ClientPool:
    """Model clients for a run: shared per spec for servers, fresh per dialogue locally."""

    def __init__(self) -> None:
        self._shared: dict[str, ChatCompletionClient] = {}

    def client(self, spec: ModelSpec, seed: int | None) -> ChatCompletionClient:
        """A client for ``spec``; an unseeded local spec takes the episode's ``seed``."""
        if spec.kind == "openai":
            key = spec.model_dump_json()
            if key not in self._shared:
                self._shared[key] = build_chat_client(spec)
            return self._shared[key]
        if spec.seed is None and seed is not None:
            spec = spec.model_copy(update={"seed": seed})
        return build_chat_client(spec)

    async def close(self) -> None:
        """Close the shared server clients (their connection pools)."""
        for client in self._shared.values():
            await client.close()
        self._shared.clear()


def build_appraiser(config: RunConfig, pool: ClientPool, seed: int | None = None) -> BaseAppraiser:
    settings = config.simulator.appraiser
    if settings.kind == "llm":
        spec = settings.model or config.simulator.model
        return LLMAppraiser(pool.client(spec, seed), max_retries=settings.max_retries)
    from rlver_agents.embedding_appraiser import EmbeddingAppraiser

    return EmbeddingAppraiser()


def user_factory(config: RunConfig, pool: ClientPool) -> AgentFactory:
    """Simulated users for :func:`rlver_agents.episode.run_episode` and the collector."""

    def build(context: EpisodeContext) -> ChatAgent:
        return SimulatedUser(
            "user",
            pool.client(config.simulator.model, context.seed),
            context.persona,
            rules=context.rules,
            appraiser=build_appraiser(config, pool, context.seed),
        )

    return build


def agent_factory(config: RunConfig, pool: ClientPool) -> AgentFactory:
    """Empathetic agents; they see the persona's language only, never its hidden need."""

    def build(context: EpisodeContext) -> ChatAgent:
        return EmpatheticAgent(
            "agent",
            pool.client(config.agent.model, context.seed),
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
