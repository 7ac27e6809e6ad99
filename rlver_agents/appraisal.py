"""Appraisal: how an agent's message lands with the simulated user, as an integer change.

The appraiser is the verifiable part of the reward, so the agent's words never reach a judge
as instructions: they are quoted inside a fenced block that the judge is told to treat as data,
and every change is clipped to the rules' range whatever the judge says.
"""

from __future__ import annotations

import json
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal, Protocol, Self, runtime_checkable

from autogen_agentchat.messages import BaseAgentEvent
from autogen_core import CancellationToken, Component, ComponentBase, ComponentModel
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    LLMMessage,
    SystemMessage,
    UserMessage,
)
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from rlver_agents import prompts
from rlver_agents.emotion import EmotionRules, EmotionState, EmotionStep, clip_change
from rlver_agents.personas import Persona
from rlver_agents.thinking import split_think


class DialogueTurn(BaseModel):
    """One line of the dialogue as the simulated user saw it (visible text only)."""

    model_config = ConfigDict(frozen=True)

    role: Literal["user", "agent"]
    text: str


class Appraisal(BaseModel):
    """The judge's verdict on one agent message."""

    model_config = ConfigDict(frozen=True)

    intent: str = Field("", description="What the agent was trying to say or do.")
    fit: str = Field("", description="How well the message meets the user's hidden need.")
    reaction: str = Field("", description="The user's honest inner reaction, first person.")
    change: int = Field(description="Whole-number mood change caused by the message.")
    # Filled by the parser, never asked of the judge: hidden from the structured-output schema.
    raw_change: SkipJsonSchema[int | None] = Field(
        None, description="The judge's number before clipping, kept for the record."
    )


class AppraisalError(RuntimeError):
    """The judge's output could not be read as an appraisal; ``raw_outputs`` keeps every try."""

    def __init__(self, message: str, raw_outputs: Sequence[str]) -> None:
        super().__init__(message)
        self.raw_outputs: tuple[str, ...] = tuple(raw_outputs)


class AppraisalEvent(BaseAgentEvent):
    """Emitted by the simulated user before each reply: the verdict and the applied step."""

    appraisal: Appraisal
    step: EmotionStep
    type: Literal["AppraisalEvent"] = "AppraisalEvent"

    def to_text(self) -> str:
        step = self.step
        text = (
            f"turn {step.turn}: change {step.raw_change:+d} (applied {step.applied_change:+d}), "
            f"emotion {step.score_before} -> {step.score} [{step.band.value}]"
        )
        return f"{text}; {self.appraisal.reaction}" if self.appraisal.reaction else text


# --- parsing judge output -------------------------------------------------------------------

_CHANGE_LABEL = (
    r"(?:emotion(?:al)?[ _-]?change|mood[ _-]?change|score[ _-]?change|change|delta"
    r"|情绪值变化|情绪变化|分数变化|变化值|变化)"
)
_CHANGE_LINE = re.compile(
    rf"(?<![a-z]){_CHANGE_LABEL}\s*(?:\([^)\n]*\))?\s*(?:[:=]|\bis\b|是|为)\s*(?P<value>[^\n]*)",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"(?P<sign>[+\-−–]|\bminus\s+|\bplus\s+|负|正)?\s*(?P<num>\d+(?:\.\d+)?)")
_ZERO_WORDS = re.compile(
    r"^\W*(?:none|no change|unchanged|zero|nil|无变化|没有变化|不变|无)\b", re.IGNORECASE
)
_BARE_NUMBER = re.compile(r"^\W*(?P<sign>[+\-−])?\s*(?P<num>\d+(?:\.\d+)?)\s*\W*$")
_PLACEHOLDER_ECHO = re.compile(r"<[^<>\n]*>")
_FIELD_LABELS: dict[str, str] = {
    "intent": r"(?:intent(?:ion)?|意图)",
    "fit": r"(?:need[ _-]?fit|fit|契合度|契合)",
    "reaction": r"(?:inner[ _-]?reaction|reaction|内心反应|反应)",
}
_JSON_KEYS: dict[str, tuple[str, ...]] = {
    "intent": ("intent", "intention", "意图"),
    "fit": ("fit", "need_fit", "契合", "契合度"),
    "reaction": ("reaction", "inner_reaction", "反应", "内心反应"),
    "change": ("change", "emotion_change", "mood_change", "delta", "变化", "情绪变化"),
}


def _normalise(text: str) -> str:
    """Fold full-width forms (：, ＋, ５) to ASCII and drop markdown emphasis."""
    folded = unicodedata.normalize("NFKC", text)
    return re.sub(r"[*`#]+", "", folded)


def _number_in(value: str) -> int | None:
    """The change a label's value states: an explicitly signed number first, else the first."""
    if _PLACEHOLDER_ECHO.search(value):
        return None
    if _ZERO_WORDS.search(value):
        return 0
    matches = list(_NUMBER.finditer(value))
    if not matches:
        return None
    chosen = next((m for m in matches if m.group("sign")), matches[0])
    sign = (chosen.group("sign") or "").strip().lower()
    magnitude = round(float(chosen.group("num")))
    return -magnitude if sign in {"-", "−", "–", "minus", "负"} else magnitude


def _change_from_json(text: str) -> tuple[int | None, dict[str, str]]:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None, {}
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None, {}
    if not isinstance(data, dict):
        return None, {}
    lowered = {str(key).lower(): value for key, value in data.items()}

    def pick(field: str) -> Any:
        return next((lowered[k] for k in _JSON_KEYS[field] if k in lowered), None)

    raw = pick("change")
    change: int | None = None
    if isinstance(raw, bool):
        change = None
    elif isinstance(raw, int | float):
        change = round(raw)
    elif isinstance(raw, str):
        change = _number_in(_normalise(raw))
    texts = {f: str(pick(f)) for f in ("intent", "fit", "reaction") if pick(f) is not None}
    return change, texts


def _labelled_field(text: str, label: str) -> str:
    pattern = re.compile(rf"^[^\w\n]*{label}[^\w\n:：]*[:：]\s*(?P<value>.+)$", re.I | re.M)
    found = pattern.findall(text)
    return re.sub(r"[*`]+", "", found[-1]).strip() if found else ""


def parse_appraisal(text: str, rules: EmotionRules | None = None) -> Appraisal:
    """Read a judge's output: JSON, the labelled text format, or a bare number.

    Tolerates full-width colons, markdown, brackets, ``+5``, ``5 points``, ``-3/10``, text
    around the number and Chinese labels. When several change lines appear the last readable
    one wins. With ``rules`` the change is clipped to their range. Raises
    :class:`AppraisalError` when no change can be read.
    """
    visible = split_think(text, require_think=False, fallback="").reply if text else ""
    normalised = _normalise(visible)
    change, texts = _change_from_json(normalised)
    if change is None:
        for match in reversed(list(_CHANGE_LINE.finditer(normalised))):
            change = _number_in(match.group("value"))
            if change is not None:
                break
    if change is None:
        bare = _BARE_NUMBER.match(normalised)
        if bare:
            change = _number_in(bare.group(0))
    if change is None:
        raise AppraisalError(f"no mood change found in judge output {text[:200]!r}", [text])
    for field, label in _FIELD_LABELS.items():
        texts.setdefault(field, _labelled_field(visible, label))
    clipped = clip_change(change, rules) if rules is not None else change
    return Appraisal(change=clipped, raw_change=change, **texts)


# --- fencing untrusted text -----------------------------------------------------------------

FENCE_OPEN = "<<<AGENT_MESSAGE>>>"
FENCE_CLOSE = "<<<END_AGENT_MESSAGE>>>"
TRANSCRIPT_OPEN = "<<<TRANSCRIPT>>>"
TRANSCRIPT_CLOSE = "<<<END_TRANSCRIPT>>>"

_ANGLE_RUN = re.compile(r"([<>])\1{2,}|[＜＞]{3,}")


def neutralise(text: str) -> str:
    """Break any run of three or more angle brackets, so quoted text cannot close a fence."""
    return _ANGLE_RUN.sub(lambda m: m.group(0)[0], text)


_SPEAKERS: dict[str, dict[str, str]] = {
    "en": {"agent": "Supporter", "empty": "(nothing yet)"},
    "zh": {"agent": "倾听者", "empty": "（还没有对话）"},
}


def render_transcript(history: Sequence[DialogueTurn], persona: Persona) -> str:
    """The dialogue as quoted data, each line neutralised."""
    speakers = _SPEAKERS[persona.language]
    user = persona.name or ("User" if persona.language == "en" else "用户")
    lines = [
        f"{user if turn.role == 'user' else speakers['agent']}: {neutralise(turn.text)}"
        for turn in history
    ]
    return "\n".join(lines) if lines else speakers["empty"]


def build_appraisal_messages(
    persona: Persona,
    history: Sequence[DialogueTurn],
    agent_message: str,
    state: EmotionState,
    rules: EmotionRules,
    *,
    output_format: Literal["text", "json"],
) -> list[LLMMessage]:
    """The judge's prompt: instructions in the system message, the dialogue fenced as data."""
    language = persona.language
    variables = prompts.persona_variables(persona)
    limits = {"min_change": rules.min_change, "max_change": rules.max_change}
    system = prompts.render(
        "appraise",
        language,
        **variables,
        **limits,
        difficulty_note=prompts.section("difficulty", str(persona.difficulty), language),
        score=state.score,
        band=state.band.value,
        turn=state.turn + 1,
        max_turns=rules.max_turns,
        fence_open=FENCE_OPEN,
        fence_close=FENCE_CLOSE,
        output_format=prompts.section("appraise_format", output_format, language, **limits),
    )
    data = prompts.render(
        "appraise_input",
        language,
        name=variables["name"],
        transcript_open=TRANSCRIPT_OPEN,
        transcript=render_transcript(history, persona),
        transcript_close=TRANSCRIPT_CLOSE,
        fence_open=FENCE_OPEN,
        agent_message=neutralise(agent_message),
        fence_close=FENCE_CLOSE,
    )
    return [SystemMessage(content=system), UserMessage(content=data, source="judge_input")]


# --- appraisers -----------------------------------------------------------------------------


@runtime_checkable
class Appraiser(Protocol):
    """Anything that can judge one agent message for a persona."""

    async def appraise(
        self,
        *,
        persona: Persona,
        history: Sequence[DialogueTurn],
        agent_message: str,
        state: EmotionState,
        rules: EmotionRules,
        cancellation_token: CancellationToken | None = None,
    ) -> Appraisal: ...


class BaseAppraiser(ABC, ComponentBase[BaseModel]):
    """Base of the serialisable appraisers, so a simulated user's config can hold one.

    ``history`` is the dialogue before ``agent_message``; the returned change is already
    clipped to ``rules``.
    """

    component_type = "appraiser"

    @abstractmethod
    async def appraise(
        self,
        *,
        persona: Persona,
        history: Sequence[DialogueTurn],
        agent_message: str,
        state: EmotionState,
        rules: EmotionRules,
        cancellation_token: CancellationToken | None = None,
    ) -> Appraisal: ...


_RETRY_NOTE: dict[str, str] = {
    "en": "That answer could not be read. Reply again in exactly the requested format.",
    "zh": "无法读取这个回答。请严格按照要求的格式重新作答。",
}


class LLMAppraiserConfig(BaseModel):
    model_client: ComponentModel
    max_retries: int = Field(2, ge=0, le=10)


class LLMAppraiser(BaseAppraiser, Component[LLMAppraiserConfig]):
    """A model judges each message in the user's voice, as in RLVER and SAGE.

    Uses structured output when the client's ``model_info`` supports it; otherwise the labelled
    text format read by :func:`parse_appraisal`. Unreadable output is asked for again up to
    ``max_retries`` times, then :class:`AppraisalError` is raised with every raw output.
    """

    component_config_schema = LLMAppraiserConfig
    component_provider_override = "rlver_agents.appraisal.LLMAppraiser"

    def __init__(self, model_client: ChatCompletionClient, *, max_retries: int = 2) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._client = model_client
        self._max_retries = max_retries

    @property
    def model_client(self) -> ChatCompletionClient:
        return self._client

    def _structured(self) -> bool:
        return bool(self._client.model_info.get("structured_output", False))

    async def appraise(
        self,
        *,
        persona: Persona,
        history: Sequence[DialogueTurn],
        agent_message: str,
        state: EmotionState,
        rules: EmotionRules,
        cancellation_token: CancellationToken | None = None,
    ) -> Appraisal:
        structured = self._structured()
        messages = build_appraisal_messages(
            persona,
            history,
            agent_message,
            state,
            rules,
            output_format="json" if structured else "text",
        )
        raw_outputs: list[str] = []
        for _ in range(self._max_retries + 1):
            result = await self._client.create(
                messages,
                json_output=Appraisal if structured else None,
                cancellation_token=cancellation_token,
            )
            raw = result.content if isinstance(result.content, str) else str(result.content)
            raw_outputs.append(raw)
            try:
                return parse_appraisal(raw, rules)
            except AppraisalError:
                messages = [
                    *messages,
                    AssistantMessage(content=raw, source="judge"),
                    UserMessage(content=_RETRY_NOTE[persona.language], source="judge_input"),
                ]
        raise AppraisalError(
            f"judge output unreadable after {len(raw_outputs)} attempt(s); "
            f"last was {raw_outputs[-1][:200]!r}",
            raw_outputs,
        )

    def _to_config(self) -> LLMAppraiserConfig:
        return LLMAppraiserConfig(
            model_client=self._client.dump_component(), max_retries=self._max_retries
        )

    @classmethod
    def _from_config(cls, config: LLMAppraiserConfig) -> Self:
        return cls(
            ChatCompletionClient.load_component(config.model_client),
            max_retries=config.max_retries,
        )
