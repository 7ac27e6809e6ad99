"""`SimulatedUser`: an AutoGen chat agent that plays a persona whose emotion is verifiable.

Each agent message is appraised (an integer change), the change is applied by the pure rules
in :mod:`rlver_agents.emotion`, and only then does the model write the user's reply, in
character and in the mood the new score implies. The score never depends on the reply text,
so it can be replayed and checked from the recorded appraisals alone. The reply is the model's
own unless a :class:`~rlver_agents.agents.reply_guard.ReplyGuard` is given, and every reply records
where its text came from.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Literal, Self

from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import ChatAgent, Response, TerminatedException, TerminationCondition
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.messages import (
    BaseAgentEvent,
    BaseChatMessage,
    StopMessage,
    TextMessage,
)
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core import CancellationToken, Component, ComponentModel
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    LLMMessage,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from pydantic import BaseModel, ConfigDict

from rlver_agents import prompts
from rlver_agents.agents.reply_guard import (
    REPLY_ORIGIN_KEY,
    UNGUARDED_RETRIES,
    ReplyGuard,
    ReplyOrigin,
    stock_reply,
)
from rlver_agents.appraisers.appraisal import (
    EMPTY_MESSAGE_NOTE,
    Appraisal,
    AppraisalEvent,
    BaseAppraiser,
    DialogueTurn,
    capped_for_empty,
)
from rlver_agents.emotion import (
    DEFAULT_RULES,
    EmotionMetadata,
    EmotionRules,
    EmotionState,
    TerminationReason,
    apply_change,
    initial_state,
)
from rlver_agents.personas import Persona
from rlver_agents.thinking import split_think, visible_text

DEFAULT_DESCRIPTION = "A person who wants to talk about something that is troubling them."

_OPENING_CUE: dict[str, str] = {"en": "Start the conversation.", "zh": "开始对话。"}


class EmptyReplyError(RuntimeError):
    """An unguarded simulated user's model wrote nothing usable, even when asked again."""


_ROLE_PREFIX = re.compile(r"^\s*(?:user|me|i|用户|我)\s*[:：]\s*", re.IGNORECASE)
_QUOTES = "\"'“”‘’「」"


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        return text[1:-1].strip()
    return text


Closing = Literal["model", "stock"]
"""Who writes the line after the last appraisal: the user's model, or the stock lines."""


class SimulatedUserConfig(BaseModel):
    """Declarative configuration; the model client and appraiser serialise as components."""

    name: str
    description: str = DEFAULT_DESCRIPTION
    model_client: ComponentModel
    persona: Persona
    rules: EmotionRules = DEFAULT_RULES
    appraiser: ComponentModel
    reply_guard: ReplyGuard | None = None
    closing: Closing = "model"


class SimulatedUserState(BaseModel):
    """What `save_state` returns: the emotion state and the dialogue as the user saw it."""

    model_config = ConfigDict(frozen=True)

    type: Literal["SimulatedUserState"] = "SimulatedUserState"
    version: int = 1
    emotion: EmotionState
    history: tuple[DialogueTurn, ...] = ()


class SimulatedUser(BaseChatAgent, Component[SimulatedUserConfig]):
    """A persona that talks, is appraised after every agent message, and says goodbye at S or F.

    Every reply is a `TextMessage` whose metadata is
    ``EmotionMetadata.from_state(state).to_metadata()`` plus ``reply_origin``; before each reply
    (except the opening) an `AppraisalEvent` is yielded. The user sees the agent's visible text
    only: think blocks are stripped. An agent message with no visible text (empty, whitespace,
    only a thought) is a turn like any other: it is appraised, its change is capped at
    :data:`~rlver_agents.appraisers.appraisal.EMPTY_MESSAGE_MAX_CHANGE`, and the user answers
    it. Only a
    call with no agent message at all, after the opening, is an error. Use one instance per
    dialogue, or ``on_reset`` between dialogues.

    Without ``reply_guard`` every reply is the model's own line, whatever its length (a think
    block, wrapping quotes and a speaker prefix are removed and whitespace is collapsed); an
    empty reply is asked for again once, then fails the dialogue with :class:`EmptyReplyError`.
    With a guard, replies are trimmed, copies rewritten and stock lines used as it says.

    ``closing="stock"`` takes the line after the last appraisal (the goodbye, or the reply at
    the turn limit) from the stock lines of its band instead of the model: the score is
    settled by then and nobody answers it, so a trainer saves one model call per dialogue, the
    whole of the user's model time in a one-turn dialogue. Its origin is ``closing``.
    """

    component_config_schema = SimulatedUserConfig
    component_provider_override = "rlver_agents.agents.SimulatedUser"

    def __init__(
        self,
        name: str,
        model_client: ChatCompletionClient,
        persona: Persona,
        *,
        appraiser: BaseAppraiser,
        rules: EmotionRules = DEFAULT_RULES,
        reply_guard: ReplyGuard | None = None,
        closing: Closing = "model",
        description: str = DEFAULT_DESCRIPTION,
    ) -> None:
        super().__init__(name=name, description=description)
        self._model_client = model_client
        self._persona = persona
        self._rules = rules
        self._appraiser = appraiser
        self._guard = reply_guard
        self._closing = closing
        self._state = initial_state(rules)
        self._history: list[DialogueTurn] = []

    # --- read-only views ---------------------------------------------------------------------

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    @property
    def state(self) -> EmotionState:
        """The full emotion state after the last reply."""
        return self._state

    @property
    def emotion(self) -> EmotionState:
        """Alias of :attr:`state`."""
        return self._state

    @property
    def persona(self) -> Persona:
        return self._persona

    @property
    def rules(self) -> EmotionRules:
        return self._rules

    @property
    def appraiser(self) -> BaseAppraiser:
        return self._appraiser

    @property
    def model_client(self) -> ChatCompletionClient:
        """The client that writes the user's replies (the appraiser may have its own)."""
        return self._model_client

    @property
    def reply_guard(self) -> ReplyGuard | None:
        return self._guard

    @property
    def history(self) -> tuple[DialogueTurn, ...]:
        return tuple(self._history)

    # --- the dialogue ------------------------------------------------------------------------

    async def on_messages(
        self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
    ) -> Response:
        response: Response | None = None
        async for item in self.on_messages_stream(messages, cancellation_token):
            if isinstance(item, Response):
                response = item
        if response is None:
            raise RuntimeError(f"{self.name}: no response was produced")
        return response

    async def on_messages_stream(
        self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
    ) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | Response, None]:
        if self._state.terminal:
            reason = self._state.reason.value if self._state.reason else "ended"
            raise RuntimeError(
                f"{self.name}: the dialogue is over ({reason}); call on_reset to start another"
            )
        heard = [visible_text(m.to_text()) for m in messages if m.source != self.name]
        agent_text = "\n\n".join(text for text in heard if text)
        if not self._history and not agent_text:
            yield await self._open(cancellation_token)
            return
        if not heard:
            raise ValueError(f"{self.name}: expected a new message from the agent, got none")
        appraisal = await self._appraiser.appraise(
            persona=self._persona,
            history=tuple(self._history),
            agent_message=agent_text,
            state=self._state,
            rules=self._rules,
            cancellation_token=cancellation_token,
        )
        if not agent_text:
            appraisal = capped_for_empty(appraisal)
        # The rules clip again, so the step records the judge's own number as raw_change.
        raw = appraisal.change if appraisal.raw_change is None else appraisal.raw_change
        state = apply_change(self._state, raw, self._rules)
        history = [*self._history, DialogueTurn(role="agent", text=agent_text)]
        yield AppraisalEvent(source=self.name, appraisal=appraisal, step=state.steps[-1])
        text, origin, usage = await self._reply(history, state, appraisal, cancellation_token)
        self._state = state
        self._history = [*history, DialogueTurn(role="user", text=text)]
        yield self._response(text, origin, usage)

    def _response(self, text: str, origin: ReplyOrigin, usage: RequestUsage) -> Response:
        metadata = EmotionMetadata.from_state(self._state).to_metadata()
        metadata[REPLY_ORIGIN_KEY] = origin
        message = TextMessage(content=text, source=self.name, metadata=metadata, models_usage=usage)
        return Response(chat_message=message)

    async def _open(self, cancellation_token: CancellationToken) -> Response:
        usage = RequestUsage(prompt_tokens=0, completion_tokens=0)
        text = (self._persona.first_talk or "").strip()
        origin: ReplyOrigin = "persona"
        if not text:
            language = self._persona.language
            system = prompts.render("opening", language, **prompts.persona_variables(self._persona))

            def compose(note: str) -> list[LLMMessage]:
                return [
                    SystemMessage(content=f"{system}\n\n{note}" if note else system),
                    UserMessage(content=_OPENING_CUE[language], source="director"),
                ]

            text, origin = await self._write(compose, [], "opening", usage, cancellation_token)
        self._history = [DialogueTurn(role="user", text=text)]
        return self._response(text, origin, usage)

    def _reply_system(self, state: EmotionState, appraisal: Appraisal, retry_note: str) -> str:
        language = self._persona.language
        band_instruction = prompts.section("bands", state.band.value, language)
        if state.reason is TerminationReason.MAX_TURNS:
            last_turn = prompts.section("bands", "last_turn", language)
            band_instruction = f"{band_instruction} {last_turn}"
        system = prompts.render(
            "reply",
            language,
            **prompts.persona_variables(self._persona),
            score=state.score,
            band_instruction=band_instruction,
            reaction=appraisal.reaction or appraisal.fit or "-",
        )
        return f"{system}\n\n{retry_note}" if retry_note else system

    async def _reply(
        self,
        history: Sequence[DialogueTurn],
        state: EmotionState,
        appraisal: Appraisal,
        cancellation_token: CancellationToken,
    ) -> tuple[str, ReplyOrigin, RequestUsage]:
        """The user's next line, in the mood ``state`` implies, and where its text came from."""
        usage = RequestUsage(prompt_tokens=0, completion_tokens=0)
        silence = EMPTY_MESSAGE_NOTE[self._persona.language]
        dialogue: list[LLMMessage] = [
            AssistantMessage(content=turn.text, source=self.name)
            if turn.role == "user"
            else UserMessage(content=turn.text or silence, source="agent")
            for turn in history
        ]

        def compose(note: str) -> list[LLMMessage]:
            return [SystemMessage(content=self._reply_system(state, appraisal, note)), *dialogue]

        earlier = [turn.text for turn in history]
        if state.terminal and self._closing == "stock":
            return stock_reply(state.band.value, self._persona.language, earlier), "closing", usage
        text, origin = await self._write(
            compose, earlier, state.band.value, usage, cancellation_token
        )
        return text, origin, usage

    async def _write(
        self,
        compose: Callable[[str], list[LLMMessage]],
        earlier: Sequence[str],
        stock_key: str,
        usage: RequestUsage,
        cancellation_token: CancellationToken,
    ) -> tuple[str, ReplyOrigin]:
        """Draft a line from ``compose(retry_note)``, applying the guard if there is one.

        Unguarded: the first non-empty draft, as written. Guarded: the first draft that, once
        trimmed, copies no earlier line; a copy is drafted again with a note naming the copied
        line; when the retries run out, the stock line for ``stock_key``.
        """
        guard = self._guard
        drafts = 1 + (guard.retries if guard else UNGUARDED_RETRIES)
        note = ""
        for attempt in range(drafts):
            written = await self._generate(compose(note), usage, cancellation_token)
            fresh: ReplyOrigin = "model" if attempt == 0 else "model_retry"
            if not written:
                continue
            if guard is None:
                return written, fresh
            text = guard.trim(written)
            repeated = guard.copied(text, earlier)
            if repeated is None:
                return text, "trimmed" if text != written else fresh
            note = prompts.render("reply_retry", self._persona.language, previous=repeated)
        if guard is None:
            raise EmptyReplyError(
                f"{self.name}: the simulated user's model wrote an empty reply {drafts} times "
                "(no reply guard, so no stock line stands in)"
            )
        return stock_reply(stock_key, self._persona.language, earlier), "stock"

    async def _generate(
        self,
        messages: Sequence[LLMMessage],
        usage: RequestUsage,
        cancellation_token: CancellationToken,
    ) -> str:
        """One model call; returns the cleaned line and adds the call's usage to ``usage``."""
        result = await self._model_client.create(messages, cancellation_token=cancellation_token)
        usage.prompt_tokens += result.usage.prompt_tokens
        usage.completion_tokens += result.usage.completion_tokens
        raw = result.content if isinstance(result.content, str) else ""
        text = " ".join(split_think(raw, require_think=False, fallback="").reply.split())
        text = _unquote(text)
        text = _ROLE_PREFIX.sub("", text)
        name = self._persona.name
        if name and text.startswith(f"{name}:"):
            text = text[len(name) + 1 :].strip()
        return _unquote(text)

    # --- state and lifecycle -----------------------------------------------------------------

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        self._state = initial_state(self._rules)
        self._history = []

    async def save_state(self) -> Mapping[str, Any]:
        return SimulatedUserState(emotion=self._state, history=tuple(self._history)).model_dump(
            mode="json"
        )

    async def load_state(self, state: Mapping[str, Any]) -> None:
        loaded = SimulatedUserState.model_validate(state)
        self._state = loaded.emotion
        self._history = list(loaded.history)

    def _to_config(self) -> SimulatedUserConfig:
        if not isinstance(self._appraiser, Component):
            raise TypeError(
                f"{self.name}: appraiser {type(self._appraiser).__name__} is not a Component, "
                "so this SimulatedUser cannot be serialised; give it a config as LLMAppraiser does"
            )
        return SimulatedUserConfig(
            name=self.name,
            description=self.description,
            model_client=self._model_client.dump_component(),
            persona=self._persona,
            rules=self._rules,
            appraiser=self._appraiser.dump_component(),
            reply_guard=self._guard,
            closing=self._closing,
        )

    @classmethod
    def _from_config(cls, config: SimulatedUserConfig) -> Self:
        return cls(
            config.name,
            ChatCompletionClient.load_component(config.model_client),
            config.persona,
            appraiser=BaseAppraiser.load_component(config.appraiser),
            rules=config.rules,
            reply_guard=config.reply_guard,
            closing=config.closing,
            description=config.description,
        )


# --- teams -------------------------------------------------------------------------------------


class EmotionTerminationConfig(BaseModel):
    pass


class EmotionTermination(TerminationCondition, Component[EmotionTerminationConfig]):
    """Stops a team when a message's emotion metadata says the dialogue is terminal.

    The stop reason names the termination reason and the score, e.g. ``"success: emotion 100"``.
    """

    component_config_schema = EmotionTerminationConfig
    component_provider_override = "rlver_agents.agents.EmotionTermination"

    def __init__(self) -> None:
        self._terminated = False

    @property
    def terminated(self) -> bool:
        return self._terminated

    async def __call__(
        self, messages: Sequence[BaseAgentEvent | BaseChatMessage]
    ) -> StopMessage | None:
        if self._terminated:
            raise TerminatedException("Termination condition has already been reached")
        for message in messages:
            if not isinstance(message, BaseChatMessage):
                continue
            emotion = EmotionMetadata.from_metadata(message.metadata)
            if emotion is not None and emotion.terminal:
                self._terminated = True
                reason = emotion.reason.value if emotion.reason else "terminal"
                return StopMessage(
                    content=f"{reason}: emotion {emotion.score}", source="EmotionTermination"
                )
        return None

    async def reset(self) -> None:
        self._terminated = False

    def _to_config(self) -> EmotionTerminationConfig:
        return EmotionTerminationConfig()

    @classmethod
    def _from_config(cls, config: EmotionTerminationConfig) -> Self:
        return cls()


def dialogue_team(
    user: SimulatedUser, agent: ChatAgent, *, max_messages: int | None = None
) -> RoundRobinGroupChat:
    """A two-member team, user first, that relays `AppraisalEvent` and stops on the goodbye.

    Run it with no task (``await team.run()``): the user opens. ``max_messages`` adds a hard
    bound on chat messages as a safety net. Build a fresh team (and agents) per dialogue.
    """
    termination: TerminationCondition = EmotionTermination()
    if max_messages is not None:
        termination = termination | MaxMessageTermination(max_messages)
    return RoundRobinGroupChat(
        [user, agent],
        termination_condition=termination,
        custom_message_types=[AppraisalEvent],
    )
