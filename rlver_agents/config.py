"""Run configuration for the CLI: which models play which role, the rules, the personas.

A YAML or TOML file maps onto :class:`RunConfig`. With no file at all, every role runs
offline on the embedded model and the simulated user is scored by the embedding appraiser.
Secrets never live in the file: a model names the environment variable holding its key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlver_agents.emotion import DEFAULT_RULES, EmotionRules, PresetName
from rlver_agents.models.spec import ModelSpec


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and field."""


def _embedded(max_new_tokens: int) -> ModelSpec:
    """The offline default: short, cooler samples and a mild repetition penalty.

    A 135M model loops without the penalty; much above 1.15 it starts to emit broken
    byte-level tokens instead of the punctuation it has already used.
    """
    return ModelSpec(
        kind="embedded", max_new_tokens=max_new_tokens, temperature=0.6, repetition_penalty=1.15
    )


class AppraiserSettings(BaseModel):
    """How the simulated user judges each agent message."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["learned", "embedding", "llm"] = Field(
        default="learned",
        description="learned: the offline cross-encoder judge fitted on the graded corpus "
        "(the default); embedding: the older offline appraiser on sentence-embedding cosines, "
        "kept as a second opinion; llm: a judge model, as in RLVER and SAGE.",
    )
    model: ModelSpec | None = Field(
        default=None, description="Judge model for kind=llm; defaults to the simulator's model."
    )
    max_retries: int = Field(default=2, ge=0)


class SimulatorSettings(BaseModel):
    """The simulated user: the model that writes its replies, and its appraiser."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(default_factory=lambda: _embedded(max_new_tokens=60))
    appraiser: AppraiserSettings = Field(default_factory=AppraiserSettings)
    reply_guard: bool | None = Field(
        default=None,
        description="Trim, rewrite copied replies and fall back on stock lines "
        "(rlver_agents.agents.reply_guard). None: on for the embedded model only.",
    )
    closing: Literal["model", "stock"] = Field(
        default="model",
        description="'stock': the line after the last appraisal comes from the stock lines, "
        "saving a model call per dialogue where nobody reads it (training, scoring runs).",
    )

    def guarded(self) -> bool:
        """Whether the simulated user runs with a reply guard."""
        return self.model.kind == "embedded" if self.reply_guard is None else self.reply_guard


class AgentSettings(BaseModel):
    """The empathetic agent under test."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(default_factory=lambda: _embedded(max_new_tokens=80))
    think: bool = False
    keep_thoughts: bool = Field(
        default=False,
        description=(
            "Think mode: keep the model's whole output in the agent's context, as the "
            "dialogue training unit does (a policy trained that way sees its thoughts)."
        ),
    )
    system_message: str | None = Field(
        default=None, description="Overrides the packaged system prompt for the language."
    )

    @model_validator(mode="after")
    def _thoughts_need_think(self) -> AgentSettings:
        if self.keep_thoughts and not self.think:
            raise ValueError("keep_thoughts needs think: true")
        return self


class TimeoutSettings(BaseModel):
    """How long model calls and turns may take, and how often failures are tried again.

    A failed call (timeout, lost connection, HTTP 5xx, malformed body) is sent again on its own
    up to ``call_retries`` times with exponential backoff; a call that keeps failing makes the
    episode start its dialogue over, up to ``dialogue_attempts`` dialogues in all. ``turn_s``
    bounds one side's whole turn (the simulated user's turn holds the judge's calls and the
    reply's); ``null`` leaves turns unbounded. The defaults suit a vLLM server under load.

    For a local model (``kind: local`` or ``embedded``) the time a request waits in the
    in-process engine's queue, behind the other dialogues of the run or a trainer's weight
    update, does not count toward ``turn_s``: the clock runs only while the request is being
    computed, so the deadline catches a hang, not a busy machine. A server's queue cannot be
    seen from here, so calls to a server keep their whole deadline and their retries.
    """

    model_config = ConfigDict(extra="forbid")

    call_s: float = Field(default=120.0, gt=0, description="Per model call (HTTP timeout too).")
    call_retries: int = Field(default=3, ge=0, description="Retries of one failed call.")
    backoff_s: float = Field(default=1.0, ge=0, description="First retry's delay; doubles.")
    max_backoff_s: float = Field(default=20.0, ge=0)
    turn_s: float | None = Field(default=600.0, gt=0, description="Per turn of either side.")
    dialogue_attempts: int = Field(default=3, ge=1, description="Dialogues started per episode.")

    @model_validator(mode="after")
    def _turn_fits_a_call(self) -> TimeoutSettings:
        if self.turn_s is not None and self.turn_s < self.call_s:
            raise ValueError(
                f"turn_s ({self.turn_s:g}) is shorter than call_s ({self.call_s:g}): "
                "no call could use its full time"
            )
        return self


class RunConfig(BaseModel):
    """Everything a simulation, collection or evaluation run needs."""

    model_config = ConfigDict(extra="forbid")

    agent: AgentSettings = Field(default_factory=AgentSettings)
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    rules: PresetName | EmotionRules = DEFAULT_RULES.name
    personas: str = Field(
        default="test", description="A bundled split (train, test, zh) or a persona file path."
    )
    episodes_per_persona: int = Field(default=1, ge=1)
    concurrency: int = Field(default=4, ge=1)
    rounds: bool = Field(
        default=True,
        description="In-process models (the agent's, a local user voice) batch in rounds: "
        "each turn of the dialogues in flight decodes as one batch, not in the small batches "
        "that dialogues drifting apart make. No effect on server models.",
    )
    seed: int = 0
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)

    def emotion_rules(self) -> EmotionRules:
        return (
            self.rules if isinstance(self.rules, EmotionRules) else EmotionRules.preset(self.rules)
        )


def _format_error(path: Path, error: ValidationError) -> str:
    """One line per problem, each naming the file and the field."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"{path}: field {where}: {item['msg']}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: Path) -> RunConfig:
    """Validate a parsed document; errors name ``source`` and each offending field."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None


def load_config(path: str | Path | None) -> RunConfig:
    """Read a ``.yaml``/``.yml`` or ``.toml`` file; ``None`` gives the offline defaults."""
    if path is None:
        return RunConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such configuration file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}, line {line}: not UTF-8 text (byte {raw[exc.start]:#04x}); "
            "save the file as UTF-8"
        ) from None
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in {".yaml", ".yml"}:
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{path}: unsupported extension; use .yaml, .yml or .toml")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else f"{path}"
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"{where}: cannot parse: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return parse_config(data, path)
