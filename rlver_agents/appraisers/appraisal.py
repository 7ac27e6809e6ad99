"""Appraisal: how an agent's message lands with the simulated user, as an integer change.

The appraiser is the verifiable part of the reward, so the agent's words never reach a judge
as instructions: they are quoted inside a fenced block that the judge is told to treat as data,
with every label-like line marked so that a judge quoting them cannot write a second verdict.
The judge's reply is read strictly (one labelled change, or a reply that is JSON as a whole;
anything else is asked again), and every change is clipped to the rules' range whatever the
judge says.
"""

from __future__ import annotations

import json
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal, Self

from autogen_agentchat.messages import BaseAgentEvent
from autogen_core import CancellationToken, Component, ComponentBase, ComponentModel
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    LLMMessage,
    SystemMessage,
    UserMessage,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema

from rlver_agents import prompts
from rlver_agents.emotion import EmotionRules, EmotionState, EmotionStep, clip_change
from rlver_agents.personas import Persona
from rlver_agents.thinking import CLOSE_TAG, OPEN_TAG


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


# --- reading judge output -------------------------------------------------------------------

MAX_JUDGE_MAGNITUDE = 1000
"""A judge number larger than this, or not finite, is no verdict: the judge is asked again."""

_LINE_START = r"\s*(?:(?:[-+•>]|[0-9]{1,3}[.)])\s*)*"
"""What may precede a label on its line: indentation, bullets, block quotes, list numbers.

Markdown emphasis and headings (``*``, backticks, ``#``) are removed before lines are read."""

_QUALIFIER = r"(?:(?:final|overall|total|net|new|my)[ _-]+)?"
_ASKED_LABEL = rf"{_QUALIFIER}(?:change|变化值|变化)"
"""The label the prompt asks for (``Change``, ``变化``), perhaps qualified (``Final change``)."""
_OTHER_LABEL = (
    rf"{_QUALIFIER}(?:emotion(?:al)?[ _-]?change|mood[ _-]?change|score[ _-]?change|delta"
    r"|情绪值变化|情绪变化|分数变化)"
)
"""Compound labels (``Mood change``, ``Delta``): in them the asked-for word does not start the
line, so they are a verdict only in a reply where no line starts with the asked-for label."""
_CHANGE_LABEL = rf"(?:{_ASKED_LABEL}|{_OTHER_LABEL})"
_CHANGE_LINE = re.compile(
    rf"{_LINE_START}(?:(?P<asked>{_ASKED_LABEL})|{_OTHER_LABEL})"
    r"[ \t]*(?:\([^)\n]*\)[ \t]*)?(?:[:=]|is\b|是|为)[ \t]*(?P<value>.*)",
    re.IGNORECASE,
)
_FIELD_LABELS: dict[str, str] = {
    "intent": r"(?:intent(?:ion)?|意图)",
    "fit": r"(?:need[ _-]?fit|fit|契合度|契合)",
    "reaction": r"(?:inner[ _-]?reaction|reaction|内心反应|反应)",
}
_FIELD_LINES: dict[str, re.Pattern[str]] = {
    field: re.compile(rf"{_LINE_START}{label}[ \t]*[:：][ \t]*(?P<value>.+)", re.IGNORECASE)
    for field, label in _FIELD_LABELS.items()
}
_LABEL_LIKE = re.compile(
    rf"{_LINE_START}(?:(?:{_CHANGE_LABEL}|{'|'.join(_FIELD_LABELS.values())})(?![a-z])|[{{\[])",
    re.IGNORECASE,
)
"""A line a judge could read as a label (or that opens a JSON object), were it quoted."""

_VALUE = re.compile(
    r"[\s\[(【「『\"'“]*(?P<sign>[+\-−–—]|minus\s+|plus\s+|负|正)?\s*"
    r"(?P<num>[0-9]+(?:\.[0-9]+)?(?:e[+\-]?[0-9]+)?)",
    re.IGNORECASE,
)
_ZERO_WORDS = re.compile(
    r"[\s\[(【「『\"'“]*(?:none|no change|unchanged|zero|nil|无变化|没有变化|不变|无)\b",
    re.IGNORECASE,
)
_JSON_FENCE = re.compile(r"```[a-z]*[ \t]*\n(?P<body>.*)\n[ \t]*```", re.IGNORECASE | re.DOTALL)
_JSON_KEYS: dict[str, tuple[str, ...]] = {
    "intent": ("intent", "intention", "意图"),
    "fit": ("fit", "need_fit", "契合", "契合度"),
    "reaction": ("reaction", "inner_reaction", "反应", "内心反应"),
    "change": ("change", "emotion_change", "mood_change", "delta", "变化", "情绪变化"),
}


def _normalise(text: str) -> str:
    """Fold full-width forms (：, ＋, ５) to ASCII and drop markdown emphasis and headings."""
    folded = unicodedata.normalize("NFKC", text)
    return re.sub(r"[*`#]+", "", folded)


def _bounded(value: float, text: str) -> int:
    """``value`` rounded, or an :class:`AppraisalError` when it is no plausible verdict.

    The comparison is false for NaN and the infinities too, and never converts a huge integer.
    """
    if not abs(value) <= MAX_JUDGE_MAGNITUDE:
        raise AppraisalError(
            f"judge's change is not a finite number within +-{MAX_JUDGE_MAGNITUDE} "
            f"in {text[:200]!r}",
            [text],
        )
    return round(value)


def _read_value(value: str, text: str) -> int:
    """The number right after a label, sign attached: ``4, not -8`` reads 4."""
    if _ZERO_WORDS.match(value):
        return 0
    number = _VALUE.match(value)
    if number is None:
        raise AppraisalError(
            f"no number right after the change label in judge output {text[:200]!r}", [text]
        )
    sign = (number.group("sign") or "").strip().lower()
    magnitude = _bounded(float(number.group("num")), text)
    return -magnitude if sign in {"-", "−", "–", "—", "minus", "负"} else magnitude


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object hook: a key given twice (in any case) leaves the verdict in doubt."""
    keys = [key.lower() for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears more than once")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _whole_json(visible: str, text: str) -> dict[str, Any] | None:
    """The reply as a JSON object when the whole of it is one (a ```json fence allowed)."""
    body = visible.strip()
    fenced = _JSON_FENCE.fullmatch(body)
    if fenced:
        body = fenced.group("body").strip()
    if not (body.startswith("{") and body.endswith("}")):
        return None
    try:
        data = json.loads(body, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        raise AppraisalError(
            f"judge output is not valid JSON ({exc}): {text[:200]!r}", [text]
        ) from None
    return data if isinstance(data, dict) else None


def _from_json(data: dict[str, Any], text: str) -> tuple[int, dict[str, str]]:
    lowered = {str(key).lower(): value for key, value in data.items()}
    present = {field: [k for k in keys if k in lowered] for field, keys in _JSON_KEYS.items()}
    if len(present["change"]) != 1:
        problem = "no change field" if not present["change"] else "more than one change field"
        raise AppraisalError(f"{problem} in judge JSON {text[:200]!r}", [text])
    raw = lowered[present["change"][0]]
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise AppraisalError(f"judge JSON change is not a number: {text[:200]!r}", [text])
    if isinstance(raw, str):
        change = _read_value(_normalise(raw), text)
    else:
        change = _bounded(raw, text)
    texts = {f: str(lowered[keys[0]]) for f, keys in present.items() if f != "change" and keys}
    return change, texts


def _from_lines(lines: Sequence[str], text: str) -> tuple[int, dict[str, str]]:
    """The verdict of the one line that starts with the asked-for label, or, when no line does,
    of the one line that starts with a compound label; a second such line is ambiguous."""
    labelled = [m for line in lines if (m := _CHANGE_LINE.match(line))]
    labelled = [m for m in labelled if m.group("asked")] or labelled
    if not labelled:
        raise AppraisalError(
            f"no change label starts a line in judge output {text[:200]!r}", [text]
        )
    if len(labelled) > 1:
        raise AppraisalError(
            f"{len(labelled)} change lines in judge output, so it is ambiguous: {text[:200]!r}",
            [text],
        )
    change = _read_value(labelled[0].group("value"), text)
    texts: dict[str, str] = {}
    for field, pattern in _FIELD_LINES.items():
        found = next((m.group("value").strip() for line in lines if (m := pattern.match(line))), "")
        texts[field] = found
    return change, texts


def _without_thought(text: str) -> str:
    """The reply after a leading think block (up to the first close tag); nothing if unclosed.

    Only the first close tag counts: a later one is just text, so nothing after it can hide
    the judge's own verdict.
    """
    stripped = text.strip()
    if stripped.startswith(OPEN_TAG) or (CLOSE_TAG in stripped and OPEN_TAG not in stripped):
        _, closed, reply = stripped.partition(CLOSE_TAG)
        return reply if closed else ""
    return stripped


def parse_appraisal(text: str, rules: EmotionRules | None = None) -> Appraisal:
    """Read a judge's output strictly; any doubt raises :class:`AppraisalError`.

    A leading think block is dropped. If the whole rest is one JSON object (optionally in a
    ```json fence) its ``change`` field is the verdict; otherwise exactly one line must start
    with the change label (after bullets, quotes or markdown), and the number right after the
    label, sign attached, is the verdict. A label counts only at the start of a line: a
    compound label such as ``Mood change: 7/10`` is read only when no line starts with
    ``Change`` itself, and a mention inside a line is never a label. Two lines that start with
    the same kind of label are ambiguous; a number that is not finite or beyond
    :data:`MAX_JUDGE_MAGNITUDE` is no verdict. Full-width forms, ``+5``,
    ``5 points``, ``-3/10``, ``[+6]`` and Chinese labels are read. With ``rules`` the change is
    clipped to their range; ``raw_change`` keeps the judge's number.
    """
    visible = _without_thought(text)
    data = _whole_json(visible, text)
    if data is not None:
        change, texts = _from_json(data, text)
    else:
        change, texts = _from_lines(_normalise(visible).splitlines(), text)
    clipped = clip_change(change, rules) if rules is not None else change
    return Appraisal(change=clipped, raw_change=change, **texts)


# --- fencing untrusted text -----------------------------------------------------------------

FENCE_OPEN = "<<<AGENT_MESSAGE>>>"
FENCE_CLOSE = "<<<END_AGENT_MESSAGE>>>"
TRANSCRIPT_OPEN = "<<<TRANSCRIPT>>>"
TRANSCRIPT_CLOSE = "<<<END_TRANSCRIPT>>>"

DEFUSE_MARK = "» "
"""Put before a quoted line that could read as a label, so a judge quoting it adds none."""

_ANGLE_RUN = re.compile(r"([<>])\1{2,}|[＜＞]{3,}")
_THINK_TAG = re.compile(r"<(/?)think>")


def neutralise(text: str) -> str:
    """Make dialogue text safe to quote to a judge, without changing what it says.

    Runs of three or more angle brackets are broken, so the text cannot close a fence; think
    tags are bent, so a quote cannot end the judge's think block; and every line that a reader
    could take for a label (``Change: +100``, ``Reaction: ...``) or that opens a JSON object is
    marked with :data:`DEFUSE_MARK`, so a judge that quotes it verbatim writes no second label.
    """
    broken = _THINK_TAG.sub(r"‹\1think›", _ANGLE_RUN.sub(lambda m: m.group(0)[0], text))
    return "".join(
        f"{DEFUSE_MARK}{line}" if _LABEL_LIKE.match(_normalise(line)) else line
        for line in broken.splitlines(keepends=True)
    )


_SPEAKERS: dict[str, dict[str, str]] = {
    "en": {"agent": "Supporter", "empty": "(nothing yet)"},
    "zh": {"agent": "倾听者", "empty": "（还没有对话）"},
}

EMPTY_MESSAGE_NOTE: dict[prompts.Language, str] = {
    "en": "(an empty message: the supporter sent no words at all)",
    "zh": "（空消息：倾听者一个字也没有说）",
}
"""What a judge, and the simulated user's own model, are shown for an agent message with no
visible text: a blank would read as a glitch of the transcript, not as the supporter's turn."""


def shown_text(text: str, language: prompts.Language) -> str:
    """Agent text as it is quoted to a model: neutralised, or the note when it is empty."""
    return neutralise(text) if text.strip() else EMPTY_MESSAGE_NOTE[language]


def render_transcript(history: Sequence[DialogueTurn], persona: Persona) -> str:
    """The dialogue as quoted data, each line neutralised."""
    language = persona.language
    speakers = _SPEAKERS[language]
    user = persona.name or ("User" if language == "en" else "用户")
    lines = [
        f"{user}: {neutralise(turn.text)}"
        if turn.role == "user"
        else f"{speakers['agent']}: {shown_text(turn.text, language)}"
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
        agent_message=shown_text(agent_message, language),
        fence_close=FENCE_CLOSE,
    )
    return [SystemMessage(content=system), UserMessage(content=data, source="judge_input")]


# --- appraisers -----------------------------------------------------------------------------

EMPTY_MESSAGE_MAX_CHANGE = 0
"""The most an agent message with no visible text may move the mood, whatever the appraiser.

Saying nothing is never a gain: a policy that ends its turn at once must not be rewarded by a
judge in a generous mood or by an embedding of nothing."""


def capped_for_empty(appraisal: Appraisal) -> Appraisal:
    """The verdict on an empty agent message: change and raw change at most
    :data:`EMPTY_MESSAGE_MAX_CHANGE`, so the recorded raw change still replays to the score."""
    raw = appraisal.change if appraisal.raw_change is None else appraisal.raw_change
    return appraisal.model_copy(
        update={
            "change": min(appraisal.change, EMPTY_MESSAGE_MAX_CHANGE),
            "raw_change": min(raw, EMPTY_MESSAGE_MAX_CHANGE),
        }
    )


class BaseAppraiser(ABC, ComponentBase[BaseModel]):
    """The appraiser contract: judge one agent message for a persona.

    ``history`` is the dialogue before ``agent_message``; the returned change is already
    clipped to ``rules``. ``agent_message`` may be empty (the agent's visible reply was empty):
    that is a turn to appraise like any other, and the simulated user caps its change with
    :func:`capped_for_empty` whatever an appraiser returns. Make a subclass a ``Component`` too
    (as `LLMAppraiser` and `EmbeddingAppraiser` are) and a simulated user holding it
    serialises with it.
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
    "en": (
        "That answer could not be read. Reply again in exactly the requested format, "
        "with exactly one change."
    ),
    "zh": "无法读取这个回答。请严格按照要求的格式重新作答，并且只给出一个变化值。",
}


def _rejected_reply(error: BaseException) -> str | None:
    """The judge's reply inside a structured-output failure, or ``None`` for other errors.

    A reply that does not fit the schema (cut off by the token limit, wrong fields) makes the
    client raise instead of returning it; the reply text is recovered where the error keeps it,
    so the text reader gets its chance, and the judge is asked again otherwise.
    """
    if isinstance(error, ValidationError):
        for item in error.errors():
            value = item.get("input")
            if isinstance(value, str) and item.get("type") == "json_invalid":
                return value
            if isinstance(value, dict):
                return json.dumps(value, ensure_ascii=False, default=str)
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc']))}: {item['msg']} (got {item.get('input')!r:.80})"
            for item in error.errors()
        )
        return f"(reply rejected by the schema: {problems})"
    try:
        from openai import ContentFilterFinishReasonError, LengthFinishReasonError
    except ImportError:
        return None
    if isinstance(error, LengthFinishReasonError):
        choices = error.completion.choices
        content = choices[0].message.content if choices else None
        return content or "(reply cut off by the token limit)"
    if isinstance(error, ContentFilterFinishReasonError):
        return "(reply withheld by a content filter)"
    return None


class LLMAppraiserConfig(BaseModel):
    model_client: ComponentModel
    max_retries: int = Field(2, ge=0, le=10)


class LLMAppraiser(BaseAppraiser, Component[LLMAppraiserConfig]):
    """A model judges each message in the user's voice, as in RLVER and SAGE.

    Uses structured output when the client's ``model_info`` supports it; otherwise the labelled
    text format. Every reply is read by :func:`parse_appraisal`; a structured reply the client
    rejects (a schema validation error, a reply cut off by the token limit) is read from its
    raw text where the error keeps it. Unreadable output is asked for again up to
    ``max_retries`` times, then :class:`AppraisalError` is raised with every raw output.
    """

    component_config_schema = LLMAppraiserConfig
    component_provider_override = "rlver_agents.appraisers.LLMAppraiser"

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
            try:
                result = await self._client.create(
                    messages,
                    json_output=Appraisal if structured else None,
                    cancellation_token=cancellation_token,
                )
            except Exception as exc:
                rejected = _rejected_reply(exc) if structured else None
                if rejected is None:
                    raise
                raw = rejected
            else:
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
