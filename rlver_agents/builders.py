"""Turn a :class:`RunConfig` into fresh agents for each dialogue.

Every dialogue gets new agents. Local model clients are new per dialogue too: they are cheap
(the weights are loaded once per process and shared) and per-dialogue clients keep token
records apart. Clients of OpenAI-compatible servers hold no per-dialogue state but do hold a
connection pool, so one client per model spec serves every dialogue of a run; each role gets it
behind a :class:`RetryingChatCompletionClient` that applies the run's per-call timeout and
retries and names the role in its errors.
"""

from __future__ import annotations

from functools import partial

from autogen_agentchat.base import ChatAgent
from autogen_core.models import ChatCompletionClient

from rlver_agents.agents.agent import EmpatheticAgent
from rlver_agents.agents.reply_guard import ReplyGuard
from rlver_agents.agents.simulator import SimulatedUser
from rlver_agents.appraisers.appraisal import BaseAppraiser, LLMAppraiser
from rlver_agents.config import RunConfig, TimeoutSettings
from rlver_agents.episodes.episode import AgentFactory, EpisodeConfig, EpisodeContext, RetryPolicy
from rlver_agents.episodes.groups import Rounds
from rlver_agents.models.retrying import CallPolicy, RetryingChatCompletionClient, Role
from rlver_agents.models.spec import ModelSpec, build_chat_client


class ClientPool:
    """Model clients for a run: shared per spec for servers, fresh per dialogue locally."""

    def __init__(self) -> None:
        self._shared: dict[str, ChatCompletionClient] = {}

    def client(
        self,
        spec: ModelSpec,
        seed: int | None,
        *,
        role: Role = "agent",
        calls: CallPolicy | None = None,
    ) -> ChatCompletionClient:
        """A client for ``spec``; an unseeded local spec takes the episode's ``seed``.

        A server spec's client retries its own failed calls under ``calls`` (the SDK's
        retries are off, so the count is the policy's); errors name ``role`` and the server.
        """
        if spec.kind == "openai":
            calls = calls or CallPolicy()
            key = f"{spec.model_dump_json()} {calls.timeout_s}"
            if key not in self._shared:
                self._shared[key] = build_chat_client(
                    spec, timeout_s=calls.timeout_s, max_retries=0
                )
            server = f"model {spec.model!r} at {spec.base_url}"
            return RetryingChatCompletionClient(
                self._shared[key], role=role, server=server, policy=calls
            )
        if spec.seed is None and seed is not None:
            spec = spec.model_copy(update={"seed": seed})
        return build_chat_client(spec)

    async def close(self) -> None:
        """Close the shared server clients (their connection pools)."""
        for client in self._shared.values():
            await client.close()
        self._shared.clear()


def call_policy(timeouts: TimeoutSettings) -> CallPolicy:
    """The per-call deadline and retries of a run's server clients."""
    return CallPolicy(
        timeout_s=timeouts.call_s,
        retries=timeouts.call_retries,
        backoff_s=timeouts.backoff_s,
        max_backoff_s=timeouts.max_backoff_s,
    )


def retry_policy(timeouts: TimeoutSettings) -> RetryPolicy:
    """The episode runner's per-turn deadline and dialogue restarts."""
    return RetryPolicy(max_attempts=timeouts.dialogue_attempts, turn_timeout_s=timeouts.turn_s)


def build_appraiser(config: RunConfig, pool: ClientPool, seed: int | None = None) -> BaseAppraiser:
    """The run's appraiser: the learned judge unless the config names another kind."""
    settings = config.simulator.appraiser
    if settings.kind == "llm":
        spec = settings.model or config.simulator.model
        client = pool.client(spec, seed, role="judge", calls=call_policy(config.timeouts))
        return LLMAppraiser(client, max_retries=settings.max_retries)
    if settings.kind == "embedding":
        from rlver_agents.appraisers.embedding_appraiser import EmbeddingAppraiser

        return EmbeddingAppraiser()
    from rlver_agents.appraisers.learned_appraiser import LearnedAppraiser

    return LearnedAppraiser()


def user_factory(config: RunConfig, pool: ClientPool) -> AgentFactory:
    """Simulated users for :func:`rlver_agents.episodes.episode.run_episode` and the collector."""

    def build(context: EpisodeContext) -> ChatAgent:
        return SimulatedUser(
            "user",
            pool.client(
                config.simulator.model,
                context.seed,
                role="simulator",
                calls=call_policy(config.timeouts),
            ),
            context.persona,
            rules=context.rules,
            appraiser=build_appraiser(config, pool, context.seed),
            reply_guard=ReplyGuard() if config.simulator.guarded() else None,
            closing=config.simulator.closing,
        )

    return build


def build_agent(
    config: RunConfig, model_client: ChatCompletionClient, context: EpisodeContext
) -> EmpatheticAgent:
    """The empathetic agent of one dialogue, on a given client (a trainer's rollout client
    where the run configuration's model is not the one sampling). It sees the persona's
    language only, never its hidden need."""
    return EmpatheticAgent(
        "agent",
        model_client,
        think=config.agent.think,
        keep_thoughts=config.agent.keep_thoughts,
        language=context.persona.language,
        say_fallback=False,
        system_message=config.agent.system_message,
    )


def agent_factory(config: RunConfig, pool: ClientPool) -> AgentFactory:
    """Empathetic agents on the run configuration's model (:func:`build_agent`)."""

    def build(context: EpisodeContext) -> ChatAgent:
        client = pool.client(config.agent.model, context.seed, calls=call_policy(config.timeouts))
        return build_agent(config, client, context)

    return build


def episode_config(config: RunConfig, *, agent_model: str | None = None) -> EpisodeConfig:
    """What every episode records about how it was produced; ``agent_model`` names the
    agent's model instead when it is not the configuration's (verl's rollout servers)."""
    agent = config.agent.model_dump(mode="json")
    if agent_model is not None:
        agent["model"] = agent_model
    return EpisodeConfig(
        agent=agent,
        simulator={
            **config.simulator.model.model_dump(mode="json"),
            "reply_guard": config.simulator.guarded(),
            "closing": config.simulator.closing,
        },
        appraiser=config.simulator.appraiser.model_dump(mode="json"),
    )


def engine_rounds(config: RunConfig, *, user_voice: bool = True) -> Rounds | None:
    """Rounds over the in-process engines the dialogues of ``config`` decode with: the agent's
    and, with ``user_voice``, the simulated user's voice and LLM judge (loaded now if need be).

    None when ``config.rounds`` is off, or when any of those models is a server: a round
    waits until every dialogue is queued at one of its engines, and a dialogue waiting on a
    server is queued at none, so the local engines would wait on the server's slowest call.
    """
    if not config.rounds:
        return None
    specs = [config.agent.model]
    if user_voice:
        specs.append(config.simulator.model)
        appraiser = config.simulator.appraiser
        if appraiser.kind == "llm" and appraiser.model is not None:
            specs.append(appraiser.model)
    if any(spec.kind == "openai" for spec in specs):
        return None
    from rlver_agents.models.engine import Engine, in_rounds
    from rlver_agents.models.local import LocalChatCompletionClient

    engines: list[Engine] = []
    for spec in specs:
        client = build_chat_client(spec)
        if isinstance(client, LocalChatCompletionClient) and client.engine not in engines:
            engines.append(client.engine)
    return partial(in_rounds, engines)
